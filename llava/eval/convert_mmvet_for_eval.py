"""Convert MM-Vet answers to the grader's input, ``{"v1_<question_id>": text}`` (scorers.md §11).

    python -m llava.eval.convert_mmvet_for_eval --src answers.jsonl --dst results.json
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from llava.eval.utils import InputError, read_answer_texts


def convert(src: str | os.PathLike) -> dict[str, str]:
    """Map ``v1_<question_id>`` -> model text, in answer-file order."""
    results = {f"v1_{qid}": text for qid, text in read_answer_texts(src, integer_ids=True).items()}
    if not results:
        raise InputError(f"{src}: no answers")
    return results


def write_results(dst: str | os.PathLike, results: dict[str, str]) -> None:
    """Write with ASCII escapes and no trailing newline, byte-identical to LLaVA's own result files."""
    path = Path(dst)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="LLaVA MM-Vet answer file (JSON-lines)")
    parser.add_argument("--dst", required=True, help="output JSON for the MM-Vet grader / HF Space")
    args = parser.parse_args(argv)
    results = convert(args.src)
    write_results(args.dst, results)
    print(f"Wrote {len(results)} answers to {args.dst}")


if __name__ == "__main__":
    main()
