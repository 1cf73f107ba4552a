"""Score MMBench / MMBench-CN dev locally: circular evaluation with heuristic matching (scorers.md §10).

    python -m llava.eval.eval_mmbench --upload-file upload.xlsx
    python -m llava.eval.eval_mmbench --annotation-file mmbench_dev_20230712.tsv --result-file answers.jsonl

Letters are extracted with VLMEvalKit's 2023 ``can_infer`` (option rule, then text rule) in
exact-matching mode: no LLM fallback, so an unmatched prediction counts as wrong. A question
(its row with ``index`` < 10⁶ plus the circular copies ``index`` + k·10⁶) scores 1 only if
every copy's letter equals that copy's ``answer``.

With ``--annotation-file``, every TSV row needs exactly one answer; ``--allow-partial`` scores the
questions whose rows are all answered and marks the score partial.
"""
from __future__ import annotations

import os
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import pandas as pd
from openpyxl.utils.exceptions import InvalidFileException

from llava.eval.convert_mmbench_for_submission import (TEXT_COLUMNS, check_index, load_predictions,
                                                       match_predictions, read_tsv)
from llava.eval.provenance import write_score
from llava.eval.utils import ArgumentParser, InputError, add_allow_partial, cli

OPTION_LETTERS = "ABCD"
# The 2023 option rule looks for A-E whatever the item's options are; "E" was the "none of them" letter.
CANDIDATE_LETTERS = "ABCDE"
SEPARATORS = ".()[],:;!*#{}"
API_FAILURE = "Failed to obtain answer via API"
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.")
CIRCULAR_STRIDE = 1_000_000
CATEGORY_COLUMNS = ("category", "l2-category")


def infer_option(answer: str) -> str | None:
    """Option rule: the single candidate letter standing alone as a token, if exactly one does."""
    if API_FAILURE in answer:
        return None
    if any(r in answer for r in REFUSALS):
        return "E"
    for ch in SEPARATORS:
        answer = answer.replace(ch, " ")
    tokens = set(answer.split())
    found = [c for c in CANDIDATE_LETTERS if c in tokens]
    return found[0] if len(found) == 1 else None


def infer_text(answer: str, choices: dict[str, str]) -> str | None:
    """Text rule: the single option whose lower-cased text occurs in the lower-cased answer."""
    answer = answer.lower()
    found = [k for k, v in choices.items() if v.lower() in answer]
    return found[0] if len(found) == 1 else None


