import json

import pytest

from llava.eval import eval_gqa
from llava.eval.utils import InputError, read_json, read_jsonl
from conftest import cli_error

SUFFIX = "\nAnswer the question using a single word or phrase."


def _q(answer, structural, semantic, balanced=True):
    # the fields of the official testdev_balanced_questions.json that eval.py reads
    return {"question": "Q?", "answer": answer, "isBalanced": balanced, "groups": {"global": None},
            "semantic": [], "types": {"structural": structural, "semantic": semantic, "detailed": "x"}}


@pytest.fixture
def files(tmp_path):
    questions = {"q1": _q("no", "verify", "attr"), "q2": _q("woman", "query", "rel"),
                 "q3": _q("left", "query", "rel"), "q4": _q("yes", "logical", "obj"),
                 "q5": _q("blue", "query", "attr", balanced=False), "q6": _q("t-shirt", "query", "cat")}
    qfile = tmp_path / "testdev_balanced_questions.json"
    qfile.write_text(json.dumps(questions))
    answers = {"q1": "No.", "q2": "Woman", "q3": "Right", "q4": "Yes, it is.", "q6": "T-shirt.."}
    res = tmp_path / "merge.jsonl"
    res.write_text("".join(json.dumps({"question_id": k, "prompt": "Q?" + SUFFIX, "text": v}) + "\n"
                           for k, v in answers.items()))
    return qfile, res


def test_convert_strips_trailing_periods_and_lowercases(files):
    _, res = files
    assert eval_gqa.convert(str(res)) == [
        {"questionId": "q1", "prediction": "no"}, {"questionId": "q2", "prediction": "woman"},
        {"questionId": "q3", "prediction": "right"}, {"questionId": "q4", "prediction": "yes, it is"},
        {"questionId": "q6", "prediction": "t-shirt"}]


def test_cli_scores_balanced_questions(files, tmp_path, capsys):
    qfile, res = files
    preds, score = tmp_path / "testdev_balanced_predictions.json", tmp_path / "score.json"
    eval_gqa.main(["--result-file", str(res), "--questions", str(qfile), "--predictions-out", str(preds),
                   "--score-file", str(score)])
    out = capsys.readouterr().out
    assert "Binary: 50.00%\nOpen: 66.67%\nAccuracy: 60.00%" in out
    assert "  query: 66.67% (3 questions)" in out and "  logical: 0.00% (1 questions)" in out
    assert len(read_json(preds)) == 5
    rec = read_json(score)
    assert rec["benchmark"] == "gqa" and rec["score"] == pytest.approx(60.0)
    assert rec["details"]["questions"] == 5 and rec["details"]["open"] == pytest.approx(200 / 3)


def test_missing_balanced_prediction_is_an_error(files, tmp_path):
    qfile, res = files
    res.write_text("".join(line + "\n" for line in res.read_text().splitlines() if '"q3"' not in line))
    with pytest.raises(InputError, match=r"merge\.jsonl: 1 of 5 balanced questions have no answer, e\.g\. 'q3'"):
        eval_gqa.main(["--result-file", str(res), "--questions", str(qfile)])


def test_bad_question_entry_is_named(files, tmp_path):
    qfile, res = files
    doc = read_json(qfile)
    del doc["q2"]["types"]["structural"]
    qfile.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"question q2: types: missing key\(s\) structural"):
        eval_gqa.main(["--result-file", str(res), "--questions", str(qfile)])


def test_cli_needs_something_to_do(files):
    with pytest.raises(SystemExit):
        eval_gqa.main(["--result-file", str(files[1])])


