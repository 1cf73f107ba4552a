"""Tests for the POPE scorer (scorers.md §8)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llava.eval import eval_pope
from llava.eval.utils import InputError
from manifests import attach_manifest
from conftest import cli_error

SUFFIX = "\nAnswer the question using a single word or phrase."
OFFSETS = {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("text, expected", [
    ("No", "no"), ("Yes", "yes"), ("no", "no"), ("There is not a dog.", "no"),
    ("Yes, no doubt", "no"),            # comma removed, then "no" is a token
    ("Yes. No.", "yes"),                # only the text before the first '.' counts
    ("NO", "yes"), ("Nope", "yes"), ("", "yes"), ("No,", "no"), ("Not", "yes"),
])
def test_parse_answer(text: str, expected: str) -> None:
    assert eval_pope.parse_answer(text) == expected


def _fixture(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """Annotation dir (2 questions per split) and a LLaVA question file with LLaVA's id offsets."""
    ann_dir = tmp_path / "coco"
    ann_dir.mkdir()
    questions = []
    labels = {"adversarial": ["yes", "no", "yes", "no"], "popular": ["yes", "yes", "no", "no"],
              "random": ["no", "yes", "no"]}
    for split, split_labels in labels.items():
        anns = [{"question_id": i + 1, "image": f"img{i // 2}.jpg", "text": f"Is there a {split}{i}?",
                 "label": label} for i, label in enumerate(split_labels)]
        _jsonl(ann_dir / f"coco_pope_{split}.json", anns)
        # The question file lists each split's questions in reverse order: the join must not care.
        questions += [{"question_id": OFFSETS[split] + a["question_id"], "image": a["image"],
                       "text": a["text"] + SUFFIX, "category": split} for a in reversed(anns)]
    return ann_dir, _jsonl(tmp_path / "questions.jsonl", questions), questions


def test_join_by_id_with_shuffled_answers(tmp_path: Path) -> None:
    ann_dir, qfile, questions = _fixture(tmp_path)
    # Answers: adversarial all right; popular says yes to everything; random answers no to all.
    preds = {"adversarial": {1: "Yes", 2: "No.", 3: "Yes, there is", 4: "There is no such thing."},
             "popular": {1: "Yes", 2: "Yes", 3: "Yes", 4: "Yes"},
             "random": {1: "No", 2: "No", 3: "No"}}
    answers = [{"question_id": q["question_id"], "prompt": q["text"],
                "text": preds[q["category"]][q["question_id"] - OFFSETS[q["category"]]]} for q in questions]
    random.Random(0).shuffle(answers)
    rfile = _jsonl(tmp_path / "answers.jsonl", answers)

    scores, partial = eval_pope.evaluate(str(ann_dir), str(qfile), str(rfile))
    assert list(scores) == ["adversarial", "popular", "random"] and partial is None
    adv, pop, rnd = scores.values()
    assert (adv.tp, adv.fp, adv.tn, adv.fn) == (2, 0, 2, 0) and adv.f1 == 1.0
    assert (pop.tp, pop.fp, pop.tn, pop.fn) == (2, 2, 0, 0)
    assert pop.precision == 0.5 and pop.recall == 1.0 and pop.f1 == pytest.approx(2 / 3)
    assert pop.yes_ratio == 1.0 and pop.accuracy == 0.5
    # Never saying yes must not divide by zero.
    assert (rnd.tp, rnd.fp, rnd.tn, rnd.fn) == (0, 0, 2, 1)
    assert rnd.precision == 0.0 and rnd.f1 == 0.0 and rnd.accuracy == pytest.approx(2 / 3)


def test_main_never_yes_and_score_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann_dir, qfile, questions = _fixture(tmp_path)
    rfile = _jsonl(tmp_path / "answers.jsonl",
                   [{"question_id": q["question_id"], "text": "No"} for q in questions])
    score_file = tmp_path / "score.json"
    eval_pope.main(["--annotation-dir", str(ann_dir), "--question-file", str(qfile),
                    "--result-file", str(rfile), "--score-file", str(score_file)])
    out = capsys.readouterr().out
    assert out.count("never answered yes") == 3
    assert "Average F1 score: 0.00" in out
    score = json.loads(score_file.read_text())
    assert score["benchmark"] == "pope" and score["score"] == 0.0
    assert score["details"]["random"]["tn"] == 2


