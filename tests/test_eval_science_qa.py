"""Tests for the ScienceQA scorer (scorers.md §6)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.eval import eval_science_qa as sqa
from llava.eval.utils import InputError

OPTIONS = ["A", "B", "C", "D", "E"]
SUFFIX = "\nAnswer with the option's letter from the given choices directly."


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("E", "E"), ("F", "FAILED"), ("b", "FAILED"),
    ("C. Rhode Island", "C"), ("C.", "FAILED"), ("C.Rhode", "FAILED"),
    ("The answer is D.", "D"), ("I think The answer is A!", "A"),
    ("The answer is A. The answer is B.", "FAILED"),  # two matches
    ("The answer is F.", "F"), ("", "FAILED"), ("FAILED", "FAILED"),
])
def test_parse_answer(text: str, expected: str) -> None:
    assert sqa.parse_answer(text, OPTIONS) == expected


def test_answer_position() -> None:
    assert sqa.answer_position("B", 2, OPTIONS) == 1
    assert sqa.answer_position("C", 2, OPTIONS) == -1  # beyond the choices
    assert sqa.answer_position("F", 5, OPTIONS) == -1
    assert sqa.answer_position("FAILED", 4, OPTIONS) == -1


@pytest.mark.parametrize("human, n", [
    ("<image>\nContext: A. x\nWhat?\nA. one\nB. two\nC. three", 3),
    ("Which closing is correct?\nA. see you soon,\nRose\nB. See you soon,\nRose", 2),
    ("No choices here", 0),
])
def test_count_choices(human: str, n: int) -> None:
    assert sqa.count_choices(human, OPTIONS) == n


def _answers(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_problems_json_and_missing_prediction(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = tmp_path / "sqa"
    base.mkdir()
    problems = {"1": {"answer": 0, "choices": ["a", "b"], "image": "image.png"},
                "2": {"answer": 2, "choices": ["a", "b", "c"], "image": None},
                "3": {"answer": 1, "choices": ["a", "b"], "image": "image.png"},
                "9": {"answer": 0, "choices": ["a", "b"], "image": None}}
    (base / "problems.json").write_text(json.dumps(problems))
    (base / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3"], "val": ["9"]}))
    # Shuffled order, int ids, one answer outside the split; problem 3 (an image one) unanswered.
    rfile = _answers(tmp_path / "answers.jsonl", [
        {"question_id": 2, "prompt": "Q2" + SUFFIX, "text": "The answer is C."},
        {"question_id": "9", "prompt": "Q9", "text": "A"},
        {"question_id": "1", "prompt": "<image>\nQ1" + SUFFIX, "text": "A. a"},
    ])
    out_file, res_file, score_file = tmp_path / "out.json", tmp_path / "res.json", tmp_path / "score.json"
    sqa.main(["--base-dir", str(base), "--result-file", str(rfile), "--output-file", str(out_file),
              "--output-result", str(res_file), "--score-file", str(score_file)])
    captured = capsys.readouterr()
    assert "Total: 3, Correct: 2, Accuracy: 66.67%, IMG-Accuracy: 100.00%" in captured.out
    assert "1 answer(s) are not in split 'test'" in captured.err
    result = json.loads(res_file.read_text())
    assert result["results"] == {"1": 0, "2": 2, "3": -1}
    assert result["outputs"] == {"1": "A. a", "2": "The answer is C.", "3": "FAILED"}
    assert (result["correct"], result["count"]) == (2, 3)
    missing = json.loads(out_file.read_text())["incorrect"][0]
    assert missing == {"question_id": "3", "parsed_ans": "FAILED", "ground_truth": "B", "question": "Unknown",
                       "pred": "FAILED", "is_multimodal": False}
    score = json.loads(score_file.read_text())
    assert score["benchmark"] == "sqa_img" and score["score"] == 100.0
    assert score["details"]["img_total"] == 1  # the missing image question counts as non-image


def test_no_ground_truth(tmp_path: Path) -> None:
    rfile = _answers(tmp_path / "answers.jsonl", [{"question_id": "1", "prompt": "Q", "text": "A"}])
    with pytest.raises(InputError, match="no problems.json there and no --question-file"):
        sqa.main(["--base-dir", str(tmp_path), "--result-file", str(rfile)])


def test_bad_question_file(tmp_path: Path) -> None:
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps([{"id": "1", "conversations": [
        {"from": "human", "value": "Q?\nA. x\nB. y"}, {"from": "gpt", "value": "C"}]}]))
    with pytest.raises(InputError, match=r"q.json: item 0: answer 'C' is not one of its 2 choices"):
        sqa.problems_from_question_file(str(qfile), OPTIONS)


def test_duplicate_answer(tmp_path: Path) -> None:
    rfile = _answers(tmp_path / "a.jsonl", [{"question_id": "1", "prompt": "Q", "text": "A"},
                                            {"question_id": 1, "prompt": "Q", "text": "B"}])
    with pytest.raises(InputError, match=r"a.jsonl:2: duplicate answer for question_id '1'"):
        sqa.load_predictions(str(rfile))


def test_llava_13b_reference(shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = shared_dir / "llava-eval/scienceqa"
    stored = json.loads((data / "answers/llava-v1.5-13b_result.json").read_text())
    # Rebuild the answer file from the stored outputs, with prompts as model_vqa_science writes them.
    rows = []
    for item in json.loads((data / "llava_test_CQM-A.json").read_text()):
        prompt = item["conversations"][0]["value"].replace("<image>", "").strip() + SUFFIX
        if "image" in item:
            prompt = "<image>\n" + prompt
        rows.append({"question_id": item["id"], "prompt": prompt, "text": stored["outputs"][item["id"]]})
    rfile = _answers(tmp_path / "answers.jsonl", rows[::-1])
    out_file, res_file, score_file = tmp_path / "out.json", tmp_path / "res.json", tmp_path / "score.json"
    sqa.main(["--base-dir", str(data), "--question-file", str(data / "llava_test_CQM-A.json"),
              "--result-file", str(rfile), "--output-file", str(out_file), "--output-result", str(res_file),
              "--score-file", str(score_file)])
    assert ("Total: 4241, Correct: 3155, Accuracy: 74.39%, IMG-Accuracy: 71.64%"
            in capsys.readouterr().out)
    result = json.loads(res_file.read_text())
    assert result["results"] == stored["results"]
    assert result == stored
    assert json.loads(out_file.read_text()) == json.loads((data / "answers/llava-v1.5-13b_output.jsonl").read_text())
    score = json.loads(score_file.read_text())
    assert (score["details"]["img_correct"], score["details"]["img_total"]) == (1445, 2017)
    assert round(score["score"], 2) == 71.64