def test_real_answers_convert(shared_dir):
    base = shared_dir / "llava-eval" / "gqa"
    preds = eval_gqa.convert(str(base / "answers" / "llava_gqa_testdev_balanced" / "llava-v1.5-13b.jsonl"))
    qids = [q["question_id"] for q in read_jsonl(base / "llava_gqa_testdev_balanced.jsonl")]
    assert len(preds) == 12578
    assert all(isinstance(p["questionId"], str) for p in preds)
    assert sorted(p["questionId"] for p in preds) == sorted(qids) and len(set(qids)) == 12578
    assert all(p["prediction"] == p["prediction"].lower() and not p["prediction"].endswith(".") for p in preds)
    # scoring at full scale: a GT of "yes" everywhere gives the share of "yes" predictions
    questions = {qid: _q("yes", "verify", "attr") for qid in qids}
    share = 100 * sum(p["prediction"] == "yes" for p in preds) / len(preds)
    assert 10 < share < 60 and eval_gqa.score(questions, preds)["accuracy"] == pytest.approx(share)


def _full(question, answer, structural, semantic, detailed, program, group, entailed=(), balanced=True):
    """A question with every field eval.py reads; ``program`` is a list of (operation, argument)."""
    return {"question": question, "answer": answer, "isBalanced": balanced, "imageId": "n1",
            "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
            "semantic": [{"operation": o, "argument": a, "dependencies": []} for o, a in program],
            "groups": {"global": group, "local": None}, "entailed": list(entailed), "equivalent": []}


# Six balanced questions (b*) and two unbalanced ones (e*) that only serve consistency.
FULL_QUESTIONS = {
    "b1": _full("Is the cup red?", "no", "verify", "attr", "verifyAttr",
                [("select", "cup"), ("verify color", "red")], None, ["e1", "b1"]),
    "b2": _full("What color is the cup?", "white", "query", "attr", "queryAttr",
                [("select", "cup"), ("query", "color")], "color", ["b1", "e1"]),
    "b3": _full("What is on the table?", "cup", "query", "rel", "relS",
                [("select", "table"), ("relate", "_,on,s"), ("query", "name")], "object"),
    "b4": _full("What do the cup and the plate have in common?", "color", "compare", "attr", "twoCommon",
                [("select", "cup"), ("select", "plate"), ("common", "")], None),
    "b5": _full("Is there a dog?", "no", "verify", "obj", "existC", [("select", "dog"), ("exist", "?")], None),
    "b6": _full("What color is the plate?", "white", "query", "attr", "queryAttr",
                [("select", "plate"), ("query", "color")], "color", ["e2"]),
    "e1": _full("Is the cup white?", "white", "query", "attr", "queryAttr", [("select", "cup")], "color",
                balanced=False),
    "e2": _full("Is the plate white?", "yes", "verify", "attr", "verifyAttr", [("select", "plate")], None,
                balanced=False),
}
FULL_ANSWERS = {"b1": "No.", "b2": "White", "b3": "plate", "b4": "shape", "b5": "no", "b6": "blue",
                "e1": "black", "e2": "yes"}
FULL_CHOICES = {  # b4 is a "Common" question: color, material and shape are all valid and plausible
    "b1": {"valid": ["yes", "no"], "plausible": ["yes", "no"]},
    "b2": {"valid": ["white", "blue", "red"], "plausible": ["white", "blue"]},
    "b3": {"valid": ["cup", "table"], "plausible": ["cup"]},
    "b4": {"valid": ["color"], "plausible": ["color"]},
    "b5": {"valid": ["yes", "no"], "plausible": ["yes", "no"]},
    "b6": {"valid": ["white", "blue"], "plausible": ["white"]},
}


@pytest.fixture
def full(tmp_path):
    qfile = tmp_path / "testdev_all_questions.json"
    qfile.write_text(json.dumps(FULL_QUESTIONS))
    cfile = tmp_path / "testdev_choices.json"
    cfile.write_text(json.dumps(FULL_CHOICES))
    res = tmp_path / "merge.jsonl"
    res.write_text("".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in FULL_ANSWERS.items()))
    return qfile, cfile, res


