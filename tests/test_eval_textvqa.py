import json

import pytest

from llava.eval import eval_textvqa
from llava.eval.utils import InputError, read_json, read_jsonl

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
