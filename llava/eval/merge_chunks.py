"""Concatenate per-GPU answer chunks, in chunk order, into one file (``merge.jsonl``).

Every line must parse and no question may be answered twice, so a broken shard is caught here and
not by a scorer later.
"""
from __future__ import annotations

import argparse
import json

from llava.eval.utils import InputError, iter_jsonl, write_jsonl


def merge(chunks: list[str], out: str) -> int:
    rows, seen = [], {}
    for path in chunks:
        for lineno, obj in iter_jsonl(path):
            key = json.dumps([obj.get("question_id", obj.get("id")), obj.get("round_id"), obj.get("prompt")])
            if key in seen:
                raise InputError(f"{path}:{lineno}: question answered twice (first at {seen[key]})")
            seen[key] = f"{path}:{lineno}"
            rows.append(obj)
    write_jsonl(out, rows)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("chunks", nargs="+", help="chunk files, in order (e.g. 2_0.jsonl 2_1.jsonl)")
    parser.add_argument("--out", required=True, help="merged answers file to write")
    args = parser.parse_args(argv)
    print(f"merged {merge(args.chunks, args.out)} answers into {args.out}")


if __name__ == "__main__":
    main()
