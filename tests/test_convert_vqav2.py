import json

import pytest

from llava.eval import convert_vqav2_for_submission as conv
from llava.eval.utils import InputError, read_json

SUFFIX = "\nAnswer the question using a single word or phrase."


def _write_lines(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


@pytest.fixture
def files(tmp_path):
    test = tmp_path / "llava_vqav2_mscoco_test2015.jsonl"
    _write_lines(test, [{"question_id": qid, "image": f"COCO_test2015_{qid // 1000:012d}.jpg",
                         "text": "Q?" + SUFFIX, "category": "default"} for qid in (262144000, 262144001, 262144002, 5)])
    src = tmp_path / "merge.jsonl"
    _write_lines(src, [
        {"question_id": 262144002, "prompt": "Q?" + SUFFIX, "text": "Two dogs.", "answer_id": "a", "metadata": {}},
        '{"question_id": 262144000, "text": "Yes',  # cut short by a crashed worker
        {"question_id": 262144000, "prompt": "Q?", "text": "The man's hat"},
        {"question_id": 999, "text": "not in the test split"},
        {"question_id": 5},  # no text
        "",
    ])
    return test, src


def test_converts_all_test_questions(files, tmp_path, capsys):
    test, src = files
    dst = tmp_path / "out" / "upload.json"
    conv.main(["--test-file", str(test), "--src", str(src), "--dst", str(dst)])
    assert read_json(dst) == [
        {"question_id": 262144000, "answer": "man 's hat"},
        {"question_id": 262144001, "answer": ""},
        {"question_id": 262144002, "answer": "2 dogs"},
        {"question_id": 5, "answer": ""},
    ]
    out = capsys.readouterr().out
    assert "test questions: 4, answered: 2, unanswered: 2, unparsable src lines: 2" in out
    assert f"unparsable lines in {src}: 2, 5" in out


def test_test_file_errors_name_the_line(files, tmp_path):
    test, src = files
    with open(test, "a") as f:
        f.write(json.dumps({"question_id": "7"}) + "\n")
    with pytest.raises(InputError, match=r"test2015\.jsonl:5: question_id must be an integer"):
        conv.convert(str(test), str(src))
    with pytest.raises(InputError, match="file not found"):
        conv.convert(str(test), str(tmp_path / "nope.jsonl"))
