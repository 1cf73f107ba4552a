"""MM-Vet answers -> grader input JSON."""
from __future__ import annotations

import json

import pytest

from llava.eval import convert_mmvet_for_eval as conv
from llava.eval.utils import InputError
from conftest import cli_error


@pytest.mark.parametrize("model", ["llava-v1.5-13b", "llava-v1.5-7b"])
def test_reproduces_llava_results(shared_dir, tmp_path, model):
    src = shared_dir / f"llava-eval/mm-vet/answers/{model}.jsonl"
    ref = shared_dir / f"llava-eval/mm-vet/results/{model}.json"
    dst = tmp_path / "out" / f"{model}.json"
    conv.main(["--src", str(src), "--dst", str(dst),
               "--question-file", str(shared_dir / "llava-eval/mm-vet/llava-mm-vet.jsonl")])
    ours = json.loads(dst.read_text())
    expected = json.loads(ref.read_text())
    assert len(ours) == 218
    assert list(ours.items()) == list(expected.items())      # same keys, text and key order
    assert dst.read_bytes() == ref.read_bytes()              # and byte-identical (ASCII escapes, indent 2)


def test_small_file(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"question_id": 3, "text": "350\\u00b0F"}\n\n{"question_id": 0, "text": "x"}\n')
    assert conv.convert(src) == {"v1_3": "350°F", "v1_0": "x"}


@pytest.mark.parametrize("line, message", [
    ('{"question_id": 0}', r"a.jsonl:2: missing key\(s\) text"),
    ('{"question_id": "0", "text": "x"}', r"a.jsonl:2: question_id must be an integer"),
    ('{"question_id": 1, "text": null}', r"a.jsonl:2: text must be a string"),
    ('{"question_id": 0, "text": "y"}', r"a.jsonl:2: duplicate question_id 0"),
])
def test_bad_lines(tmp_path, line, message):
    src = tmp_path / "a.jsonl"
    src.write_text('{"question_id": 0, "text": "x"}\n' + line + "\n")
    with pytest.raises(InputError, match=message):
        conv.convert(src)


def test_empty_file(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text("\n")
    with pytest.raises(InputError, match="no answers"):
        conv.convert(src)


def test_question_file_sets_the_expected_answers(tmp_path, capsys):
    questions = tmp_path / "llava-mm-vet.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "image": f"v1_{i}.png", "text": "Q?"}) + "\n"
                                 for i in range(3)))
    src, dst = tmp_path / "a.jsonl", tmp_path / "results.json"
    src.write_text('{"question_id": 2, "text": "x"}\n{"question_id": 0, "text": "y"}\n')
    args = ["--src", str(src), "--dst", str(dst), "--question-file", str(questions)]
    with pytest.raises(InputError, match=r"a\.jsonl: 1 of 3 questions have no answer, e\.g\. 'v1_1'"):
        conv.main(args)
    assert not dst.exists()
    conv.main(args + ["--allow-partial"])
    assert "PARTIAL results: 1 of 3 questions are unanswered" in capsys.readouterr().out
    assert json.loads(dst.read_text()) == {"v1_2": "x", "v1_0": "y"}
    src.write_text('{"question_id": 2, "text": "x"}\n{"question_id": 7, "text": "y"}\n')
    with pytest.raises(InputError,
                       match=r"a\.jsonl: 1 answer\(s\) to questions not in the question set, e\.g\. 'v1_7'"):
        conv.main(args + ["--allow-partial"])
    conv.main(["--src", str(src), "--dst", str(dst)])
    assert "not checked against the question set" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"question_id": 0, "text": "x"}\n{"question_id": 0, "text": "y"}\n')
    stderr = cli_error("llava.eval.convert_mmvet_for_eval", "--src", str(src), "--dst", str(tmp_path / "r.json"))
    assert stderr.startswith(f"error: {src}:2: duplicate question_id 0")
