"""Concatenate per-GPU (or per-node) answer chunks, in chunk order, into one file (``merge.jsonl``).

Refuses to mix: every chunk must carry an unedited run manifest, all manifests must agree on every setting
(weights and image/video set included; only the chunk index may differ), every line must carry its chunk's
manifest fingerprint, and no chunk may still be being written (its lock is held). Then the merged answers are
checked against the question set, rebuilt from the manifest through the task registry (``llava.eval.tasks``,
by the task name the manifest records; a plugin task's module must be named by ``--import``): a missing, extra or
repeated question is an error naming the first few, unless ``--allow-partial``, which merges what is there and
marks the merged manifest (and every score made from it) partial.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from llava.eval import provenance
from llava.eval.answers_file import exclusive, line_key
from llava.eval.tasks import get_chunk, get_task, key_of
from llava.eval.utils import ArgumentParser, InputError, add_allow_partial, cli, iter_jsonl, write_jsonl
from llava.pruning import import_modules


def _chunk_manifests(chunks: list[str]) -> list[dict]:
    manifests = []
    for idx, path in enumerate(chunks):
        if Path(path).parent.is_dir():
            with exclusive(Path(path)):  # a chunk still being written is not merged (the error names its writer)
                pass
        manifest = provenance.read_manifest(path)
        if manifest is None:
            raise InputError(f"{path}: no run manifest ({provenance.manifest_path(path).name}); it was not written by "
                             "this package's inference, or its chunk never started")
        if (manifest["chunk"]["num_chunks"], manifest["chunk"]["chunk_idx"]) != (len(chunks), idx):
            raise InputError(f"{path}: is chunk {manifest['chunk']['chunk_idx']} of {manifest['chunk']['num_chunks']}, "
                             f"but was given as chunk {idx} of {len(chunks)}; pass every chunk, in order")
        diffs = provenance.differences(manifests[0], manifest) if manifests else []
        # How each chunk's model loaded (dtypes, tower weights); an empty chunk never loads one.
        loaded = next((m["loaded"] for m in manifests if "loaded" in m), None)
        if loaded is not None and "loaded" in manifest:
            diffs += provenance.differences({"loaded": loaded}, manifest, parts=("loaded",))
        if diffs:
            raise InputError(f"{path}: made with other settings than {chunks[0]}:\n  " + "\n  ".join(diffs))
        manifests.append(manifest)
    return manifests


def expected_chunks(manifest: dict, question_file: str | None = None) -> tuple[list[list[tuple]], tuple[str, ...]]:
    """The keys each chunk must answer, from the task and arguments the manifest records, and its key fields."""
    task = manifest["settings"]["task"]
    if "name" not in task:
        raise InputError(f"{manifest['info']['paths'].get('answers_file')}: its manifest names no task "
                         "(made by an older version); rerun the inference")
    imported = task["options"].get("imports") or []
    try:  # a manifest never makes us import a module: a plugin task's module comes from --import only
        registered = get_task(task["name"])
    except InputError as e:
        raise InputError(f"{e}" + (f"; the run imported {' '.join(imported)}" if imported else "")) from None
    args = argparse.Namespace(**task["options"], **manifest["info"]["paths"], **manifest["settings"]["decoding"],
                              **{k: v for k, v in manifest["settings"]["pruning"].items() if k != "params"})
    if question_file is not None:
        args.question_file = question_file
    for name, digest in task["inputs_sha256"].items():
        path = getattr(args, name, None)
        if digest is not None and (path is None or not os.path.isfile(path)):
            raise InputError(f"{name} {path}: not found here; pass --question-file with its current path")
        if digest is not None and provenance.file_sha256(path) != digest:
            raise InputError(f"{path}: differs from the {name} the answers were made from (sha256 changed)")
    samples = registered.load_samples(args)
    num_chunks = manifest["chunk"]["num_chunks"]
    keys = [[key_of(s) for s in get_chunk(samples, num_chunks, idx)] for idx in range(num_chunks)]
    return keys, registered.answers.key_fields


def merge(chunks: list[str], out: str, allow_partial: bool = False, question_file: str | None = None) -> int:
    """Merge ``chunks`` into ``out`` (and its manifest); returns the number of answers merged."""
    manifests = _chunk_manifests(chunks)
    expected, key_fields = expected_chunks(manifests[0], question_file)
    rows, seen, missing, unknown = [], {}, [], []
    for path, manifest, keys in zip(chunks, manifests, expected):
        wanted = set(keys)
        for lineno, obj in iter_jsonl(path):
            where = f"{path}:{lineno}"
            if (obj.get("metadata") or {}).get("manifest") != manifest["fingerprint"]:
                raise InputError(f"{where}: made by another run than its manifest records")
            key = line_key(obj, key_fields)
            if key in seen:
                raise InputError(f"{where}: question {key[0]} answered twice (first at {seen[key]})")
            seen[key] = where
            if key not in wanted:
                unknown.append((where, key))
            rows.append(obj)
        missing += [k for k in keys if k not in seen]
    if unknown:
        where, key = unknown[0]
        raise InputError(f"{len(unknown)} answer(s) to questions outside their chunk's share of the question set, "
                         f"e.g. {where}: question {key[0]}")
    total = sum(map(len, expected))
    partial = None
    if missing:
        head = ", ".join(k[0] for k in missing[:3])
        skipped = [p for p in (Path(c).with_name(Path(c).name + ".missing.jsonl") for c in chunks) if p.is_file()]
        note = f" (unreadable media are listed in {', '.join(map(str, skipped))})" if skipped else ""
        if not allow_partial:
            raise InputError(f"{len(missing)} of {total} questions have no answer in the chunks, e.g. {head}{note}; "
                             "rerun the inference to finish them, or pass --allow-partial (ALLOW_PARTIAL=1 for the "
                             "scripts) to merge what is there, marked partial")
        partial = {"answered": total - len(missing), "expected": total, "missing": len(missing)}
        print(f"WARNING: PARTIAL merge: {len(missing)} of {total} questions have no answer, e.g. {head}{note}")
    merged = dict(manifests[0])
    merged["chunk"] = {"num_chunks": 1, "chunk_idx": 0, "questions": total, "merged_from": [str(c) for c in chunks],
                       "partial": partial}
    merged["info"] = {**merged["info"], "batch_sizes": sorted({b for m in manifests for b in m["info"].get("batch_sizes", [])})}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with exclusive(Path(out)):
        write_jsonl(out, rows)
        provenance.write_manifest(out, merged)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("chunks", nargs="+", help="chunk files, in order (e.g. 2_0.jsonl 2_1.jsonl)")
    parser.add_argument("--out", required=True, help="merged answers file to write (its manifest goes beside it)")
    parser.add_argument("--question-file", default=None,
                        help="the question file, if it no longer lies where the manifests record it (same content)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): the module that registers the chunks' task, for a "
                             "plugin task (built-in tasks need none; the error names the modules the run imported)")
    add_allow_partial(parser)
    args = parser.parse_args(argv)
    import_modules(args.imports)
    print(f"merged {merge(args.chunks, args.out, args.allow_partial, args.question_file)} answers into {args.out}")


if __name__ == "__main__":
    cli(main)
