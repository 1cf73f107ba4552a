import json

import pytest

from llava.eval import convert_vizwiz_for_submission as conv
from llava.eval.utils import InputError, read_json

SUFFIX = ("\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
          "Answer the question using a single word or phrase.")


def _write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "llava_test.jsonl"
    _write_lines(path, [{"question_id": i, "image": f"VizWiz_test_{i:08d}.jpg", "text": "What is this?" + SUFFIX,
                         "category": "default"} for i in range(3)])
    return path


def test_question_order_and_processing(questions, tmp_path, capsys):
    res = tmp_path / "answers.jsonl"
    _write_lines(res, [{"question_id": 2, "text": "Unanswerable"}, {"question_id": 0, "text": "A can of Coke."},
                       {"question_id": 1, "text": "Two"}, {"question_id": 7, "text": "extra"}])
    out = tmp_path / "upload.json"
    conv.main(["--annotation-file", str(questions), "--result-file", str(res), "--result-upload-file", str(out)])
    assert read_json(out) == [{"image": "VizWiz_test_00000000.jpg", "answer": "can of coke"},
                              {"image": "VizWiz_test_00000001.jpg", "answer": "2"},
                              {"image": "VizWiz_test_00000002.jpg", "answer": "unanswerable"}]
    assert "questions: 3" in capsys.readouterr().out


def test_missing_answers_are_listed(questions, tmp_path):
    res = tmp_path / "answers.jsonl"
    _write_lines(res, [{"question_id": 1, "text": "x"}])
    with pytest.raises(InputError, match=r"2 of 3 questions .* no answer: 0, 2$"):
        conv.convert(str(questions), str(res))


def test_reproduces_llava_upload_file(shared_dir, tmp_path):
    base = shared_dir / "llava-eval" / "vizwiz"
    out = tmp_path / "upload.json"
    conv.main(["--annotation-file", str(base / "llava_test.jsonl"),
               "--result-file", str(base / "answers" / "llava-v1.5-13b.jsonl"), "--result-upload-file", str(out)])
    expected = base / "answers_upload" / "llava-v1.5-13b.json"
    upload = read_json(out)
    assert len(upload) == 8000 and sum(x["answer"] == "unanswerable" for x in upload) == 2361
    assert upload == read_json(expected)
    assert out.read_bytes() == expected.read_bytes()  # byte-for-byte, as json.dump writes it
