"""File helpers shared by the inference CLIs, scorers and converters.

Every reader names the file and line at fault, so a bad input never surfaces as a bare
``JSONDecodeError`` or ``KeyError`` deep inside a scorer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator


class InputError(ValueError):
    """A user-supplied file or argument is malformed; the message names the culprit."""


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
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
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def require_keys(obj: dict, keys: Iterable[str], where: str) -> None:
    """Raise an :class:`InputError` naming ``where`` if ``obj`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in obj]
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(missing)}")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write JSON atomically (temp file + rename), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write JSON-lines atomically, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# Benchmark keys as in the paper's tables (../shared/reference-data/paper/*.csv columns).
BENCHMARKS = ("vqav2", "gqa", "vizwiz", "sqa_img", "textvqa", "pope", "mme", "mmb", "mmb_cn", "mmvet")


def write_score(path: str | os.PathLike | None, benchmark: str, score: float, metric: str,
                details: dict | None = None) -> None:
    """Record a benchmark's headline number for ``llava.eval.summarize`` (no-op if ``path`` is None)."""
    if path is None:
        return
    write_json(path, {"benchmark": benchmark, "metric": metric, "score": score, "details": details or {}}, indent=2)


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
