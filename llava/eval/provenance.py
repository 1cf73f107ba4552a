"""Run manifests: how every answers file (and every score made from it) was produced.

Each answers file ``X.jsonl`` has a sidecar ``X.jsonl.manifest.json`` written before its first answer. Its parts
differ in what they decide:

- ``settings`` (result-defining): everything that can change an answer: the checkpoint and the fingerprint of
  its files (:func:`checkpoint_fingerprint`), the question file's hash and the fingerprint of the images/videos
  its questions name (:func:`media_fingerprint`), the pruning method with all its parameters, the budget,
  protocols, template, decoding, dtypes, attention kernel, video decoder, whether answer lines record the kept
  patches (``--record-kept`` adds a field to every line, so lines with and without it must not mix), ...;
- ``environment`` (result-defining): the versions of this package (and its code hash), torch and transformers,
  and the device;
- ``chunk``: which share of the question set the file answers (compared on resume, not across merged chunks);
- ``info`` (bookkeeping, never compared): where things are, when and how the work was done: ``--limit``, the
  batch sizes used (``batch_sizes``: batching pads the prompts on the left and answers equal batch 1's up to
  floating-point rounding, so a resume at another batch size, e.g. to get past a failing batch, is allowed
  and recorded), argv, git commit, creation and resume times;
- ``loaded``: what only the loaded model can say (dtypes, where tower weights came from), compared on resume.

``fingerprint`` is a hash of ``settings`` and ``environment``; every answer line carries it in its
``metadata``. A manifest whose content no longer matches its fingerprint (edited by hand) is refused wherever it
is read, as are answer lines whose fingerprint is not their manifest's (:func:`check_lines`). Resuming under a
different manifest, merging chunks of different runs, or mixing lines of another run is refused with the list of
differing settings. Score files copy the manifest of the answers they scored.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from llava.eval.utils import InputError, read_json, write_json

MANIFEST_SUFFIX = ".manifest.json"
FORMAT = "fastervlm-run/1"
COMPARED = ("settings", "environment")  # result-defining: what the fingerprint covers


def manifest_path(answers_file: str | os.PathLike) -> Path:
    """The sidecar manifest of an answers file: ``<answers_file>.manifest.json``."""
    answers_file = Path(answers_file)
    return answers_file.with_name(answers_file.name + MANIFEST_SUFFIX)


def read_manifest(answers_file: str | os.PathLike) -> dict | None:
    """The manifest of ``answers_file``, or None if it has none (answers made elsewhere, e.g. upstream's)."""
    path = manifest_path(answers_file)
    if not path.is_file():
        return None
    return check_manifest(read_json(path), str(path))


def check_manifest(doc: Any, where: str) -> dict:
    """``doc`` if it is a whole, unedited run manifest; else an error naming ``where``."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not all(isinstance(doc.get(k), dict) for k in COMPARED):
        raise InputError(f"{where}: not a {FORMAT} run manifest (its settings or environment are missing); delete it "
                         "together with its answers to start afresh")
    if doc.get("fingerprint") != fingerprint(doc):
        raise InputError(f"{where}: the manifest's content no longer matches its fingerprint {doc.get('fingerprint')!r} "
                         f"(edited by hand?); it no longer says how its answers were made: rerun them")
    for part in ("chunk", "info"):
        if not isinstance(doc.get(part), dict):
            raise InputError(f"{where}: the manifest's {part!r} part is missing or not an object")
    return doc


def check_lines(answers_file: str | os.PathLike, manifest: dict) -> None:
    """Every answer line of ``answers_file`` must carry ``manifest``'s fingerprint: lines of another run (or of
    no run) are refused, naming the first."""
    from llava.eval.utils import iter_jsonl

    for lineno, obj in iter_jsonl(answers_file):
        metadata = obj.get("metadata")
        made_by = metadata.get("manifest") if isinstance(metadata, dict) else None
        if made_by != manifest["fingerprint"]:
            raise InputError(f"{answers_file}:{lineno}: made by another run (manifest {made_by!r}) than its manifest "
                             f"{manifest_path(answers_file).name} records ({manifest['fingerprint']!r})")


def fingerprint(manifest: dict) -> str:
    """A short hash of the compared parts of a manifest (what each answer line carries)."""
    canonical = json.dumps({k: manifest[k] for k in COMPARED}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def differences(old: dict, new: dict, parts: tuple[str, ...] = COMPARED) -> list[str]:
    """``"settings.visual_token_num: 58 -> 144"`` for every compared field that differs between two manifests."""
    a = _flatten({k: old.get(k) for k in parts})
    b = _flatten({k: new.get(k) for k in parts})
    return [f"{key}: {json.dumps(a.get(key))} -> {json.dumps(b.get(key))}"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def write_manifest(answers_file: str | os.PathLike, manifest: dict) -> None:
    """Write the sidecar atomically."""
    write_json(manifest_path(answers_file), manifest, indent=2)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_sha256() -> str:
    """A hash of this package's Python sources: what changes when the code that makes answers changes."""
    root = Path(__file__).resolve().parents[1]  # the llava package
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def git_info() -> dict | None:
    """The commit (and whether the package's files differ from it) when the package runs from a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "llava"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def environment(device: str) -> dict:
    """Versions and the device kind: what else can change an answer for the same settings."""
    import platform

    import torch
    import transformers

    from llava import __version__

    device_name = "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    return {"fastervlm": __version__, "code_sha256": code_sha256(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "device": device_name}


SMALL_FILE = 16 << 20  # hashed whole; larger files are sampled
SAMPLES, SAMPLE_BYTES = 16, 64 << 10


def _sampled_sha256(path: Path, size: int) -> str:
    """sha256 of a large file's safetensors header (all of it: tensor names, dtypes, shapes, offsets) and of
    ``SAMPLES`` blocks of ``SAMPLE_BYTES`` spread evenly over the file, the last block ending at its end."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        digest.update(head)
        if path.suffix == ".safetensors" and len(head) == 8:
            digest.update(f.read(min(int.from_bytes(head, "little"), size)))
        for i in range(SAMPLES):
            f.seek(max(0, (size - SAMPLE_BYTES) * i // (SAMPLES - 1)))
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def checkpoint_fingerprint(model_path: str | os.PathLike) -> str:
    """A hash over a checkpoint folder's files (sub-folders included, hidden ones skipped): each file's relative
    name and size, and the sha256 of its content, whole for files up to 16 MiB (configs, tokenizer, projector) and
    sampled above (:func:`_sampled_sha256`: the safetensors header plus 16 × 64 KiB = 1 MiB per file, about a
    second for a 13B checkpoint).

    What it proves: the same file names and sizes, the same tensor layout, and the same bytes at 16 places in each
    weight file. Two trainings of one architecture (same names, sizes and headers) differ in nearly every byte, so
    another checkpoint behind the same folder name is caught; an edit of a few bytes between the samples is not.
    Towers loaded from outside the folder (e.g. ``openai/clip-vit-large-patch14-336``) are named in the config.
    """
    folder = Path(model_path)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)) if folder.is_dir() else []
    for path in files:
        size = path.stat().st_size
        content = file_sha256(path) if size <= SMALL_FILE else _sampled_sha256(path, size)
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0{content}\0".encode())
    return digest.hexdigest()[:16]


