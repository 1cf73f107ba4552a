"""Convert MM-Vet answers to the grader's input, ``{"v1_<question_id>": text}`` (scorers.md §11).

    python -m llava.eval.convert_mmvet_for_eval --src answers.jsonl --dst results.json
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from llava.eval.utils import InputError, iter_jsonl, require_keys


def convert(src: str | os.PathLike) -> dict[str, str]:
    """Map ``v1_<question_id>`` -> model text, in answer-file order."""
    results: dict[str, str] = {}
    for lineno, obj in iter_jsonl(src):
        where = f"{src}:{lineno}"
        require_keys(obj, ("question_id", "text"), where)
        qid, text = obj["question_id"], obj["text"]
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise InputError(f"{where}: question_id must be an integer, got {qid!r}")
        if not isinstance(text, str):
            raise InputError(f"{where}: text must be a string")
        key = f"v1_{qid}"
        if key in results:
            raise InputError(f"{where}: duplicate question_id {qid}")
        results[key] = text
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
