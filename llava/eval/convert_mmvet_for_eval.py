"""Convert MM-Vet answers to the grader's input, ``{"v1_<question_id>": text}`` (scorers.md §11).

    python -m llava.eval.convert_mmvet_for_eval --src answers.jsonl --dst results.json \
        [--question-file llava-mm-vet.jsonl]

Each question is answered once. With ``--question-file`` the answers must cover its questions
(``--allow-partial`` writes the answered ones and says the file is partial); without it, completeness
cannot be checked and a note says so.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from llava.eval.provenance import check_answers
from llava.eval.utils import (ArgumentParser, InputError, add_allow_partial, check_coverage, cli, iter_jsonl,
                              read_answer_texts, require_keys)


def convert(src: str | os.PathLike) -> dict[str, str]:
    """Map ``v1_<question_id>`` -> model text, in answer-file order."""
    results = {f"v1_{qid}": text for qid, text in read_answer_texts(src, integer_ids=True).items()}
    if not results:
        raise InputError(f"{src}: no answers")
    return results


def question_keys(question_file: str | os.PathLike) -> list[str]:
    """The ``v1_<question_id>`` keys of LLaVA's MM-Vet question file."""
    keys = []
    for lineno, q in iter_jsonl(question_file):
        where = f"{question_file}:{lineno}"
        require_keys(q, ("question_id",), where)
        if not isinstance(q["question_id"], int) or isinstance(q["question_id"], bool):
            raise InputError(f"{where}: question_id must be an integer, got {q['question_id']!r}")
        keys.append(f"v1_{q['question_id']}")
    if not keys:
        raise InputError(f"{question_file}: no questions")
    return keys


def write_results(dst: str | os.PathLike, results: dict[str, str]) -> None:
    """Write with ASCII escapes and no trailing newline, byte-identical to LLaVA's own result files."""
    path = Path(dst)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="LLaVA MM-Vet answer file (JSON-lines)")
    parser.add_argument("--dst", required=True, help="output JSON for the MM-Vet grader / HF Space")
    parser.add_argument("--question-file", help="llava-mm-vet.jsonl: the questions that must all be answered")
    add_allow_partial(parser)
    args = parser.parse_args(argv)
    check_answers(args.src)
    results = convert(args.src)
    if args.question_file:
        expected = question_keys(args.question_file)
        partial = check_coverage(expected, results, args.src, args.allow_partial)
        if partial:
            print(f"PARTIAL results: {partial['missing']} of {partial['expected']} questions are unanswered "
                  "(left out of the file)")
    else:
        print("note: not checked against the question set (pass --question-file to check completeness)",
              file=sys.stderr)
    write_results(args.dst, results)
    print(f"Wrote {len(results)} answers to {args.dst}")


if __name__ == "__main__":
    cli(main)