MEDIA_SAMPLE_BYTES = 4096


def media_identity(path: str | os.PathLike) -> str | None:
    """A file's identity without reading all of it: its size and the sha256 of its first, middle and last 4 KiB
    (the whole file when smaller). None when the file does not exist."""
    try:
        size = os.path.getsize(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for offset in sorted({0, max(0, size // 2 - MEDIA_SAMPLE_BYTES // 2), max(0, size - MEDIA_SAMPLE_BYTES)}):
                f.seek(offset)
                digest.update(f.read(MEDIA_SAMPLE_BYTES))
    except FileNotFoundError:
        return None
    return f"{size}:{digest.hexdigest()[:16]}"


def media_fingerprint(files: list[tuple[str, str]]) -> dict:
    """The identity of the images/videos a question set names: ``files`` are (the question's key as JSON, the path
    read). Each file is identified by :func:`media_identity`: size and content samples, not the mtime, so that a
    copy of the same pictures (node-local disk, rsync without -t) keeps the fingerprint while other pictures
    under the same names change it; the folder's path is bookkeeping. Missing files count as missing (so images
    restored later change the fingerprint: the set the answers were made from changed)."""
    digest = hashlib.sha256()
    missing = 0
    for name, path in sorted(set(files)):
        identity = media_identity(path)
        missing += identity is None
        digest.update(f"{name}\0{identity}\0".encode())
    return {"files": len(set(files)), "missing": missing, "sha256": digest.hexdigest()[:16]}


def check_answers(answers_file: str | os.PathLike) -> dict | None:
    """The manifest of a scorer's input, checked whole and (for answer lines) against every line; None when the
    input has no manifest (answers made elsewhere, e.g. upstream's). Scorers that pay per question (the judges)
    call it before their first request; :func:`write_score` calls it for every scorer."""
    manifest = read_manifest(answers_file)
    if manifest is not None and Path(answers_file).suffix == ".jsonl":
        check_lines(answers_file, manifest)
    return manifest


def write_score(path: str | os.PathLike | None, benchmark: str, score: float, metric: str,
                details: dict | None = None, *, answers_file: str | os.PathLike | None = None,
                partial: dict | None = None) -> None:
    """Record a benchmark's headline number for ``llava.eval.summarize`` (only the checks below if ``path`` is None).

    ``answers_file``: the answers the score was computed from; its run manifest is checked (whole, and every line
    made under it) and copied into the score file, so every number says how it was made. ``partial``: the record
    :func:`llava.eval.utils.check_coverage` returned when only part of the questions were scored.
    """
    manifest = check_answers(answers_file) if answers_file is not None else None  # refused even with no score file
    if path is None:
        return
    write_json(path, {"benchmark": benchmark, "metric": metric, "score": score, "details": details or {},
                      "partial": partial, "answers_file": None if answers_file is None else str(answers_file),
                      "manifest": manifest}, indent=2)
