"""Build the MMBench / MMBench-CN upload xlsx from a LLaVA answer file (scorers.md §10).

    python -m llava.eval.convert_mmbench_for_submission --annotation-file mmbench_dev_20230712.tsv \\
        --result-file answers.jsonl --upload-file upload.xlsx

The TSV is copied without ``hint, category, source, image, comment, l2-category``, the raw model
text goes into a ``prediction`` column at position 6 (matched on ``index`` = ``question_id``), and
the result is written without a row-number column, as the OpenCompass server expects. Every text is
written as a text cell: openpyxl would store a text starting with ``=`` as a formula (e.g.
``=HYPERLINK(...)``, run when the sheet is opened) and ``#N/A``-like texts as error cells.

Every TSV row needs exactly one answer; with ``--allow-partial`` the unanswered rows get an empty
prediction (which the server counts as wrong) and the upload is reported as partial.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from llava.eval.provenance import check_answers, manifest_path, read_manifest, write_manifest
from llava.eval.utils import ArgumentParser, InputError, add_allow_partial, check_coverage, cli, read_answer_texts

DROP_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
PREDICTION_COLUMN = 6
# Read as text so that numeric options stay "3" instead of becoming 3.0 (they are matched as text).
TEXT_COLUMNS = ("question", "hint", "A", "B", "C", "D", "answer", "prediction", "category", "l2-category", "split")
INTEGER = re.compile(r"[+-]?\d+")


def read_tsv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an MMBench TSV (pandas' default NaN handling, as LLaVA's inference reads it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype={c: str for c in TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: malformed TSV ({e})") from None
    check_index(df, str(path), "line")
    return df


def _is_integer(value: object) -> bool:
    """Whether a cell read by pandas holds an integer (as a number or as text)."""
    if isinstance(value, str):
        return INTEGER.fullmatch(value.strip()) is not None
    if isinstance(value, float):
        return value.is_integer()  # False for NaN, an empty cell
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_index(df: pd.DataFrame, where: str, unit: str = "row") -> None:
    """Require a unique integer ``index`` column, the key that predictions are matched on.

    Errors name the row as ``<unit> N``, counting the header as 1 (the TSV line, or the sheet row).
    """
    if "index" not in df.columns:
        raise InputError(f"{where}: no 'index' column (columns: {', '.join(map(str, df.columns))})")
    if not pd.api.types.is_integer_dtype(df["index"]):
        for n, value in enumerate(df["index"], 2):
            if not _is_integer(value):
                raise InputError(f"{where}: {unit} {n}: index {value!r} is not an integer")
        raise InputError(f"{where}: 'index' column is not all integers")
    first: dict[int, int] = {}
    for n, value in enumerate(df["index"], 2):
        if int(value) in first:
            raise InputError(f"{where}: {unit} {n}: duplicate index {int(value)} (first at {unit} {first[int(value)]})")
        first[int(value)] = n


def load_predictions(result_file: str | os.PathLike) -> dict[int, str]:
    """Map ``question_id`` (the TSV ``index``) -> raw model text of a LLaVA answer file."""
    return read_answer_texts(result_file, integer_ids=True)


def match_predictions(df: pd.DataFrame, preds: dict[int, str], result_file: str | os.PathLike,
                      allow_partial: bool = False) -> tuple[list[str | None], dict | None]:
    """Predictions in the row order of ``df`` (None where unanswered) and the partial record.

    Every answer needs a row; every row needs an answer unless ``allow_partial``.
    """
    indices = [int(i) for i in df["index"]]
    extra = set(preds) - set(indices)
    if extra:
        raise InputError(f"{result_file}: {len(extra)} answers match no TSV index "
                         f"(e.g. question_id {min(extra)}); wrong annotation file?")
    partial = check_coverage(indices, preds, str(result_file), allow_partial, "TSV row")
    return [preds.get(i) for i in indices], partial


def build_upload(annotation_file: str | os.PathLike, result_file: str | os.PathLike,
                 allow_partial: bool = False) -> pd.DataFrame:
    """The upload table: the TSV minus the dropped columns, plus ``prediction`` at column 6 (None if unanswered)."""
    df = read_tsv(annotation_file)
    predictions, _ = match_predictions(df, load_predictions(result_file), result_file, allow_partial)
    # Control characters (a model can emit them) are illegal in xlsx cells and would abort the write.
    cleaned = [ILLEGAL_CHARACTERS_RE.sub("", p) if isinstance(p, str) else p for p in predictions]
    changed = sum(a != b for a, b in zip(predictions, cleaned))
    if changed:
        print(f"{result_file}: removed control characters from {changed} prediction(s), which xlsx cannot hold")
    predictions = cleaned
    df = df.drop(columns=[c for c in DROP_COLUMNS if c in df.columns])
    df.insert(min(PREDICTION_COLUMN, len(df.columns)), "prediction", predictions)
    return df


def write_upload(df: pd.DataFrame, upload_file: str | os.PathLike) -> None:
    """Write the xlsx with openpyxl, without pandas' row-number column; every text as a text cell."""
    path = Path(upload_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        df.to_excel(writer, index=False)
        for row in writer.sheets["Sheet1"].iter_rows():
            for cell in row:
                # openpyxl types "=..." as a formula and "#N/A"-like texts as errors: keep them plain text.
                if isinstance(cell.value, str) and cell.data_type != "s":
                    cell.data_type = "s"


def copy_manifest(result_file: str | os.PathLike, upload_file: str | os.PathLike) -> None:
    """Give the upload its answers' run manifest, so that scores made from the upload carry it too."""
    manifest = read_manifest(result_file)
    if manifest is None:
        manifest_path(upload_file).unlink(missing_ok=True)  # a stale one would name another run
    else:
        write_manifest(upload_file, manifest)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True,
                        help="MMBench TSV the answers were generated from (e.g. mmbench_dev_20230712.tsv)")
    parser.add_argument("--result-file", required=True, help="LLaVA answer file (JSON-lines, question_id = TSV index)")
    parser.add_argument("--upload-file", required=True, help="output xlsx to submit to the OpenCompass server")
    add_allow_partial(parser)
    args = parser.parse_args(argv)
    check_answers(args.result_file)
    df = build_upload(args.annotation_file, args.result_file, args.allow_partial)
    write_upload(df, args.upload_file)
    copy_manifest(args.result_file, args.upload_file)
    print(f"Wrote {len(df)} rows to {args.upload_file}")
    unanswered = int(df["prediction"].isna().sum())
    if unanswered:
        print(f"PARTIAL upload: {unanswered} of {len(df)} rows have no prediction (empty cells, which the server "
              "counts as wrong)")


if __name__ == "__main__":
    cli(main)
