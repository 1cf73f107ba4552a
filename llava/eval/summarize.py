"""Collect per-benchmark scores into a table like the paper's Table 1 (upstream-behaviour.md §9).

    python -m llava.eval.summarize --eval-dir playground/data/eval --ckpt llava-v1.5-7b \\
        --set vqav2@576=78.52 vqav2@58=71.92

Scores come from the files scorers write with ``--score-file``, at
``<eval-dir>/<bench-folder>/scores/<ckpt>/<method>/n_<T>.json``, plus ``--set`` values for
server-scored benchmarks. "Average %" is the mean over benchmarks of score / baseline × 100.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import numbers
import os
import sys
from pathlib import Path

from llava.eval.utils import BENCHMARKS, InputError, read_json

# Folder of each benchmark under playground/data/eval, as the eval scripts use them (not EVAL.md's).
BENCH_FOLDERS = {
    "vqav2": "vqav2", "gqa": "gqa", "vizwiz": "vizwiz", "sqa_img": "sqa", "textvqa": "textvqa",
    "pope": "pope", "mme": "MME", "mmb": "mmbench", "mmb_cn": "mmbench_cn", "mmvet": "mm-vet",
}
HEADERS = {
    "vqav2": "VQAv2", "gqa": "GQA", "vizwiz": "VizWiz", "sqa_img": "SQA-IMG", "textvqa": "TextVQA",
    "pope": "POPE", "mme": "MME", "mmb": "MMB", "mmb_cn": "MMB-CN", "mmvet": "MM-Vet",
}
DEFAULT_TOKENS = (576, 432, 288, 144, 58, 29, 0)

Scores = dict[int, dict[str, float]]  # tokens -> benchmark -> score


def score_path(eval_dir: str | os.PathLike, bench: str, ckpt: str, method: str, tokens: int) -> Path:
    """Where a scorer's ``--score-file`` for one benchmark and token count is expected."""
    return Path(eval_dir) / BENCH_FOLDERS[bench] / "scores" / ckpt / method / f"n_{tokens}.json"


def read_score(path: Path, bench: str) -> float:
    """The ``score`` of one ``write_score`` file, checked to belong to ``bench``."""
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("benchmark") != bench:
        raise InputError(f"{path}: expected a score file for benchmark {bench!r}")
    score = doc.get("score")
    if not isinstance(score, numbers.Real) or isinstance(score, bool) or not math.isfinite(score):
        raise InputError(f"{path}: 'score' must be a finite number, got {score!r}")
    return float(score)


def load_scores(eval_dir: str | os.PathLike, ckpt: str, method: str, tokens: list[int]) -> Scores:
    """All score files that exist for the given token counts; absent files are simply missing."""
    scores: Scores = {t: {} for t in tokens}
    for t in tokens:
        for bench in BENCHMARKS:
            path = score_path(eval_dir, bench, ckpt, method, t)
            if path.is_file():
                scores[t][bench] = read_score(path, bench)
    return scores


def parse_set(item: str) -> tuple[str, int, float]:
    """Parse ``bench@tokens=value`` (e.g. ``vqav2@58=75.1``)."""
    try:
        key, value = item.split("=", 1)
        bench, tokens = key.split("@", 1)
        parsed = bench, int(tokens), float(value)
    except ValueError:
        raise InputError(f"--set {item!r}: expected bench@tokens=value, e.g. vqav2@58=75.1") from None
    if bench not in BENCHMARKS:
        raise InputError(f"--set {item!r}: unknown benchmark {bench!r} (one of {', '.join(BENCHMARKS)})")
    if not math.isfinite(parsed[2]):
        raise InputError(f"--set {item!r}: value must be a finite number")
    return parsed


def average_pct(row: dict[str, float], baseline: dict[str, float]) -> float:
    """Mean over the benchmarks present in both of ``row[b] / baseline[b] × 100``."""
    common = [b for b in row if b in baseline]
    if not common:
        raise ValueError("no benchmark present in both the row and the baseline")
    for b in common:
        if baseline[b] == 0:
            raise ValueError(f"baseline score of {b} is 0")
    return sum(row[b] / baseline[b] for b in common) / len(common) * 100


def table(scores: Scores, tokens: list[int], baseline_tokens: int) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, one row of cells per token count, and notes on missing benchmarks.

    Missing cells show "-"; a row's average covers only benchmarks that it and the baseline both have.
    """
    baseline = scores.get(baseline_tokens, {})
    header = ["Tokens", *(HEADERS[b] for b in BENCHMARKS), "Average %"]
    rows, notes = [], []
    for t in tokens:
        row = scores.get(t, {})
        cells = [str(t), *(f"{row[b]:.2f}" if b in row else "-" for b in BENCHMARKS)]
        used = [b for b in BENCHMARKS if b in row and b in baseline]
        cells.append(f"{average_pct(row, baseline):.2f}" if used else "-")
        rows.append(cells)
        missing = [b for b in BENCHMARKS if b not in used]
        if not row:
            notes.append(f"n_{t}: no scores")
        elif missing:
            gaps = [f"{b} ({'no score' if b not in row else 'no baseline'})" for b in missing]
            notes.append(f"n_{t}: average over {len(used)}/{len(BENCHMARKS)} benchmarks; missing {', '.join(gaps)}")
    return header, rows, notes


def render(header: list[str], rows: list[list[str]], fmt: str) -> str:
    """The table as Markdown or CSV text."""
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header, *rows])
        return buf.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", default="playground/data/eval", help="root holding the per-benchmark folders")
    parser.add_argument("--ckpt", required=True, help="checkpoint name, e.g. llava-v1.5-7b")
    parser.add_argument("--method", default="fastervlm", help="pruning method folder name")
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS),
                        help="visual token counts to list, one row each")
    parser.add_argument("--baseline-tokens", type=int, default=576,
                        help="token count of the unpruned run that Average %% is relative to")
    parser.add_argument("--set", nargs="+", default=[], metavar="BENCH@TOKENS=VALUE",
                        help="manual scores for server-scored benchmarks; override score files")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="output format")
    args = parser.parse_args(argv)
    tokens = list(dict.fromkeys([*args.tokens, args.baseline_tokens]))
    scores = load_scores(args.eval_dir, args.ckpt, args.method, tokens)
    for item in args.set:
        try:
            bench, t, value = parse_set(item)
        except InputError as e:
            parser.error(str(e))
        scores.setdefault(t, {})[bench] = value
    header, rows, notes = table(scores, args.tokens, args.baseline_tokens)
    print(render(header, rows, args.format), end="")
    # Notes go to stderr in CSV mode so the CSV stays machine-readable.
    if notes:
        print("\n" + "\n".join(notes), file=sys.stderr if args.format == "csv" else sys.stdout)


if __name__ == "__main__":
    main()
