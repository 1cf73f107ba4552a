import json

import pytest
from pathlib import Path

from llava.eval import eval_textvqa
from llava.eval.utils import InputError, read_json, read_jsonl
from manifests import attach_manifest
from conftest import cli_error

SUFFIX = "Answer the question using a single word or phrase."


def _answer(image_id, question, text, ocr="A, B"):
    prompt = f"{question}\nReference OCR token: {ocr}\n{SUFFIX}"
    return {"question_id": image_id, "prompt": prompt, "text": text, "answer_id": "x", "model_id": "m", "metadata": {}}


@pytest.fixture
def files(tmp_path):
    data = [  # the real TextVQA_0.5.1_val.json layout (extra keys ignored)
        {"image_id": "img1", "question_id": 1, "question": "What brand is this?",
         "answers": ["coca cola"] * 2 + ["Coca-Cola"] + ["pepsi"] * 7, "image_classes": [], "set_name": "val"},
        {"image_id": "img2", "question_id": 2, "question": "How many cans?", "answers": ["two"] * 10},
        # same image, second question: image_id alone is not a key
        {"image_id": "img1", "question_id": 3, "question": "What does the sign say?",
         "answers": ["stop"] + ["go"] * 9},
    ]
    ann = tmp_path / "TextVQA_0.5.1_val.json"
    ann.write_text(json.dumps({"dataset_name": "textvqa", "dataset_type": "val", "data": data}))
    res = tmp_path / "answers.jsonl"
    lines = [_answer("img1", "What brand is this?", "Coca Cola."), _answer("img2", "How many cans?", "2"),
             _answer("img1", "What does the sign say?", "Stop")]
    res.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return ann, res


def test_cli_accuracy_and_score_file(files, tmp_path, capsys):
    ann, res = files
    score = tmp_path / "score.json"
    eval_textvqa.main(["--annotation-file", str(ann), "--result-file", str(res), "--score-file", str(score)])
    assert capsys.readouterr().out.splitlines() == ["Samples: 3", "Accuracy: 73.33%"]
    rec = read_json(score)
    assert rec["benchmark"] == "textvqa" and rec["score"] == pytest.approx(100 * (0.9 + 1.0 + 0.3) / 3)
    assert rec["details"] == {"samples": 3}


def test_unknown_question_names_line(files):
    ann, res = files
    with open(res, "a") as f:
        f.write(json.dumps(_answer("img2", "What colour?", "red")) + "\n")
    with pytest.raises(InputError, match=r"answers\.jsonl:4: no annotation .*what colour\?"):
        eval_textvqa.evaluate(str(ann), str(res))


def test_bad_annotation_answer_count(files, tmp_path):
    ann, res = files
    doc = read_json(ann)
    doc["data"][1]["answers"] = ["two"] * 9
    ann.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"data\[1\].*10"):
        eval_textvqa.evaluate(str(ann), str(res))


@pytest.mark.parametrize("prompt, question", [
    (f"Q One?\nReference OCR token: x, y\n{SUFFIX}", "q one?"),
    (f"Reference OCR token: x, y\nQ Two?\n{SUFFIX}", "q two?"),
    (f"Q Three?\n{SUFFIX}", "q three?"),
])
def test_prompt_to_question(prompt, question):
    assert eval_textvqa.prompt_to_question(prompt) == question


def test_prompt_to_question_rejects_other_layouts():
    with pytest.raises(ValueError, match="4 lines"):
        eval_textvqa.prompt_to_question("a\nb\nc\nd")


def test_real_prompts_recover_question(shared_dir):
    base = shared_dir / "llava-eval" / "textvqa"
    questions = read_jsonl(base / "llava_textvqa_val_v051_ocr.jsonl")
    answers = read_jsonl(base / "answers" / "llava-v1.5-13b.jsonl")
    assert len(questions) == len(answers) == 5000
    keys = set()
    for q, a in zip(questions, answers):
        assert a["question_id"] == q["question_id"] and a["prompt"] == q["text"]
        lines = a["prompt"].split("\n")
        assert len(lines) == 3 and lines[1].startswith("Reference OCR token: ")
        question = eval_textvqa.prompt_to_question(a["prompt"])
        assert question == lines[0].lower()
        assert "reference ocr token" not in question and question
        keys.add((a["question_id"], question))
    # question_id is the image id (3,166 images), but (image id, question) is unique
    assert len(keys) == 5000 and len({a["question_id"] for a in answers}) == 3166


def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_duplicate_answer_is_refused(files):
    ann, res = files
    with open(res, "a") as f:  # a second copy of the first (right) answer would be counted twice
        f.write(json.dumps(_answer("img1", "What brand is this?", "Coca Cola.")) + "\n")
    with pytest.raises(InputError, match=r"answers\.jsonl:4: duplicate answer to question 'what brand is this\?' "
                                         r"of image 'img1' \(first at line 1\)"):
        eval_textvqa.evaluate(str(ann), str(res))


