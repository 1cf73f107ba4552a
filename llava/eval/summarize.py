"""Collect per-benchmark scores into a table like the paper's Table 1 (upstream-behaviour.md §9).

    python -m llava.eval.summarize --eval-dir playground/data/eval --ckpt llava-v1.5-7b \\
        --set vqav2@576=78.52 vqav2@58=71.92

Scores come from the files scorers write with ``--score-file``, at
``<eval-dir>/<bench-folder>/scores/<ckpt>/<method>/n_<T>.json``, plus ``--set`` values for
server-scored benchmarks. "Average %" is the mean over benchmarks of score / baseline × 100.

Every cell is checked against the run manifest its score file carries: cells whose runs differ in anything but
the token budget (and the benchmark's own task settings) are refused unless ``--allow-mixed``, and then marked;
partial scores, scores without a manifest and ``--set`` values are marked too, each explained below the table.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import numbers
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from llava.eval.provenance import check_manifest, differences
from llava.eval.utils import BENCHMARKS, ArgumentParser, InputError, cli, read_json

# Folder of each benchmark under playground/data/eval, as the eval scripts use them (not those of upstream's evaluation guide; docs/upstream-behaviour.md §10).
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


@dataclass
class Cell:
    """One score and how it was made: its score file's run manifest and partial mark (None for ``--set`` values)."""

    score: float
    path: Path | None = None
    manifest: dict | None = None
    partial: dict | None = None


def score_path(eval_dir: str | os.PathLike, bench: str, ckpt: str, method: str, tokens: int) -> Path:
    """Where a scorer's ``--score-file`` for one benchmark and token count is expected."""
    return Path(eval_dir) / BENCH_FOLDERS[bench] / "scores" / ckpt / method / f"n_{tokens}.json"


def read_cell(path: Path, bench: str) -> Cell:
    """One ``write_score`` file, checked to belong to ``bench``, with a whole, unedited manifest (or none) and a
    well-formed partial record."""
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("benchmark") != bench:
        raise InputError(f"{path}: expected a score file for benchmark {bench!r}")
    score = doc.get("score")
    if not isinstance(score, numbers.Real) or isinstance(score, bool) or not math.isfinite(score):
        raise InputError(f"{path}: 'score' must be a finite number, got {score!r}")
    manifest = doc.get("manifest")
    if manifest is not None:
        check_manifest(manifest, f"{path}: its run manifest")
    partial = doc.get("partial")
    if partial is not None and not (isinstance(partial, dict) and all(
            isinstance(partial.get(k), int) for k in ("answered", "expected"))):
        raise InputError(f"{path}: 'partial' must be null or {{\"answered\": N, \"expected\": M, ...}}, "
                         f"got {partial!r}")
    return Cell(float(score), path, manifest, partial)


def load_cells(eval_dir: str | os.PathLike, ckpt: str, method: str, tokens: list[int]) -> dict[int, dict[str, Cell]]:
    """All score files that exist for the given token counts; absent files are simply missing."""
    cells: dict[int, dict[str, Cell]] = {t: {} for t in tokens}
    for t in tokens:
        for bench in BENCHMARKS:
            path = score_path(eval_dir, bench, ckpt, method, t)
            if path.is_file():
                cells[t][bench] = read_cell(path, bench)
    return cells


def load_scores(eval_dir: str | os.PathLike, ckpt: str, method: str, tokens: list[int]) -> Scores:
    return {t: {b: c.score for b, c in row.items()} for t, row in load_cells(eval_dir, ckpt, method, tokens).items()}


def comparable(manifest: dict) -> dict:
    """What must be equal across the cells of one table: everything but the budget and the benchmark's own task
    (its question file, options and generation length)."""
    settings = copy.deepcopy(manifest["settings"])
    settings["pruning"].pop("visual_token_num", None)
    settings["decoding"].pop("max_new_tokens", None)
    settings.pop("task", None)
    return {"settings": settings, "environment": manifest["environment"]}


MARKS = {"partial": "*", "unrecorded": "?", "manual": "†", "mixed": "‡"}


def check_provenance(cells: dict[int, dict[str, Cell]], baseline_tokens: int, allow_mixed: bool
                     ) -> tuple[dict[tuple[int, str], str], list[str]]:
    """Marks per (tokens, bench) cell and the notes that explain them.

    The reference is the run configuration most cells share (ties: the baseline row's first). A cell made under
    other settings is an error unless ``allow_mixed``; under another environment only (versions, device) it is
    marked, as is every partial score, score without a manifest and ``--set`` value.
    """
    recorded = [(t, b, c) for t in dict.fromkeys([baseline_tokens, *cells]) for b, c in cells.get(t, {}).items()
                if c.manifest]
    groups: dict[str, list] = {}
    for entry in recorded:
        groups.setdefault(json.dumps(comparable(entry[2].manifest), sort_keys=True), []).append(entry)
    reference = max(groups.values(), key=len)[0] if groups else None
    marks: dict[tuple[int, str], str] = {}
    notes: list[str] = []
    for t, row in cells.items():
        for bench, cell in row.items():
            mark = ""
            if cell.path is None:
                mark += MARKS["manual"]
            elif cell.manifest is None:
                mark += MARKS["unrecorded"]
                notes.append(f"{MARKS['unrecorded']} n_{t} {bench}: {cell.path} records no run manifest")
            elif reference is not None:
                diffs = differences(comparable(reference[2].manifest), comparable(cell.manifest))
                if any(d.startswith("settings.") for d in diffs) and not allow_mixed:
                    raise InputError(f"{cell.path}: made under other settings than {reference[2].path}:\n  "
                                     + "\n  ".join(diffs) + "\npass --allow-mixed to show the table with such cells marked")
                if diffs:
                    mark += MARKS["mixed"]
                    notes.append(f"{MARKS['mixed']} n_{t} {bench}: differs from n_{reference[0]} {reference[1]} in "
                                 + "; ".join(diffs))
            if cell.partial:
                mark += MARKS["partial"]
                notes.append(f"{MARKS['partial']} n_{t} {bench}: PARTIAL, {cell.partial.get('answered')} of "
                             f"{cell.partial.get('expected')} questions scored")
            if mark:
                marks[t, bench] = mark
    if any(MARKS["manual"] in m for m in marks.values()):
        notes.append(f"{MARKS['manual']} entered with --set")
    return marks, notes


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