def test_all_official_metrics_by_hand(full, tmp_path, capsys):
    qfile, cfile, res = full
    score_file = tmp_path / "score.json"
    eval_gqa.main(["--result-file", str(res), "--questions", str(qfile), "--choices", str(cfile), "--consistency",
                   "--score-file", str(score_file)])
    out = capsys.readouterr().out
    # Right: b1, b2, b5. Binary (not 'query'): b1, b4, b5; open: b2, b3, b6.
    # Consistency over the right ones with entailed questions: b1 -> [e1 wrong] = 0; b2 -> [b1 right, e1 wrong]
    # = 1/2; b5 has none. Valid: all but b3 ("plate"); plausible: all but b3 and b6 ("blue").
    # Distribution: group color, gold {white: 2}, predicted {white: 1, blue: 1}: (1-2)²/2 = 0.5 over 2
    # questions; group object, gold {cup: 1}, predicted {plate: 1}: (0-1)²/1 = 1 over 1 question.
    distribution = (0.5 * 2 + 1.0 * 1) / 3 / 100
    assert out.startswith("Binary: 66.67%\nOpen: 33.33%\nAccuracy: 50.00%\nConsistency: 25.00%\n"
                          "Validity: 83.33%\nPlausibility: 66.67%\nDistribution: 0.01 (lower is better)\n")
    # Steps: "exist" and "query: name" operations do not count (b5: 1, b3: 2, b4: 3, the others 2).
    assert ("\nAccuracy / steps number:\n  1: 100.00% (1 questions)\n  2: 50.00% (4 questions)\n"
            "  3: 0.00% (1 questions)\n") in out
    assert ("\nAccuracy / words number:\n  4: 100.00% (2 questions)\n  5: 33.33% (3 questions)\n"
            "  10: 0.00% (1 questions)\n") in out
    assert "\nAccuracy / structural type:\n  compare: 0.00% (1 questions)\n  query: 33.33% (3 questions)\n" in out
    assert "\nAccuracy / semantic type:\n  attr: 50.00% (4 questions)\n  obj: 100.00% (1 questions)\n" in out
    rec = read_json(score_file)
    assert rec["score"] == pytest.approx(50.0) and rec["partial"] is None
    assert rec["details"]["consistency"] == pytest.approx(25.0)
    assert rec["details"]["validity"] == pytest.approx(500 / 6)
    assert rec["details"]["plausibility"] == pytest.approx(400 / 6)
    assert rec["details"]["distribution"] == pytest.approx(distribution)
    assert rec["details"]["questions"] == 6


def test_chi_square_weights_groups_by_size():
    gold = {"g1": {"a": 3, "b": 1}, "g2": {"c": 2}}
    predicted = {"g1": {"a": 1, "b": 2, "x": 1}, "g2": {"c": 2}}
    # g1: (1-3)²/3 + (2-1)²/1 = 7/3 over 4 questions; g2: 0 over 2; answers outside the gold ones do not count.
    assert eval_gqa.chi_square(gold, predicted) == pytest.approx((7 / 3 * 4 + 0 * 2) / 6)
    assert eval_gqa.chi_square({}, {}) is None


def test_accuracy_only_without_the_optional_files(full, capsys):
    qfile, _, res = full
    s = eval_gqa.score(read_json(qfile), eval_gqa.convert(str(res)), str(qfile))
    assert (s["consistency"], s["validity"], s["plausibility"]) == (None, None, None)
    assert s["accuracy"] == 50.0 and s["distribution"] == pytest.approx((0.5 * 2 + 1.0) / 3 / 100)
    eval_gqa.main(["--result-file", str(res), "--questions", str(qfile)])
    out = capsys.readouterr().out
    assert "Consistency" not in out and "Validity" not in out and "Distribution: 0.01" in out


def test_consistency_needs_every_question(full):
    qfile, _, res = full
    res.write_text("".join(line + "\n" for line in res.read_text().splitlines() if '"e2"' not in line))
    with pytest.raises(InputError, match=r"1 of 8 questions have no answer, e\.g\. 'e2'"):
        eval_gqa.main(["--result-file", str(res), "--questions", str(qfile), "--consistency"])
    questions = read_json(qfile)
    # Without consistency the unbalanced questions need no prediction.
    assert eval_gqa.score(questions, eval_gqa.convert(str(res)))["accuracy"] == 50.0
    questions["b2"]["entailed"] = ["zz"]
    qfile.write_text(json.dumps(questions))
    with pytest.raises(InputError, match=r"question b2: entailed question zz is not in the file"):
        eval_gqa.main(["--result-file", str(res), "--questions", str(qfile), "--consistency", "--allow-partial"])