def test_missing_answers_need_allow_partial(files, tmp_path, capsys):
    ann, res = files
    _lines(res, [_answer("img2", "How many cans?", "2"), _answer("img1", "What does the sign say?", "Stop")])
    with pytest.raises(InputError, match=r"answers\.jsonl: 1 of 3 questions have no answer, e\.g\. "
                                         r"\('img1', 'what brand is this\?'\)"):
        eval_textvqa.main(["--annotation-file", str(ann), "--result-file", str(res)])
    score = tmp_path / "score.json"
    eval_textvqa.main(["--annotation-file", str(ann), "--result-file", str(res), "--allow-partial",
                       "--score-file", str(score)])
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["Samples: 2", "Accuracy: 65.00%"]  # (1.0 + 0.3) / 2
    assert "PARTIAL score: 1 of 3 questions" in captured.err
    rec = read_json(score)
    assert rec["partial"] == {"answered": 2, "expected": 3, "missing": 1}
    assert rec["score"] == pytest.approx(100 * (1.0 + 0.3) / 2)


def test_question_file_sets_the_expected_questions(files, tmp_path):
    ann, res = files
    # LLaVA's question file asks only two of the three annotated questions: answering them is complete.
    qfile = _lines(tmp_path / "questions.jsonl", [
        {"question_id": "img2", "text": f"How many cans?\nReference OCR token: 2\n{SUFFIX}"},
        {"question_id": "img1", "text": f"What does the sign say?\nReference OCR token: STOP\n{SUFFIX}"}])
    two = _lines(tmp_path / "two.jsonl", [_answer("img1", "What does the sign say?", "Stop"),
                                          _answer("img2", "How many cans?", "2")])
    assert eval_textvqa.evaluate(str(ann), str(two), str(qfile)) == (2, pytest.approx(65.0), None)
    with pytest.raises(InputError, match=r"answers\.jsonl:1: question 'what brand is this\?' of image 'img1' "
                                         r"is not in .*questions\.jsonl"):
        eval_textvqa.evaluate(str(ann), str(res), str(qfile))
    with open(qfile, "a") as f:
        f.write(json.dumps({"question_id": "img9", "text": f"Who?\n{SUFFIX}"}) + "\n")
    with pytest.raises(InputError, match=r"questions\.jsonl: 1 question\(s\) have no annotation .*'img9'"):
        eval_textvqa.evaluate(str(ann), str(two), str(qfile))


def test_score_file_carries_the_run_manifest(files, tmp_path):
    ann, res = files
    manifest = attach_manifest(Path(res))
    score = tmp_path / "score.json"
    eval_textvqa.main(["--annotation-file", str(ann), "--result-file", str(res), "--score-file", str(score)])
    rec = read_json(score)
    assert rec["manifest"] == manifest and rec["answers_file"] == str(res) and rec["partial"] is None


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(text=None), r"answers\.jsonl:2: 'text' must be a string"),
    (lambda a: a.update(prompt=["x"]), r"answers\.jsonl:2: 'question_id' and 'prompt' must be strings"),
    (lambda a: a.update(question_id=7), r"answers\.jsonl:2: 'question_id' and 'prompt' must be strings"),
    (lambda a: a.pop("prompt"), r"answers\.jsonl:2: missing key\(s\) prompt"),
])
def test_bad_answer_lines_are_named(files, change, message):
    ann, res = files
    rows = read_jsonl(res)
    change(rows[1])
    _lines(res, rows)
    with pytest.raises(InputError, match=message):
        eval_textvqa.evaluate(str(ann), str(res))


def test_bad_annotations_are_named(files):
    ann, res = files
    doc = read_json(ann)
    doc["data"][2]["answers"] = ["go"] * 9 + [None]
    ann.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"data\[2\]: 'answers' must be a list of 10 strings"):
        eval_textvqa.evaluate(str(ann), str(res))
    doc["data"][2] = dict(doc["data"][0], question="WHAT BRAND IS THIS?")
    ann.write_text(json.dumps(doc))
    with pytest.raises(InputError,
                       match=r"data\[2\]: question 'what brand is this\?' of image 'img1' repeats data\[0\]"):
        eval_textvqa.evaluate(str(ann), str(res))


def test_cli_errors_are_one_line(tmp_path):
    stderr = cli_error("llava.eval.eval_textvqa", "--annotation-file", str(tmp_path / "nope.json"), "--result-file",
                       str(tmp_path / "a.jsonl"))
    assert stderr.startswith(f"error: {tmp_path / 'nope.json'}: file not found")


def test_score_refuses_an_edited_manifest_or_lines_of_another_run(files, tmp_path):
    ann, res = files
    manifest = attach_manifest(Path(res))
    manifest_file = Path(str(res) + ".manifest.json")
    argv = ["--annotation-file", str(ann), "--result-file", str(res), "--score-file", str(tmp_path / "score.json")]
    edited = {**manifest, "settings": {"visual_token_num": 144}}
    manifest_file.write_text(json.dumps(edited))
    with pytest.raises(InputError, match="no longer matches its fingerprint"):
        eval_textvqa.main(argv)
    attach_manifest(Path(res))
    rows = read_jsonl(res)
    rows[1]["metadata"]["manifest"] = "0" * 16
    _lines(res, rows)
    for args in (argv, argv[:4]):  # with and without a score file
        with pytest.raises(InputError, match=r"answers.jsonl:2: made by another run"):
            eval_textvqa.main(args)
    assert not (tmp_path / "score.json").exists()