def test_partial_answers_warn(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann_dir, qfile, questions = _fixture(tmp_path)
    rfile = _jsonl(tmp_path / "answers.jsonl", [{"question_id": 1, "text": "Yes"}])
    scores, partial = eval_pope.evaluate(str(ann_dir), str(qfile), str(rfile), allow_partial=True)
    assert list(scores) == ["adversarial"] and scores["adversarial"].tp == 1
    assert "10 of 11 questions have no answer" in capsys.readouterr().err
    assert partial == {"answered": 1, "expected": 11, "missing": 10}


@pytest.mark.parametrize("answers, message", [
    ([{"question_id": 99, "text": "Yes"}], "answers.jsonl:1: question_id 99 is not in"),
    ([{"question_id": 1, "text": "Yes"}, {"question_id": 1, "text": "No"}], "answers.jsonl:2: duplicate answer"),
    ([{"question_id": 1}], "answers.jsonl:1: missing key(s) text"),
])
def test_bad_answers(tmp_path: Path, answers: list[dict], message: str) -> None:
    ann_dir, qfile, _ = _fixture(tmp_path)
    rfile = _jsonl(tmp_path / "answers.jsonl", answers)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        eval_pope.evaluate(str(ann_dir), str(qfile), str(rfile))


def test_question_without_annotation(tmp_path: Path) -> None:
    ann_dir, _, questions = _fixture(tmp_path)
    questions[0] = {**questions[0], "text": "Is there a unicorn?" + SUFFIX}
    qfile = _jsonl(tmp_path / "questions.jsonl", questions)
    with pytest.raises(InputError, match=r"questions.jsonl:1: no adversarial annotation .*unicorn"):
        eval_pope.evaluate(str(ann_dir), str(qfile), str(qfile))


def test_llava_13b_reference(shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    score_file = tmp_path / "score.json"
    eval_pope.main(["--annotation-dir", str(shared_dir / "pope/coco"),
                    "--question-file", str(shared_dir / "llava-eval/pope/llava_pope_test.jsonl"),
                    "--result-file", str(shared_dir / "llava-eval/pope/answers/llava-v1.5-13b.jsonl"),
                    "--score-file", str(score_file)])
    assert "Average F1 score: 85.95" in capsys.readouterr().out
    score = json.loads(score_file.read_text())
    assert round(score["score"], 2) == 85.95
    f1 = {split: round(100 * d["f1"], 2) for split, d in score["details"].items()}
    assert f1 == {"adversarial": 84.46, "popular": 86.25, "random": 87.14}
    assert score["details"]["random"]["tp"] + score["details"]["random"]["fn"] == 1500
    # Mean accuracy differs (86.98), which is why the reported metric must be F1.
    assert round(sum(100 * d["accuracy"] for d in score["details"].values()) / 3, 2) == 86.98


def test_missing_answers_are_an_error_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann_dir, qfile, questions = _fixture(tmp_path)
    rfile = _jsonl(tmp_path / "answers.jsonl", [{"question_id": q["question_id"], "text": "Yes"}
                                                for q in questions if q["category"] != "random"])
    args = ["--annotation-dir", str(ann_dir), "--question-file", str(qfile), "--result-file", str(rfile)]
    with pytest.raises(InputError, match=r"answers\.jsonl: 3 of 11 questions have no answer, e\.g\. 10000003, "
                                         r"10000002, 10000001"):
        eval_pope.main(args)
    score_file = tmp_path / "score.json"
    eval_pope.main(args + ["--allow-partial", "--score-file", str(score_file)])
    assert "PARTIAL score: 3 of 11 questions" in capsys.readouterr().err
    score = json.loads(score_file.read_text())
    assert score["partial"] == {"answered": 8, "expected": 11, "missing": 3}
    assert list(score["details"]) == ["adversarial", "popular"]  # all yes: F1 = 2/3 on both
    assert score["score"] == pytest.approx(100 * 2 / 3) and score["answers_file"] == str(rfile)


def test_score_file_carries_the_run_manifest(tmp_path: Path) -> None:
    ann_dir, qfile, questions = _fixture(tmp_path)
    rfile = _jsonl(tmp_path / "answers.jsonl", [{"question_id": q["question_id"], "text": "No"} for q in questions])
    manifest = attach_manifest(Path(rfile))
    score_file = tmp_path / "score.json"
    eval_pope.main(["--annotation-dir", str(ann_dir), "--question-file", str(qfile), "--result-file", str(rfile),
                    "--score-file", str(score_file)])
    score = json.loads(score_file.read_text())
    assert score["manifest"] == manifest and score["partial"] is None


def test_duplicate_answer_names_both_lines(tmp_path: Path) -> None:
    ann_dir, qfile, questions = _fixture(tmp_path)
    rfile = _jsonl(tmp_path / "answers.jsonl", [{"question_id": 1, "text": "Yes"}, {"question_id": 2, "text": "No"},
                                                {"question_id": 1, "text": "No"}])
    with pytest.raises(InputError, match=r"answers\.jsonl:3: duplicate answer for question_id 1 \(first at line 1\)"):
        eval_pope.evaluate(str(ann_dir), str(qfile), str(rfile), allow_partial=True)


def test_non_string_fields_are_named(tmp_path: Path) -> None:
    ann_dir, _, questions = _fixture(tmp_path)
    questions[2] = {**questions[2], "image": ["img0.jpg"]}
    qfile = _jsonl(tmp_path / "questions.jsonl", questions)
    with pytest.raises(InputError, match=r"questions\.jsonl:3: 'question_id' must be an int or string, 'image' and"):
        eval_pope.evaluate(str(ann_dir), str(qfile), str(qfile))
    _jsonl(ann_dir / "coco_pope_adversarial.json", [{"image": "img0.jpg", "text": 5, "label": "yes"}])
    with pytest.raises(InputError, match=r"coco_pope_adversarial\.json:1: 'image' and 'text' must be strings"):
        eval_pope.load_labels(str(ann_dir), "adversarial")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    ann_dir, qfile, _ = _fixture(tmp_path)
    rfile = _jsonl(tmp_path / "answers.jsonl", [{"question_id": 1, "text": "Yes"}])
    stderr = cli_error("llava.eval.eval_pope", "--annotation-dir", str(ann_dir), "--question-file", str(qfile),
                       "--result-file", str(rfile))
    assert stderr.startswith(f"error: {rfile}: 10 of 11 questions have no answer")