def test_missing_choices_entry_is_named(full):
    qfile, cfile, res = full
    choices = read_json(cfile)
    del choices["b6"]
    cfile.write_text(json.dumps(choices))
    with pytest.raises(InputError, match=r"testdev_choices\.json: question b6: expected 'valid' and 'plausible'"):
        eval_gqa.main(["--result-file", str(res), "--questions", str(qfile), "--choices", str(cfile)])


def test_duplicate_answer_is_refused(files):
    _, res = files
    with open(res, "a") as f:  # a conflicting second answer to q1 (the last copy used to win)
        f.write(json.dumps({"question_id": "q1", "text": "Yes"}) + "\n")
    with pytest.raises(InputError, match=r"merge\.jsonl:6: duplicate answer for question_id 'q1' \(first at line 1\)"):
        eval_gqa.convert(str(res))


def test_answer_to_unknown_question_is_an_error(files):
    qfile, res = files
    with open(res, "a") as f:
        f.write(json.dumps({"question_id": "q9", "text": "yes"}) + "\n")
    with pytest.raises(InputError,
                       match=r"merge\.jsonl: 1 answer\(s\) to questions not in .*questions\.json, e\.g\. 'q9'"):
        eval_gqa.main(["--result-file", str(res), "--questions", str(qfile)])


def test_partial_scores_the_answered_questions(files, tmp_path, capsys):
    qfile, res = files
    res.write_text("".join(line + "\n" for line in res.read_text().splitlines() if '"q3"' not in line))
    score_file = tmp_path / "score.json"
    eval_gqa.main(["--result-file", str(res), "--questions", str(qfile), "--allow-partial",
                   "--score-file", str(score_file)])
    captured = capsys.readouterr()
    assert "Accuracy: 75.00%" in captured.out  # q1, q2, q6 right of q1, q2, q4, q6
    assert "PARTIAL score: 1 of 5 balanced questions" in captured.err
    assert read_json(score_file)["partial"] == {"answered": 4, "expected": 5, "missing": 1}


def test_predictions_file_bytes(tmp_path):
    res = tmp_path / "merge.jsonl"
    res.write_text('{"question_id": "1", "text": "Caf\\u00e9."}\n{"question_id": 2, "text": "\\u4e0a"}\n',
                   encoding="utf-8")
    out = tmp_path / "testdev_balanced_predictions.json"
    eval_gqa.main(["--result-file", str(res), "--predictions-out", str(out)])
    # json.dump defaults, as LLaVA's convert_gqa_for_eval.py writes: \\u escapes, ", " and ": ", no newline.
    assert out.read_bytes() == (b'[{"questionId": "1", "prediction": "caf\\u00e9"}, '
                                b'{"questionId": "2", "prediction": "\\u4e0a"}]')


def test_real_predictions_bytes(shared_dir, tmp_path):
    src = shared_dir / "llava-eval" / "gqa" / "answers" / "llava_gqa_testdev_balanced" / "llava-v1.5-13b.jsonl"
    out = tmp_path / "testdev_balanced_predictions.json"
    eval_gqa.main(["--result-file", str(src), "--predictions-out", str(out)])
    upstream = [{"questionId": r["question_id"], "prediction": r["text"].rstrip(".").lower()} for r in read_jsonl(src)]
    assert out.read_bytes() == json.dumps(upstream).encode()


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "merge.jsonl"
    bad.write_text('{"question_id": "1", "text": "a"}\n{"question_id": "1"\n')
    stderr = cli_error("llava.eval.eval_gqa", "--result-file", str(bad), "--predictions-out",
                       str(tmp_path / "p.json"))
    assert stderr.startswith(f"error: {bad}:2: malformed JSON line")
