"""Tests for the ScienceQA scorer (scorers.md §6)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.eval import eval_science_qa as sqa
from llava.eval.utils import InputError
from conftest import cli_error

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
    # Shuffled order, int ids; problem 3 (an image one) unanswered, scored as upstream with --allow-partial.
    rows = [{"question_id": 2, "prompt": "Q2" + SUFFIX, "text": "The answer is C."},
            {"question_id": "1", "prompt": "<image>\nQ1" + SUFFIX, "text": "A. a"}]
    rfile = _answers(tmp_path / "answers.jsonl", rows)
    out_file, res_file, score_file = tmp_path / "out.json", tmp_path / "res.json", tmp_path / "score.json"
    args = ["--base-dir", str(base), "--result-file", str(rfile), "--output-file", str(out_file),
            "--output-result", str(res_file), "--score-file", str(score_file)]
    with pytest.raises(InputError, match=r"answers\.jsonl: 1 of 3 problems have no answer, e\.g\. '3'"):
        sqa.main(args)
    # An answer to a problem outside the split (here val's 9) is always an error.
    _answers(rfile, rows + [{"question_id": "9", "prompt": "Q9", "text": "A"}])
    with pytest.raises(InputError, match=r"answers\.jsonl: 1 answer\(s\) to problems not in split 'test', e\.g\. '9'"):
        sqa.main(args + ["--allow-partial"])
    _answers(rfile, rows)
    sqa.main(args + ["--allow-partial"])
    captured = capsys.readouterr()
    assert "Total: 3, Correct: 2, Accuracy: 66.67%, IMG-Accuracy: 100.00%" in captured.out
    assert "PARTIAL score: 1 of 3 problems" in captured.err
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
    assert score["partial"] == {"answered": 2, "expected": 3, "missing": 1} and score["answers_file"] == str(rfile)


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
    with pytest.raises(InputError, match=r"a.jsonl:2: duplicate answer for question_id '1' \(first at line 1\)"):
        sqa.load_predictions(str(rfile))
    _answers(rfile, [{"question_id": ["1"], "prompt": "Q", "text": "A"}])
    with pytest.raises(InputError, match=r"a.jsonl:1: question_id must be a string or an integer"):
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
    # Byte for byte: \u escapes (e.g. the em dash of problem 4), indent 2, key order, no trailing newline.
    assert res_file.read_bytes() == (data / "answers/llava-v1.5-13b_result.json").read_bytes()
    assert out_file.read_bytes() == (data / "answers/llava-v1.5-13b_output.jsonl").read_bytes()
    score = json.loads(score_file.read_text())
    assert (score["details"]["img_correct"], score["details"]["img_total"]) == (1445, 2017)
    assert round(score["score"], 2) == 71.64


def _three_problems(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Three text-only problems (answer A of 2); an image one would not change the rounding."""
    base = tmp_path / "sqa"
    base.mkdir()
    (base / "problems.json").write_text(json.dumps({str(i): {"answer": 0, "choices": ["x", "y"]} for i in (1, 2, 3)}))
    (base / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3"]}))
    return base, [{"question_id": str(i), "prompt": f"Q{i}\nA. x\nB. y{SUFFIX}", "text": t}
                  for i, t in ((1, "A"), (2, "B"), (3, "B"))]


def test_acc_rounds_as_upstream(tmp_path: Path) -> None:
    base, rows = _three_problems(tmp_path)
    rfile = _answers(tmp_path / "a.jsonl", rows)
    res_file = tmp_path / "res.json"
    sqa.main(["--base-dir", str(base), "--result-file", str(rfile), "--output-result", str(res_file)])
    # 1 right of 3: upstream's correct / total * 100 is 33.33333333333333, while 100 * 1 / 3 is ...336.
    assert 1 / 3 * 100 != 100 * 1 / 3
    assert json.loads(res_file.read_text())["acc"] == 1 / 3 * 100
    assert res_file.read_bytes().startswith(b'{\n  "acc": 33.33333333333333,\n  "correct": 1,\n  "count": 3,')


def test_output_files_escape_non_ascii(tmp_path: Path) -> None:
    base, rows = _three_problems(tmp_path)
    rows[0]["prompt"] = "Caf\u00e9\u2014" + rows[0]["prompt"]
    rows[1]["text"] = "\u00c9"
    rfile = _answers(tmp_path / "a.jsonl", rows)
    out_file, res_file = tmp_path / "out.json", tmp_path / "res.json"
    sqa.main(["--base-dir", str(base), "--result-file", str(rfile), "--output-file", str(out_file),
              "--output-result", str(res_file)])
    out = out_file.read_bytes()
    assert out.startswith(b'{\n  "correct": [\n    {\n      "question_id": "1",\n      "parsed_ans": "A",\n'
                          b'      "ground_truth": "A",\n      "question": "Caf\\u00e9\\u2014Q1\\nA. x')
    assert out.endswith(b'"is_multimodal": false\n    }\n  ]\n}')
    assert b'"2": "\\u00c9"' in res_file.read_bytes() and out.isascii() and res_file.read_bytes().isascii()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    base, rows = _three_problems(tmp_path)
    rfile = _answers(tmp_path / "a.jsonl", rows[:2])
    stderr = cli_error("llava.eval.eval_science_qa", "--base-dir", str(base), "--result-file", str(rfile))
    assert stderr.startswith(f"error: {rfile}: 1 of 3 problems have no answer, e.g. '3'")
