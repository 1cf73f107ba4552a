import json

import pytest

from llava.eval import convert_vizwiz_for_submission as conv
from llava.eval.utils import InputError, read_json
from conftest import cli_error

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
                       {"question_id": 1, "text": "Two"}])
    out = tmp_path / "upload.json"
    conv.main(["--annotation-file", str(questions), "--result-file", str(res), "--result-upload-file", str(out)])
    assert read_json(out) == [{"image": "VizWiz_test_00000000.jpg", "answer": "can of coke"},
                              {"image": "VizWiz_test_00000001.jpg", "answer": "2"},
                              {"image": "VizWiz_test_00000002.jpg", "answer": "unanswerable"}]
    assert "questions: 3" in capsys.readouterr().out


def test_missing_answers_are_listed(questions, tmp_path, capsys):
    res = tmp_path / "answers.jsonl"
    _write_lines(res, [{"question_id": 1, "text": "x"}])
    with pytest.raises(InputError, match=r"answers\.jsonl: 2 of 3 questions have no answer, e\.g\. 0, 2 "):
        conv.convert(str(questions), str(res))
    out = tmp_path / "upload.json"
    conv.main(["--annotation-file", str(questions), "--result-file", str(res), "--result-upload-file", str(out),
               "--allow-partial"])
    assert "PARTIAL upload: 2 of 3 questions are unanswered" in capsys.readouterr().out
    assert [u["answer"] for u in read_json(out)] == ["", "x", ""]


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


@pytest.mark.parametrize("line, message", [
    ({"question_id": 0, "text": "Pepsi"}, r"answers\.jsonl:4: duplicate answer for question_id 0 \(first at line 1\)"),
    ({"question_id": 7, "text": "extra"}, r"answers\.jsonl:4: question_id 7 is not in .*llava_test\.jsonl"),
    ({"question_id": [1], "text": "x"}, r"answers\.jsonl:4: question_id must be an integer or a string"),
    ({"question_id": 1, "text": 2}, r"answers\.jsonl:4: 'text' must be a string"),
])
def test_bad_answer_lines_are_named(questions, tmp_path, line, message):
    """A conflicting duplicate used to overwrite the first answer; unknown ids were ignored."""
    res = tmp_path / "answers.jsonl"
    _write_lines(res, [{"question_id": i, "text": "x"} for i in range(3)] + [line])
    with pytest.raises(InputError, match=message):
        conv.convert(str(questions), str(res))


def test_duplicate_question_is_named(questions, tmp_path):
    with open(questions, "a") as f:
        f.write(json.dumps({"question_id": 1, "image": "VizWiz_test_00000009.jpg"}) + "\n")
    with pytest.raises(InputError, match=r"llava_test\.jsonl:4: duplicate question_id 1 \(first at line 2\)"):
        conv.load_questions(str(questions))


def test_upload_bytes_escape_non_ascii(questions, tmp_path):
    res = tmp_path / "answers.jsonl"
    _write_lines(res, [{"question_id": 0, "text": "Café"}, {"question_id": 1, "text": "日本"},
                       {"question_id": 2, "text": "Unanswerable"}])
    out = tmp_path / "upload.json"
    conv.main(["--annotation-file", str(questions), "--result-file", str(res), "--result-upload-file", str(out)])
    # json.dump defaults, as upstream: \u escapes, ", " and ": ", no trailing newline.
    assert out.read_bytes() == (b'[{"image": "VizWiz_test_00000000.jpg", "answer": "caf\\u00e9"}, '
                                b'{"image": "VizWiz_test_00000001.jpg", "answer": "\\u65e5\\u672c"}, '
                                b'{"image": "VizWiz_test_00000002.jpg", "answer": "unanswerable"}]')


def test_cli_errors_are_one_line(questions, tmp_path):
    res = tmp_path / "answers.jsonl"
    _write_lines(res, [{"question_id": 0, "text": "x"}])
    stderr = cli_error("llava.eval.convert_vizwiz_for_submission", "--annotation-file", str(questions),
                       "--result-file", str(res), "--result-upload-file", str(tmp_path / "u.json"))
    assert stderr.startswith(f"error: {res}: 2 of 3 questions have no answer")
