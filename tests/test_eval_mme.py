"""Tests for the MME scorer (scorers.md §9)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.eval import eval_mme
from llava.eval.utils import InputError
from manifests import attach_manifest
from conftest import cli_error

SUFFIX = "\nAnswer the question using a single word or phrase."
MME = " Please answer yes or no."


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("No", "no"), ("yes, it is", "yes"), ("NO.", "no"),
    ("not sure", "no"), ("None", "no"), ("Nope", "no"), ("Know", "no"),
    ("I know", "other"),  # only the first 4 characters, "i kn", count
    ("it is yes", "other"), ("Church", "other"), ("", "other"),
])
def test_parse_prediction(text: str, expected: str) -> None:
    assert eval_mme.parse_prediction(text) == expected


def test_gt_question() -> None:
    assert eval_mme.gt_question("Is it red?" + SUFFIX) == "Is it red?" + MME
    assert eval_mme.gt_question("Is it red? Please answer yes or no.") == "Is it red?" + MME


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _official_tree(root: Path) -> None:
    """A tiny MME_Benchmark_release_version: one flat and one images/ category, plus a cognition one."""
    flat = root / "existence"
    flat.mkdir(parents=True)
    (flat / "001.jpg").write_bytes(b"")
    (flat / "001.txt").write_text(f"Is there a dog?{MME}\tYes\nIs there a cat?  Please answer yes or no.\tNo\n")
    (flat / "002.jpg").write_bytes(b"")
    (flat / "002.txt").write_text(f"Is there a car?{MME}\tYes\r\nIs there a bus?{MME}\tNo\r\n")
    nested = root / "artwork"
    (nested / "images").mkdir(parents=True)
    (nested / "questions_answers_YN").mkdir()
    (nested / "images" / "10.jpg").write_bytes(b"")
    (nested / "questions_answers_YN" / "10.txt").write_text(
        f"Is this by Monet?{MME}\tYes\nIs this by Manet?{MME}\tNo\n")
    cog = root / "code_reasoning"
    cog.mkdir()
    (cog / "0001.png").write_bytes(b"")
    (cog / "0001.txt").write_text(f"Is the output 3?{MME}\tNo\nIs the output 4?{MME}\tYes\n")


def test_official_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt_dir = tmp_path / "MME_Benchmark_release_version"
    _official_tree(gt_dir)
    # (category, image path, question, model output)
    items = [("existence", "existence/001.jpg", "Is there a dog?", "Yes"),
             ("existence", "existence/001.jpg", "Is there a cat?", "No"),   # GT has the double space
             ("existence", "existence/002.jpg", "Is there a car?", "Yes\nreally"),
             ("existence", "existence/002.jpg", "Is there a bus?", "Yes"),
             ("artwork", "artwork/images/10.jpg", "Is this by Monet?", "Church"),
             ("artwork", "artwork/images/10.jpg", "Is this by Manet?", "No"),
             ("code_reasoning", "code_reasoning/0001.png", "Is the output 3?", "No"),
             ("code_reasoning", "code_reasoning/0001.png", "Is the output 4?", "yes\tsure")]
    questions = [{"question_id": p, "image": p, "text": q + SUFFIX, "category": c} for c, p, q, _ in items]
    qfile = _jsonl(tmp_path / "llava_mme.jsonl", questions)
    # Answers in reverse order: the join is by (question_id, prompt), not position.
    rfile = _jsonl(tmp_path / "answers.jsonl", [{"question_id": p, "prompt": q + SUFFIX, "text": t}
                                               for _, p, q, t in reversed(items)])
    out_dir, score_file = tmp_path / "answers" / "exp", tmp_path / "score.json"
    eval_mme.main(["--question-file", str(qfile), "--result-file", str(rfile), "--gt-dir", str(gt_dir),
                   "--output-dir", str(out_dir), "--score-file", str(score_file)])
    score = json.loads(score_file.read_text())
    subtasks = score["details"]["subtasks"]
    # existence: 3/4 right, 1/2 images fully right -> 75 + 50; artwork: 1/2, 0/1 -> 50; code: 2/2, 1/1 -> 200.
    assert subtasks["existence"]["score"] == 125.0
    assert subtasks["artwork"]["score"] == 50.0
    assert subtasks["code_reasoning"]["score"] == 200.0
    assert score["benchmark"] == "mme" and score["score"] == 175.0
    assert score["details"]["cognition"] == 200.0
    assert "total score: 175.00" in capsys.readouterr().out

    lines = (out_dir / "existence.txt").read_text().split("\n")
    # Column 1 names the GT file (image stem + .txt), as LLaVA's convert_answer_to_mme.py writes it.
    assert lines[:4] == [f"001.txt\tIs there a dog?{MME}\tYes\tYes",
                         "001.txt\tIs there a cat?  Please answer yes or no.\tNo\tNo",
                         f"002.txt\tIs there a car?{MME}\tYes\tYes really",
                         f"002.txt\tIs there a bus?{MME}\tNo\tYes"]
    assert (out_dir / "code_reasoning.txt").read_text().endswith("\tYes\tyes sure\n")
    assert sorted(p.name for p in out_dir.iterdir()) == ["artwork.txt", "code_reasoning.txt", "existence.txt"]


def test_missing_answer_counts_as_wrong(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    (gt_dir / "count.txt").write_text(f"1.jpg\tHow many? 2{MME}\tYes\n1.jpg\tHow many? 3{MME}\tNo\n")
    qfile = _jsonl(tmp_path / "q.jsonl", [
        {"question_id": "count/1.jpg", "text": f"How many? {n}{SUFFIX}", "category": "count"} for n in (2, 3)])
    rfile = _jsonl(tmp_path / "a.jsonl", [{"question_id": "count/1.jpg", "prompt": f"How many? 2{SUFFIX}",
                                           "text": "Yes"}])
    records, partial = eval_mme.load_records(str(qfile), str(rfile), str(gt_dir), allow_partial=True)
    assert "1 of 2 questions have no answer" in capsys.readouterr().err
    assert partial == {"answered": 1, "expected": 2, "missing": 1}
    s = eval_mme.score_subtask(records["count"])
    assert (s.acc, s.acc_plus, s.other) == (0.5, 0.0, 1)


@pytest.mark.parametrize("gt_line, answer, message", [
    (f"1.jpg\tQ?{MME}\tMaybe\n", None, r"count.txt:1: GT answer must be Yes or No"),
    (f"1.jpg\tQ?{MME}\n", None, r"count.txt:1: expected image<TAB>question<TAB>answer"),
    (f"1.jpg\tOther?{MME}\tYes\n", None, r"q.jsonl:1: no GT in .* for count/1"),
    (f"1.jpg\tQ?{MME}\tYes\n", {"question_id": "count/1.jpg", "prompt": "R?", "text": "Yes"},
     r"a.jsonl:1: no question 'R\?' for 'count/1.jpg'"),
])
def test_bad_inputs(tmp_path: Path, gt_line: str, answer: dict | None, message: str) -> None:
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    (gt_dir / "count.txt").write_text(gt_line)
    qfile = _jsonl(tmp_path / "q.jsonl", [{"question_id": "count/1.jpg", "text": "Q?" + SUFFIX, "category": "count"}])
    rfile = _jsonl(tmp_path / "a.jsonl", [answer or {"question_id": "count/1.jpg", "prompt": "Q?" + SUFFIX,
                                                     "text": "Yes"}])
    with pytest.raises(InputError, match=message):
        eval_mme.load_records(str(qfile), str(rfile), str(gt_dir))


def test_missing_category(tmp_path: Path) -> None:
    qfile = _jsonl(tmp_path / "q.jsonl", [{"question_id": "OCR/1.jpg", "text": "Q?", "category": "OCR"}])
    with pytest.raises(InputError, match="neither OCR.txt nor OCR/ found"):
        eval_mme.load_records(str(qfile), str(qfile), str(tmp_path))


def test_llava_13b_reference(shared_dir: Path, tmp_path: Path) -> None:
    out_dir, score_file = tmp_path / "exp", tmp_path / "score.json"
    eval_mme.main(["--question-file", str(shared_dir / "llava-eval/MME/llava_mme.jsonl"),
                   "--result-file", str(shared_dir / "llava-eval/MME/answers/llava-v1.5-13b.jsonl"),
                   "--gt-dir", str(shared_dir / "mme/ground_truth"),
                   "--output-dir", str(out_dir), "--score-file", str(score_file)])
    score = json.loads(score_file.read_text())
    assert round(score["score"], 2) == 1531.32
    assert round(score["details"]["cognition"], 2) == 295.36
    assert round(score["details"]["subtasks"]["artwork"]["score"], 2) == 117.75
    # The written files follow calculation.py's layout: 4 fields, an image's two questions adjacent.
    total = 0
    for path in out_dir.glob("*.txt"):
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        assert all(len(r) == 4 for r in rows)
        assert all(a[0] == b[0] for a, b in zip(rows[::2], rows[1::2]))
        total += len(rows)
    assert total == 2374


def _count_fixture(tmp_path: Path, answers: list[dict]) -> tuple[Path, Path, Path]:
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    (gt_dir / "count.txt").write_text(f"1.jpg\tHow many? 2{MME}\tYes\n1.jpg\tHow many? 3{MME}\tNo\n")
    qfile = _jsonl(tmp_path / "q.jsonl", [
        {"question_id": "count/1.jpg", "text": f"How many? {n}{SUFFIX}", "category": "count"} for n in (2, 3)])
    return gt_dir, qfile, _jsonl(tmp_path / "a.jsonl", answers)


def _ans(n: int, text: str) -> dict:
    return {"question_id": "count/1.jpg", "prompt": f"How many? {n}{SUFFIX}", "text": text}


def test_missing_answer_is_an_error_unless_allowed(tmp_path: Path) -> None:
    gt_dir, qfile, rfile = _count_fixture(tmp_path, [_ans(2, "Yes")])
    with pytest.raises(InputError, match=r"a\.jsonl: 1 of 2 questions have no answer, e\.g\. \('count/1\.jpg', "
                                         r"'How many\? 3\\nAnswer"):
        eval_mme.load_records(str(qfile), str(rfile), str(gt_dir))
    score_file = tmp_path / "score.json"
    eval_mme.main(["--question-file", str(qfile), "--result-file", str(rfile), "--gt-dir", str(gt_dir),
                   "--allow-partial", "--score-file", str(score_file)])
    score = json.loads(score_file.read_text())
    assert score["partial"] == {"answered": 1, "expected": 2, "missing": 1} and score["answers_file"] == str(rfile)
    assert score["score"] == 50.0  # acc 1/2 (the unanswered one is wrong), acc+ 0/1


def test_duplicate_answer_names_both_lines(tmp_path: Path) -> None:
    gt_dir, qfile, rfile = _count_fixture(tmp_path, [_ans(2, "Yes"), _ans(3, "No"), _ans(2, "No")])
    with pytest.raises(InputError, match=r"a\.jsonl:3: duplicate answer for 'count/1\.jpg': .* \(first at line 1\)"):
        eval_mme.load_records(str(qfile), str(rfile), str(gt_dir))


def test_score_file_carries_the_run_manifest(tmp_path: Path) -> None:
    gt_dir, qfile, rfile = _count_fixture(tmp_path, [_ans(2, "Yes"), _ans(3, "No")])
    manifest = attach_manifest(Path(rfile))
    score_file = tmp_path / "score.json"
    eval_mme.main(["--question-file", str(qfile), "--result-file", str(rfile), "--gt-dir", str(gt_dir),
                   "--score-file", str(score_file)])
    score = json.loads(score_file.read_text())
    assert score["manifest"] == manifest and score["partial"] is None and score["score"] == 200.0


@pytest.mark.parametrize("category", ["../escape", "sub/count", "/tmp/count", "..", ""])
def test_category_cannot_leave_its_folders(tmp_path: Path, category: str) -> None:
    """A category names a GT file and an output file: it must not point outside --gt-dir or --output-dir."""
    gt_dir, out_dir = tmp_path / "gt", tmp_path / "out" / "exp"
    gt_dir.mkdir()
    # GT where the unchecked path would find it, so that only the path check can stop the write.
    (tmp_path / "escape.txt").write_text(f"1.jpg\tQ?{MME}\tYes\n1.jpg\tR?{MME}\tNo\n")
    qfile = _jsonl(tmp_path / "q.jsonl", [{"question_id": "x/1.jpg", "text": q + SUFFIX, "category": category}
                                          for q in ("Q?", "R?")])
    rfile = _jsonl(tmp_path / "a.jsonl", [{"question_id": "x/1.jpg", "prompt": q + SUFFIX, "text": "Yes"}
                                          for q in ("Q?", "R?")])
    with pytest.raises(InputError, match=rf"q\.jsonl:1: category: {repr(category).replace('.', '[.]')} is not a plain "
                                         "file name"):
        eval_mme.main(["--question-file", str(qfile), "--result-file", str(rfile), "--gt-dir", str(gt_dir),
                       "--output-dir", str(out_dir)])
    assert not (tmp_path / "out" / "escape.txt").exists()
    with pytest.raises(InputError, match=r"category '\.\./x': '\.\./x\.txt' is not a plain file name"):
        eval_mme.write_official(str(out_dir), {"../x": []})


def test_official_files_are_byte_identical_to_upstream(shared_dir: Path, tmp_path: Path) -> None:
    """The files match what LLaVA's convert_answer_to_mme.py writes from the same answers, byte for byte."""
    answers_file = shared_dir / "llava-eval/MME/answers/llava-v1.5-13b.jsonl"
    out_dir = tmp_path / "exp"
    eval_mme.main(["--question-file", str(shared_dir / "llava-eval/MME/llava_mme.jsonl"),
                   "--result-file", str(answers_file), "--gt-dir", str(shared_dir / "mme/ground_truth"),
                   "--output-dir", str(out_dir)])
    # Upstream's rules: GT keyed by (category, <stem>.txt, question); the category is the question_id's
    # first component; lines in answer order, "<stem>.txt", question, GT, raw text, tab-joined.
    gt = {}
    for path in (shared_dir / "mme/ground_truth").glob("*.txt"):
        for line in path.read_text(encoding="utf-8").splitlines():
            image, question, answer = line.strip().split("\t")
            gt[path.stem, image.split(".")[0] + ".txt", question] = answer
    expected: dict[str, str] = {}
    for line in answers_file.read_text(encoding="utf-8").splitlines():
        ans = json.loads(line)
        category, file = ans["question_id"].split("/")[0], ans["question_id"].split("/")[-1].split(".")[0] + ".txt"
        prompt = ans["prompt"].replace("Answer the question using a single word or phrase.", "").strip()
        if "Please answer yes or no." not in prompt:
            prompt += " Please answer yes or no."
            if (category, file, prompt) not in gt:
                prompt = prompt.replace(" Please answer yes or no.", "  Please answer yes or no.")
        expected[category] = expected.get(category, "") + "\t".join(
            (file, prompt, gt[category, file, prompt], ans["text"])) + "\n"
    assert sorted(p.stem for p in out_dir.iterdir()) == sorted(expected) and len(expected) == 14
    for category, text in expected.items():
        assert (out_dir / f"{category}.txt").read_bytes() == text.encode("utf-8"), category


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    gt_dir, qfile, rfile = _count_fixture(tmp_path, [_ans(2, "Yes"), {"question_id": "count/1.jpg", "text": 1}])
    stderr = cli_error("llava.eval.eval_mme", "--question-file", str(qfile), "--result-file", str(rfile), "--gt-dir",
                       str(gt_dir))
    assert stderr.startswith(f"error: {rfile}:2: missing key(s) prompt")