def table(scores: Scores, tokens: list[int], baseline_tokens: int, marks: dict[tuple[int, str], str] | None = None
          ) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, one row of cells per token count, and notes on missing benchmarks.

    Missing cells show "-"; a row's average covers only benchmarks that it and the baseline both have. ``marks``
    (from :func:`check_provenance`) follow their cell's number.
    """
    marks = marks or {}
    baseline = scores.get(baseline_tokens, {})
    header = ["Tokens", *(HEADERS[b] for b in BENCHMARKS), "Average %"]
    rows, notes = [], []
    for t in tokens:
        row = scores.get(t, {})
        cells = [str(t), *(f"{row[b]:.2f}{marks.get((t, b), '')}" if b in row else "-" for b in BENCHMARKS)]
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


def methods_table(eval_dir: str | os.PathLike, ckpt: str, methods: list[str], tokens: list[int], baseline_method: str,
                  baseline_tokens: int, allow_mixed: bool) -> tuple[list[str], list[list[str]], list[str]]:
    """Methods × budgets, as the papers' comparison tables: every row's Average % is relative to the one unpruned
    run (``baseline_method`` at ``baseline_tokens``). Each method's cells are checked against each other (their
    runs may differ only in the budget); the baseline's settings differ from theirs by the method, as they must."""
    baseline = {b: c.score for b, c in load_cells(eval_dir, ckpt, baseline_method, [baseline_tokens])[baseline_tokens].items()}
    if not baseline:
        raise InputError(f"no scores of the unpruned run ({baseline_method}/n_{baseline_tokens}) under {eval_dir}")
    budgets = [t for t in tokens if t != baseline_tokens]
    header = ["Method", *table({}, [], baseline_tokens)[0]]
    rows = [[f"unpruned ({baseline_method})", str(baseline_tokens),
             *(f"{baseline[b]:.2f}" if b in baseline else "-" for b in BENCHMARKS), "100.00"]]
    notes = []
    for method in methods:
        cells = load_cells(eval_dir, ckpt, method, budgets)
        marks, provenance = check_provenance(cells, budgets[0], allow_mixed)
        scores = {t: {b: c.score for b, c in row.items()} for t, row in cells.items()}
        _, method_rows, method_notes = table({**scores, baseline_tokens: baseline}, budgets, baseline_tokens, marks)
        rows += [[method, *r] for r in method_rows]
        notes += [f"{method} {n}" for n in method_notes + provenance]
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
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--eval-dir", default="playground/data/eval", help="root holding the per-benchmark folders")
    parser.add_argument("--ckpt", required=True, help="checkpoint name, e.g. llava-v1.5-7b")
    parser.add_argument("--method", default="fastervlm", help="pruning method folder name")
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS),
                        help="visual token counts to list, one row each")
    parser.add_argument("--baseline-tokens", type=int, default=576,
                        help="token count of the unpruned run that Average %% is relative to")
    parser.add_argument("--set", nargs="+", default=[], metavar="BENCH@TOKENS=VALUE",
                        help="manual scores for server-scored benchmarks; override score files (marked †)")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="show cells whose runs differ in settings other than the token budget (marked ‡) "
                             "instead of refusing the table")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="output format")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="one row per method and budget (e.g. fastervlm vispruner visionzip), each relative to "
                             "the unpruned run of --method at --baseline-tokens")
    args = parser.parse_args(argv)
    if args.methods:
        if args.set:
            parser.error("--set does not combine with --methods")
        header, rows, notes = methods_table(args.eval_dir, args.ckpt, args.methods, args.tokens, args.method,
                                            args.baseline_tokens, args.allow_mixed)
        print(render(header, rows, args.format), end="")
        if notes:
            print("\n" + "\n".join(notes), file=sys.stderr if args.format == "csv" else sys.stdout)
        return
    tokens = list(dict.fromkeys([*args.tokens, args.baseline_tokens]))
    cells = load_cells(args.eval_dir, args.ckpt, args.method, tokens)
    for item in args.set:
        try:
            bench, t, value = parse_set(item)
        except InputError as e:
            parser.error(str(e))
        cells.setdefault(t, {})[bench] = Cell(value)
    marks, provenance_notes = check_provenance(cells, args.baseline_tokens, args.allow_mixed)
    scores = {t: {b: c.score for b, c in row.items()} for t, row in cells.items()}
    header, rows, notes = table(scores, args.tokens, args.baseline_tokens, marks)
    print(render(header, rows, args.format), end="")
    # Notes go to stderr in CSV mode so the CSV stays machine-readable.
    if notes or provenance_notes:
        print("\n" + "\n".join(notes + provenance_notes), file=sys.stderr if args.format == "csv" else sys.stdout)


if __name__ == "__main__":
    cli(main)