def extract_letter(prediction: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit 2023 ``can_infer``: the option rule, then the text rule; None if neither matches."""
    return infer_option(prediction) or infer_text(prediction, choices)


def choices_of(row: pd.Series) -> dict[str, str]:
    """Option letter -> text for every non-empty A-D cell (as VLMEvalKit's ``build_choices``)."""
    return {c: str(row[c]) for c in OPTION_LETTERS if c in row.index and not pd.isna(row[c])}


def read_upload(path: str | os.PathLike) -> pd.DataFrame:
    """Read an upload xlsx (it must carry ``answer``, so only dev-split files can be scored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        df = pd.read_excel(path, engine="openpyxl", dtype={c: str for c in TEXT_COLUMNS})
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, InvalidFileException) as e:
        raise InputError(f"{path}: cannot read as xlsx ({e})") from None
    check_index(df, str(path), "row")
    return df


def load_table(upload_file: str | None, annotation_file: str | None, result_file: str | None,
               allow_partial: bool = False) -> tuple[pd.DataFrame, str, dict | None]:
    """The rows to score, with ``prediction`` and ``answer`` columns; a name for messages; the partial record."""
    if upload_file:
        return read_upload(upload_file), upload_file, None
    df = read_tsv(annotation_file)
    df["prediction"], partial = match_predictions(df, load_predictions(result_file), result_file, allow_partial)
    if partial:
        # A question counts only if all its circular copies were answered.
        answered = df["prediction"].notna().groupby(df["index"] % CIRCULAR_STRIDE).transform("all")
        df = df[answered]
    return df, annotation_file, partial


def incomplete_groups(copies: dict[int, set[int]], options: dict[int, int]) -> list[int]:
    """Questions whose circular group lacks copies: its copies must be k = 0..m-1 with m >= options - 1 (the
    official dev TSVs hold one copy per option, except 53 four-option questions with three: scorers.md §10). A
    group cut short to m >= options - 1 copies cannot be told from those and passes."""
    return sorted(q for q, ks in copies.items() if ks != set(range(len(ks))) or len(ks) < options[q] - 1)


def evaluate(df: pd.DataFrame, where: str, allow_partial: bool = False) -> dict:
    """Circular and single-pass accuracy (percent) plus per-category circular accuracy.

    A question whose circular group lacks copies (:func:`incomplete_groups`) cannot be scored circularly: an
    error, or with ``allow_partial`` left out of every number and counted in ``incomplete_groups``."""
    for col in ("prediction", "answer"):
        if col not in df.columns:
            raise InputError(f"{where}: no '{col}' column")
    groups: dict[int, list[bool]] = defaultdict(list)
    copies: dict[int, set[int]] = defaultdict(set)
    main_rows: dict[int, pd.Series] = {}
    single: dict[int, bool] = {}
    unmatched = 0
    for _, row in df.iterrows():
        index = int(row["index"])
        answer = row["answer"]
        if pd.isna(answer) or answer not in tuple(OPTION_LETTERS):  # a tuple: "" and "AB" are not letters
            raise InputError(f"{where}: index {index}: answer must be one of A-D, got {answer!r}")
        # An empty model output is read back from the xlsx as NaN.
        prediction = "" if pd.isna(row["prediction"]) else str(row["prediction"])
        letter = extract_letter(prediction, choices_of(row))
        unmatched += letter is None
        groups[index % CIRCULAR_STRIDE].append(letter == answer)
        copies[index % CIRCULAR_STRIDE].add(index // CIRCULAR_STRIDE)
        if index < CIRCULAR_STRIDE:
            main_rows[index] = row
            single[index] = letter == answer
    orphans = sorted(set(groups) - set(main_rows))
    if orphans:
        raise InputError(f"{where}: circular copies of index {orphans[0]} but no row with that index")
    if not groups:
        raise InputError(f"{where}: no rows")
    incomplete = incomplete_groups(copies, {q: len(choices_of(row)) for q, row in main_rows.items()})
    if incomplete and not allow_partial:
        q = incomplete[0]
        raise InputError(f"{where}: {len(incomplete)} question(s) lack circular copies, e.g. index {q} has copies "
                         f"k = {sorted(copies[q])} of {len(choices_of(main_rows[q]))} options; circular accuracy "
                         "needs every copy (pass --allow-partial to score the complete groups, marked partial)")
    for q in incomplete:
        del groups[q], main_rows[q], single[q]
    if not groups:
        raise InputError(f"{where}: no question has all its circular copies")

    hits = {q: all(copies) for q, copies in groups.items()}
    n = len(groups)
    per_category: dict[str, dict[str, float]] = {}
    for col in CATEGORY_COLUMNS:
        if col not in df.columns:
            continue
        by_cat: dict[str, list[bool]] = defaultdict(list)
        for q, row in main_rows.items():
            by_cat[str(row[col])].append(hits[q])
        per_category[col] = {c: 100.0 * sum(v) / len(v) for c, v in sorted(by_cat.items())}
    return {
        "circular": 100.0 * sum(hits.values()) / n, "circular_hits": sum(hits.values()),
        "single_pass": 100.0 * sum(single.values()) / n, "single_pass_hits": sum(single.values()),
        "questions": n, "rows": len(df), "unmatched_rows": unmatched, "per_category": per_category,
        "incomplete_groups": len(incomplete),
    }


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upload-file", help="upload xlsx with prediction and answer columns (dev split)")
    parser.add_argument("--annotation-file", help="MMBench dev TSV (instead of --upload-file; gives per-category scores)")
    parser.add_argument("--result-file", help="LLaVA answer file (JSON-lines) for --annotation-file")
    parser.add_argument("--benchmark", choices=("mmb", "mmb_cn"), default="mmb",
                        help="benchmark key recorded in the score file")
    parser.add_argument("--score-file", help="optional JSON file to record the score for summarize")
    add_allow_partial(parser)
    args = parser.parse_args(argv)
    if bool(args.upload_file) == bool(args.annotation_file) or bool(args.annotation_file) != bool(args.result_file):
        parser.error("give either --upload-file, or --annotation-file with --result-file")
    df, where, partial = load_table(args.upload_file, args.annotation_file, args.result_file, args.allow_partial)
    res = evaluate(df, where, args.allow_partial)
    if res["incomplete_groups"]:
        print(f"WARNING: PARTIAL score: {res['incomplete_groups']} question(s) lack circular copies and are not "
              "scored", file=sys.stderr)
        partial = {**(partial or {}), "incomplete_groups": res["incomplete_groups"],
                   "answered": (partial or {}).get("answered", res["rows"]),
                   "expected": (partial or {}).get("expected", len(df))}
    n = res["questions"]
    print(f"Questions: {n} ({res['rows']} rows, {res['unmatched_rows']} with no extractable letter)")
    print(f"Circular accuracy: {res['circular']:.2f}% ({res['circular_hits']}/{n})")
    print(f"Single-pass accuracy: {res['single_pass']:.2f}% ({res['single_pass_hits']}/{n})")
    for col, cats in res["per_category"].items():
        print(f"Circular accuracy by {col}:")
        for cat, acc in cats.items():
            print(f"  {cat}: {acc:.2f}%")
    write_score(args.score_file, args.benchmark, res["circular"], "circular_accuracy", res,
                answers_file=args.upload_file or args.result_file, partial=partial)


if __name__ == "__main__":
    cli(main)
