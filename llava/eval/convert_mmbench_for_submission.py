"""Build the MMBench / MMBench-CN upload xlsx from a LLaVA answer file (scorers.md §10).

    python -m llava.eval.convert_mmbench_for_submission --annotation-file mmbench_dev_20230712.tsv \\
        --result-file answers.jsonl --upload-file upload.xlsx

The TSV is copied without ``hint, category, source, image, comment, l2-category``, the raw model
text goes into a ``prediction`` column at position 6 (matched on ``index`` = ``question_id``), and
the result is written without a row-number column, as the OpenCompass server expects.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from llava.eval.utils import InputError, read_answer_texts

DROP_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
PREDICTION_COLUMN = 6
# Read as text so that numeric options stay "3" instead of becoming 3.0 (they are matched as text).
TEXT_COLUMNS = ("question", "hint", "A", "B", "C", "D", "answer", "prediction", "category", "l2-category", "split")


def read_tsv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an MMBench TSV (pandas' default NaN handling, as LLaVA's inference reads it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype={c: str for c in TEXT_COLUMNS})
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: malformed TSV ({e})") from None
    check_index(df, str(path))
    return df


def check_index(df: pd.DataFrame, where: str) -> None:
    """Require a unique integer ``index`` column, the key that predictions are matched on."""
    if "index" not in df.columns:
        raise InputError(f"{where}: no 'index' column (columns: {', '.join(map(str, df.columns))})")
    if not pd.api.types.is_integer_dtype(df["index"]):
        raise InputError(f"{where}: 'index' column is not all integers")
    dup = df["index"][df["index"].duplicated()]
    if len(dup):
        raise InputError(f"{where}: duplicate index {int(dup.iloc[0])}")


def load_predictions(result_file: str | os.PathLike) -> dict[int, str]:
    """Map ``question_id`` (the TSV ``index``) -> raw model text of a LLaVA answer file."""
    return read_answer_texts(result_file, integer_ids=True)


def match_predictions(df: pd.DataFrame, preds: dict[int, str], result_file: str | os.PathLike) -> list[str]:
    """Predictions in the row order of ``df``; every row needs one and every answer needs a row."""
    indices = [int(i) for i in df["index"]]
    missing = [i for i in indices if i not in preds]
    if missing:
        raise InputError(f"{result_file}: {len(missing)} of {len(indices)} TSV rows have no prediction "
                         f"(first missing index: {missing[0]})")
    extra = set(preds) - set(indices)
    if extra:
        raise InputError(f"{result_file}: {len(extra)} answers match no TSV index "
                         f"(e.g. question_id {min(extra)}); wrong annotation file?")
    return [preds[i] for i in indices]


def build_upload(annotation_file: str | os.PathLike, result_file: str | os.PathLike) -> pd.DataFrame:
    """The upload table: the TSV minus the dropped columns, plus ``prediction`` at column 6."""
    df = read_tsv(annotation_file)
    predictions = match_predictions(df, load_predictions(result_file), result_file)
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
    """Write the xlsx with openpyxl, without pandas' row-number column."""
    path = Path(upload_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_excel(path, index=False, engine="openpyxl")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True,
                        help="MMBench TSV the answers were generated from (e.g. mmbench_dev_20230712.tsv)")
    parser.add_argument("--result-file", required=True, help="LLaVA answer file (JSON-lines, question_id = TSV index)")
    parser.add_argument("--upload-file", required=True, help="output xlsx to submit to the OpenCompass server")
    args = parser.parse_args(argv)
    df = build_upload(args.annotation_file, args.result_file)
    write_upload(df, args.upload_file)
    print(f"Wrote {len(df)} rows to {args.upload_file}")


if __name__ == "__main__":
    main()
