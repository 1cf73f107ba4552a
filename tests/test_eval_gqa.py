import json

import pytest

from llava.eval import eval_gqa
from llava.eval.utils import InputError, read_json, read_jsonl

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
    with pytest.raises(InputError, match=r"missing predictions for 1 balanced question.*q3"):
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
