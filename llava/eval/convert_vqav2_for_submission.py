"""Convert merged VQAv2 answers into the EvalAI upload file (scorers.md §3).

    python -m llava.eval.convert_vqav2_for_submission --test-file llava_vqav2_mscoco_test2015.jsonl \
        --src merge.jsonl --dst upload.json

The server asserts that the result ids equal the full test2015 id set, so every test question
gets an entry; unanswered ones get "".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from llava.eval.m4c_evaluator import EvalAIAnswerProcessor
from llava.eval.utils import InputError, iter_jsonl, require_keys, write_json


def read_answers(path: str) -> tuple[dict[int, str], list[int]]:
    """Map question_id -> text; return also the line numbers that could not be used.

    As in LLaVA, a bad line (e.g. one cut short by a crashed worker) is skipped, not fatal.
    """
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    answers, bad = {}, []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj["text"], str):
                    raise TypeError
                answers[obj["question_id"]] = obj["text"]
            except (ValueError, TypeError, KeyError):  # ValueError covers JSONDecodeError
                bad.append(lineno)
    return answers, bad


def convert(test_file: str, src: str) -> tuple[list[dict], list[int], int]:
    """Return (upload entries, unusable src line numbers, number of unanswered questions)."""
    answers, bad = read_answers(src)
    process = EvalAIAnswerProcessor()
    upload, missing = [], 0
    for lineno, q in iter_jsonl(test_file):
        require_keys(q, ("question_id",), f"{test_file}:{lineno}")
        qid = q["question_id"]
        if not isinstance(qid, int):
            raise InputError(f"{test_file}:{lineno}: question_id must be an integer, got {qid!r}")
        missing += qid not in answers
        upload.append({"question_id": qid, "answer": process(answers[qid]) if qid in answers else ""})
    return upload, bad, missing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-file", required=True, help="llava_vqav2_mscoco_test2015.jsonl (all test questions)")
    parser.add_argument("--src", required=True, help="merged LLaVA answer file (JSON-lines)")
    parser.add_argument("--dst", required=True, help="output upload JSON for EvalAI")
    args = parser.parse_args(argv)
    upload, bad, missing = convert(args.test_file, args.src)
    print(f"test questions: {len(upload)}, answered: {len(upload) - missing}, unanswered: {missing}, "
          f"unparsable src lines: {len(bad)}")
    if bad:
        print(f"unparsable lines in {args.src}: {', '.join(map(str, bad))}")
    write_json(args.dst, upload)


if __name__ == "__main__":
    main()
