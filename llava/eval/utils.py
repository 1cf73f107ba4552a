"""File helpers shared by the inference CLIs, scorers and converters.

Every reader names the file and line at fault, so a bad input never surfaces as a bare
``JSONDecodeError`` or ``KeyError`` deep inside a scorer.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from llava.errors import DEBUG_ENV, InputError, cli  # noqa: F401  re-exported: the eval code imports them from here


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the ``--debug`` flag every CLI of this package understands (see :func:`cli`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # "--visual-token 5" must not quietly set --visual-token-num
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file.

    Lines end at "\n" only, so text holding U+2028 or other Unicode line separators round-trips; a UTF-8 byte
    order mark at the start is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):  # binary lines end at b"\n" only
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All objects of a JSON-lines file, in order."""
    return [obj for _, obj in iter_jsonl(path)]


def read_json(path: str | os.PathLike) -> Any:
    """A whole JSON document; a missing or malformed file names itself."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte order mark is accepted
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def require_keys(obj: dict, keys: Iterable[str], where: str) -> None:
    """Raise an :class:`InputError` naming ``where`` if ``obj`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in obj]
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(missing)}")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None, ensure_ascii: bool = False) -> None:
    """Write JSON atomically (temp file + rename), creating parent folders.

    ``ensure_ascii=True`` writes ``\\u`` escapes, as Python's ``json.dump`` default (and upstream's files) do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=ensure_ascii)
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict], ensure_ascii: bool = False) -> None:
    """Write JSON-lines atomically, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=ensure_ascii) + "\n")
    os.replace(tmp, path)


# Benchmark keys as in the paper's tables (../shared/reference-data/paper/*.csv columns).
BENCHMARKS = ("vqav2", "gqa", "vizwiz", "sqa_img", "textvqa", "pope", "mme", "mmb", "mmb_cn", "mmvet")


def add_allow_partial(parser: argparse.ArgumentParser) -> None:
    """The ``--allow-partial`` flag of every scorer and of ``merge_chunks``."""
    parser.add_argument("--allow-partial", action="store_true",
                        help="score the answered questions even if some have no answer; the score is marked partial "
                             "(default: missing answers are an error)")


def check_coverage(expected: Iterable, answered: Iterable, source: str, allow_partial: bool,
                   what: str = "question") -> dict | None:
    """Check that ``answered`` covers exactly ``expected`` (ids, or any hashable keys); ``source`` names the answers.

    Answers to unknown questions are always an error. Missing answers are an error unless ``allow_partial``;
    then a warning is printed and the returned record (``{"answered", "expected", "missing"}``) goes into the
    score file (``write_score(partial=...)``). Returns None when the answers are complete.
    """
    expected, answered = list(expected), list(answered)
    expected_set, answered_set = set(expected), set(answered)
    extra = [k for k in answered if k not in expected_set]
    if extra:
        raise InputError(f"{source}: {len(extra)} answer(s) to {what}s not in the question set, e.g. "
                         f"{', '.join(map(repr, extra[:3]))}")
    missing = [k for k in expected if k not in answered_set]
    if not missing:
        return None
    head = ", ".join(map(repr, missing[:3]))
    if not allow_partial:
        raise InputError(f"{source}: {len(missing)} of {len(expected_set)} {what}s have no answer, e.g. {head} "
                         "(pass --allow-partial to score the rest, marked partial)")
    print(f"WARNING: PARTIAL score: {len(missing)} of {len(expected_set)} {what}s have no answer in {source}, "
          f"e.g. {head}", file=sys.stderr)
    return {"answered": len(expected_set) - len(missing), "expected": len(expected_set), "missing": len(missing)}


def read_answer_texts(path: str | os.PathLike, integer_ids: bool = False) -> dict:
    """``question_id`` → model text of a LLaVA answer file, in file order; duplicates and bad fields name their line."""
    texts: dict = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_keys(obj, ("question_id", "text"), where)
        qid, text = obj["question_id"], obj["text"]
        if integer_ids and (not isinstance(qid, int) or isinstance(qid, bool)):
            raise InputError(f"{where}: question_id must be an integer, got {qid!r}")
        if not isinstance(text, str):
            raise InputError(f"{where}: text must be a string")
        if qid in texts:
            raise InputError(f"{where}: duplicate question_id {qid}")
        texts[qid] = text
    return texts
