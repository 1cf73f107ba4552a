"""One run's answers file: its lock, reading it back, starting or resuming it, the final rewrite, the missing log.

An answers file ``X.jsonl`` holds one JSON object per line (lines end at "\\n" only, so any Unicode text
round-trips, U+2028 included; a UTF-8 byte order mark at the start is accepted). Beside it:

- ``X.jsonl.manifest.json``: how the answers were made (``llava.eval.provenance``);
- ``X.jsonl.lock``: held by the one process writing the file (:func:`exclusive`), with ``X.jsonl.lock.holder``
  naming it (pid, host, start time) for the error a second writer gets;
- ``X.jsonl.missing.jsonl``: questions left unanswered because their image/video could not be read.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from filelock import FileLock, Timeout

from llava.eval import provenance
from llava.eval.utils import InputError, write_jsonl

BOM = b"\xef\xbb\xbf"


def lock_path(answers_file: Path) -> Path:
    return answers_file.with_name(answers_file.name + ".lock")


def missing_log_path(answers_file: Path) -> Path:
    return answers_file.with_name(answers_file.name + ".missing.jsonl")


def line_key(obj: dict, key_fields: Sequence[str]) -> tuple:
    """An answer line's key, each field as JSON, so ids of any type compare exactly."""
    return tuple(json.dumps(obj.get(k)) for k in key_fields)


def format_line(obj: dict) -> str:
    """One answer line: JSON with raw Unicode (read back by splitting on "\n" only), ending in "\n"."""
    return json.dumps(obj, ensure_ascii=False) + "\n"


