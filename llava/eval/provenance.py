"""Run manifests: how every answers file (and every score made from it) was produced.

Each answers file ``X.jsonl`` has a sidecar ``X.jsonl.manifest.json`` written before its first answer:

- ``settings``: everything that can change an answer (checkpoint and its fingerprint, question file and its
  hash, pruning method with all its parameters, budget, protocols, template, decoding, batch size, dtypes,
  attention kernel, video decoder, ...);
- ``environment``: the versions of this package (and its git commit), torch and transformers, and the device;
- ``chunk``: which part of the question set the file answers (not compared when chunks are merged).

Every answer line carries the manifest's ``fingerprint`` in its ``metadata``. Resuming under a different
manifest, merging chunks of different runs, or mixing lines of another run is refused with the list of
differing settings. Score files copy the manifest of the answers they scored.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from llava.eval.utils import InputError, read_json

MANIFEST_SUFFIX = ".manifest.json"
FORMAT = "fastervlm-run/1"
COMPARED = ("settings", "environment")  # what the fingerprint covers; "chunk" and "created" are bookkeeping


def manifest_path(answers_file: str | os.PathLike) -> Path:
    """The sidecar manifest of an answers file: ``<answers_file>.manifest.json``."""
    answers_file = Path(answers_file)
    return answers_file.with_name(answers_file.name + MANIFEST_SUFFIX)


def read_manifest(answers_file: str | os.PathLike) -> dict | None:
    """The manifest of ``answers_file``, or None if it has none (answers made elsewhere, e.g. upstream's)."""
    path = manifest_path(answers_file)
    if not path.is_file():
        return None
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not all(isinstance(doc.get(k), dict) for k in COMPARED):
        raise InputError(f"{path}: not a {FORMAT} run manifest (delete it together with its answers to start afresh)")
    return doc


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
    from llava.eval.utils import write_json

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


def checkpoint_fingerprint(model_path: str | os.PathLike) -> str:
    """A hash of a checkpoint's config and weight index: its ``config.json`` and either its ``*.index.json`` or,
    for unsharded weights, each weight file's name and size (hashing gigabytes of weights on every run would cost
    minutes)."""
    folder = Path(model_path)
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name == "config.json" or path.name.endswith(".index.json"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        elif path.suffix in (".safetensors", ".bin") and path.is_file():
            digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
    return digest.hexdigest()[:16]
