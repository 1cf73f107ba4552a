import json

import pytest

from llava.eval import convert_vqav2_for_submission as conv
from llava.eval.utils import InputError, read_json
from conftest import cli_error

SUFFIX = "\nAnswer the question using a single word or phrase."
TEST_DEV = (262144000, 262144001, 262144002)


def _write_lines(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _questions(path, qids):
    return _write_lines(path, [{"question_id": qid, "image": f"COCO_test2015_{qid // 1000:012d}.jpg",
                                "text": "Q?" + SUFFIX, "category": "default"} for qid in qids])


@pytest.fixture
def files(tmp_path):
    """test2015 (four questions) with the test-dev file beside it (three of them) and answers to test-dev."""
    test = _questions(tmp_path / "llava_vqav2_mscoco_test2015.jsonl", (*TEST_DEV, 5))
    _questions(tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl", TEST_DEV)
    src = _write_lines(tmp_path / "merge.jsonl", [
        {"question_id": 262144002, "prompt": "Q?" + SUFFIX, "text": "Two dogs.", "answer_id": "a", "metadata": {}},
        {"question_id": 262144000, "prompt": "Q?", "text": "The man's hat"},
        {"question_id": 262144001, "prompt": "Q?", "text": "Café"},
        "",
    ])
    return test, src


def test_converts_all_test_questions(files, tmp_path, capsys):
    test, src = files
    dst = tmp_path / "out" / "upload.json"
    conv.main(["--test-file", str(test), "--src", str(src), "--dst", str(dst)])
    assert read_json(dst) == [
        {"question_id": 262144000, "answer": "man 's hat"},
        {"question_id": 262144001, "answer": "café"},
        {"question_id": 262144002, "answer": "2 dogs"},
        {"question_id": 5, "answer": ""},  # test2015 outside test-dev, filled as upstream does
    ]
    # json.dump defaults, as upstream: \u escapes, ", " and ": ", no trailing newline.
    assert dst.read_bytes() == (b'[{"question_id": 262144000, "answer": "man \'s hat"}, '
                                b'{"question_id": 262144001, "answer": "caf\\u00e9"}, '
                                b'{"question_id": 262144002, "answer": "2 dogs"}, {"question_id": 5, "answer": ""}]')
    assert "test questions: 4, answered: 3, empty: 1" in capsys.readouterr().out


def test_question_file_can_be_given(files, tmp_path):
    test, src = files
    elsewhere = _questions(tmp_path / "asked.jsonl", TEST_DEV[:2])
    with pytest.raises(InputError, match=r"merge\.jsonl:1: question_id 262144002 is not a test-dev question"):
        conv.main(["--test-file", str(test), "--question-file", str(elsewhere), "--src", str(src),
                   "--dst", str(tmp_path / "u.json")])
    (tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl").unlink()
    with pytest.raises(InputError, match=r"llava_vqav2_mscoco_test-dev2015\.jsonl: file not found"):
        conv.main(["--test-file", str(test), "--src", str(src), "--dst", str(tmp_path / "u.json")])


def test_gaps_need_allow_partial(files, tmp_path, capsys):
    test, src = files
    _write_lines(src, [{"question_id": 262144002, "text": "Two"}])
    dst = tmp_path / "upload.json"
    args = ["--test-file", str(test), "--src", str(src), "--dst", str(dst)]
    with pytest.raises(InputError, match=r"merge\.jsonl: 2 of 3 test-dev questions have no answer, "
                                         r"e\.g\. 262144000, 262144001"):
        conv.main(args)
    assert not dst.exists()
    conv.main(args + ["--allow-partial"])
    captured = capsys.readouterr()
    assert "PARTIAL upload: 2 of 3 test-dev questions are unanswered" in captured.out
    assert "PARTIAL score: 2 of 3 test-dev questions" in captured.err
    assert [u["answer"] for u in read_json(dst)] == ["", "", "2", ""]


@pytest.mark.parametrize("line, message", [
    ('{"question_id": 262144000, "text": "Yes', r"merge\.jsonl:5: malformed JSON line"),  # cut short by a crash
    ({"question_id": 262144000, "text": "No"}, r"merge\.jsonl:5: duplicate answer for question_id 262144000 "
                                               r"\(first at line 2\)"),
    ({"question_id": 999, "text": "x"}, r"merge\.jsonl:5: question_id 999 is not a test-dev question"),
    ({"question_id": 5, "text": "x"}, r"merge\.jsonl:5: question_id 5 is not a test-dev question"),
    ({"question_id": "262144000", "text": "x"}, r"merge\.jsonl:5: question_id '262144000' is not a test-dev"),
    ({"question_id": 262144000}, r"merge\.jsonl:5: missing key\(s\) text"),
    ({"question_id": 262144000, "text": None}, r"merge\.jsonl:5: 'text' must be a string"),
])
def test_bad_answer_lines_are_named(files, line, message):
    test, src = files
    with open(src, "a") as f:
        f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    with pytest.raises(InputError, match=message):
        conv.convert(str(test), str(src), str(test.with_name("llava_vqav2_mscoco_test-dev2015.jsonl")))


def test_test_file_errors_name_the_line(files, tmp_path):
    test, src = files
    dev = str(test.with_name("llava_vqav2_mscoco_test-dev2015.jsonl"))
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        conv.convert(str(test), str(tmp_path / "nope.jsonl"), dev)
    with open(test, "a") as f:
        f.write(json.dumps({"question_id": "7"}) + "\n")
    with pytest.raises(InputError, match=r"test2015\.jsonl:5: question_id must be an integer"):
        conv.convert(str(test), str(src), dev)
    _questions(test, TEST_DEV[1:])
    with pytest.raises(InputError,
                       match=r"test-dev2015\.jsonl: 1 question\(s\) not in .*test2015\.jsonl, e\.g\. 262144000"):
        conv.convert(str(test), str(src), dev)


def test_cli_errors_are_one_line(files, tmp_path):
    test, src = files
    with open(src, "a") as f:
        f.write(json.dumps({"question_id": 262144001, "text": "again"}) + "\n")
    stderr = cli_error("llava.eval.convert_vqav2_for_submission", "--test-file", str(test), "--src", str(src),
                       "--dst", str(tmp_path / "u.json"))
    assert stderr.startswith(f"error: {src}:5: duplicate answer for question_id 262144001 (first at line 3)")
