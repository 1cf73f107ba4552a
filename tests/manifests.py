"""Run manifests for scorer tests: answers files stamped as the runner stamps them."""
from __future__ import annotations

import json
from pathlib import Path

from llava.eval import provenance


def attach_manifest(answers: Path, settings: dict | None = None) -> dict:
    """Write a whole manifest beside ``answers`` (a JSON-lines file, or any other file) and, for JSON lines, put its
    fingerprint into every line's ``metadata``, as the runner does; returns the manifest."""
    manifest = {"format": provenance.FORMAT, "settings": settings or {"visual_token_num": 58},
                "environment": {"torch": "x"}, "chunk": {}, "info": {}}
    manifest["fingerprint"] = provenance.fingerprint(manifest)
    if answers.suffix == ".jsonl":
        rows = [json.loads(l) for l in answers.read_text(encoding="utf-8").split("\n") if l.strip()]
        answers.write_text("".join(json.dumps({**r, "metadata": {"manifest": manifest["fingerprint"]}}) + "\n"
                                   for r in rows), encoding="utf-8")
    provenance.write_manifest(answers, manifest)
    return manifest
