"""MM-Vet answers -> grader input JSON."""
from __future__ import annotations

import json

import pytest

from llava.eval import convert_mmvet_for_eval as conv
from llava.eval.utils import InputError


@pytest.mark.parametrize("model", ["llava-v1.5-13b", "llava-v1.5-7b"])
def test_reproduces_llava_results(shared_dir, tmp_path, model):
    src = shared_dir / f"llava-eval/mm-vet/answers/{model}.jsonl"
    ref = shared_dir / f"llava-eval/mm-vet/results/{model}.json"
    dst = tmp_path / "out" / f"{model}.json"
    conv.main(["--src", str(src), "--dst", str(dst)])
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