@contextlib.contextmanager
def exclusive(answers_file: Path) -> Iterator[None]:
    """Hold ``answers_file``'s lock for the ``with`` block: a second process into the same file stops at once.

    The lock is an ``flock`` (``filelock.FileLock``) on ``<answers>.lock``: the kernel drops it when its process
    ends in any way (exit, exception, SIGTERM, ``kill -9``, a crash), so the lock of a dead process is never
    seen as held, and no lock file needs cleaning up. On a file system without ``flock`` filelock falls back to a
    marker file that it breaks when the process that made it is gone.
    """
    lock = FileLock(str(lock_path(answers_file)), timeout=0)
    holder = answers_file.with_name(answers_file.name + ".lock.holder")
    try:
        lock.acquire()
    except Timeout:
        try:
            who = holder.read_text(encoding="utf-8").strip()
        except OSError:
            who = "a process that is still starting"
        raise InputError(f"{answers_file}: another run is writing it ({who}); wait for it to end or stop it, "
                         "or use another --answers-file") from None
    try:
        holder.write_text(f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n", encoding="utf-8")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _lines(path: Path) -> tuple[bytes, list[bytes]]:
    raw = path.read_bytes()
    return raw, raw.removeprefix(BOM).split(b"\n")


def read_answered(path: Path, key_fields: Sequence[str], fingerprint: str | None) -> set[tuple]:
    """Keys already answered in ``path``, checked line by line.

    A leading byte order mark is removed. A torn last line (a killed run) is cut off; a complete last line without
    its newline gets one, so the next answer is not glued onto it. A malformed line elsewhere, a repeated key or a line made under another manifest
    (``metadata.manifest`` differs from ``fingerprint``) is an error naming the line.
    """
    if not path.is_file():
        return set()
    raw, lines = _lines(path)
    if raw.startswith(BOM):  # saved by an editor that adds one: drop it, as other readers of the file would choke
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(raw[len(BOM):])
        os.replace(tmp, path)
        raw = raw[len(BOM):]
    done: dict[tuple, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if lineno == len(lines):  # the line in flight when the run died: drop it and answer again
                with open(path, "r+b") as f:
                    f.truncate(len(raw) - len(line))
                break
            raise InputError(f"{path}:{lineno}: malformed answer line; fix or delete the file to resume") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object")
        made_by = obj["metadata"].get("manifest") if isinstance(obj.get("metadata"), dict) else None
        if fingerprint is not None and made_by != fingerprint:
            raise InputError(f"{path}:{lineno}: made by another run (manifest {made_by!r}, this run's is {fingerprint!r});"
                             " pass --overwrite to start afresh, or use another --answers-file")
        key = line_key(obj, key_fields)
        if key in done:
            raise InputError(f"{path}:{lineno}: question {key[0]} is answered twice (first at line {done[key]})")
        done[key] = lineno
        if lineno == len(lines):  # complete, but its newline is missing
            with open(path, "ab") as f:
                f.write(b"\n")
    return set(done)


def start(answers_file: Path, manifest: dict, key_fields: Sequence[str], overwrite: bool) -> set[tuple]:
    """Make ``answers_file`` this run's (the caller holds :func:`exclusive`): refuse one made under other settings
    or of another share of the questions, write the manifest, return the keys it already answers.

    Bookkeeping (``info``: ``--limit``, batch size, paths) may differ from the run being resumed; the batch sizes
    of every run that wrote into the file are kept in ``info.batch_sizes``.
    """
    if overwrite:
        for path in (answers_file, provenance.manifest_path(answers_file), missing_log_path(answers_file)):
            path.unlink(missing_ok=True)
    existing = provenance.read_manifest(answers_file)
    has_answers = answers_file.is_file() and answers_file.stat().st_size > 0
    if has_answers and existing is None:
        raise InputError(f"{answers_file}: holds answers but no manifest ({provenance.manifest_path(answers_file).name}),"
                         " so how they were made is unknown; pass --overwrite to start afresh")
    if has_answers:
        diffs = provenance.differences(existing, manifest, parts=(*provenance.COMPARED, "chunk"))
        if diffs:
            raise InputError(f"{answers_file}: was made with other settings; resuming would mix runs:\n  "
                             + "\n  ".join(diffs) + "\npass --overwrite to start afresh, or use another --answers-file")
        manifest["info"]["resumed"] = existing["info"].get("created")
        manifest["info"]["batch_sizes"] = sorted({*existing["info"].get("batch_sizes", []),
                                                  *manifest["info"]["batch_sizes"]})
        if "loaded" in existing:
            manifest["loaded"] = existing["loaded"]
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    provenance.write_manifest(answers_file, manifest)
    answers_file.touch()  # an empty chunk still writes its (empty) answers file
    return read_answered(answers_file, key_fields, manifest["fingerprint"])


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of an answers file, as text (split on "\\n" only; a leading BOM dropped)."""
    return [line.decode("utf-8") for line in _lines(path)[1] if line.strip()]


def rewrite_in_order(path: Path, order: Sequence[tuple], key_fields: Sequence[str]) -> None:
    """Order the file's lines as ``order`` (the chunk's keys) is: batching answers them out of order."""
    position = {key: i for i, key in enumerate(order)}
    lines = read_lines(path)
    keyed = [(position.get(line_key(json.loads(l), key_fields), len(position)), i, l) for i, l in enumerate(lines)]
    if [k for k, _, _ in keyed] == sorted(k for k, _, _ in keyed):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(l + "\n" for _, _, l in sorted(keyed)), encoding="utf-8")
    os.replace(tmp, path)


def write_missing_log(answers_file: Path, skipped: dict, chunk_keys: Iterable[tuple], key_fields: Sequence[str]
                      ) -> int:
    """``<answers>.missing.jsonl``: the chunk's questions still unanswered because their media could not be read
    (this run's ``skipped`` plus earlier runs' entries); returns how many."""
    path = missing_log_path(answers_file)
    answered = {line_key(json.loads(l), key_fields) for l in read_lines(answers_file)}
    previous = {}
    if path.is_file():
        for line in read_lines(path):
            entry = json.loads(line)
            previous[tuple(json.dumps(k) for k in entry["key"])] = entry
    wanted = set(chunk_keys)
    entries = {k: v for k, v in {**previous, **skipped}.items() if k not in answered and k in wanted}
    if entries:
        write_jsonl(path, entries.values())
    else:
        path.unlink(missing_ok=True)
    return len(entries)
