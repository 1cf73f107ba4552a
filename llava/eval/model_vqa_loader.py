"""Answer a LLaVA question file (JSON-lines: question_id, image, text) with 128 new tokens by default.

Used by VQAv2, GQA, VizWiz, TextVQA, POPE and MME. Answer line (upstream format):
``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}``; ``metadata.manifest`` names the
run manifest (``<answers-file>.manifest.json``) that records how the answers were made.
"""
from __future__ import annotations

import argparse
import os

from llava.eval.runner import add_common_args, parse_args, run
from llava.eval.tasks import AnswerFormat, Sample, Task, register
from llava.eval.utils import ArgumentParser, InputError, cli, iter_jsonl, require_keys
from llava.mm_utils import load_image

# TextVQA and MME reuse a question_id for every question about the same image; the prompt tells them apart.
VQA_KEY = ("question_id", "prompt")


def vqa_samples(question_file: str, image_folder: str) -> list[Sample]:
    """One :class:`Sample` per question line; the image is read only when the question is answered."""
    samples = []
    for lineno, q in iter_jsonl(os.path.expanduser(question_file)):
        where = f"{question_file}:{lineno}"
        require_keys(q, ("question_id", "image", "text"), where)
        qid = q["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise InputError(f"{where}: question_id must be an integer or a string, got {qid!r}")
        for name in ("image", "text"):
            if not isinstance(q[name], str):
                raise InputError(f"{where}: {name!r} must be a string, got {q[name]!r}")
        path = os.path.join(image_folder, q["image"])
        samples.append(Sample(key=(qid, q["text"]), question=q["text"], media=lambda p=path: load_image(p),
                              record={"question_id": qid, "prompt": q["text"]}, media_name=path, where=where,
                              media_file=path))
    return samples


def load_samples(args) -> list[Sample]:
    return vqa_samples(args.question_file, args.image_folder)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-folder", type=str, required=True, help="folder the question file's image paths are relative to")
    parser.add_argument("--question-file", type=str, required=True, help="JSON-lines questions (question_id, image, text)")


TASK = register(Task("vqa", add_args, load_samples, AnswerFormat(VQA_KEY)))


def build_parser(description: str, max_new_tokens: int) -> argparse.ArgumentParser:
    parser = ArgumentParser(description=description)
    TASK.add_args(parser)
    add_common_args(parser, max_new_tokens=max_new_tokens)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_args(build_parser(__doc__, max_new_tokens=128), argv)
    run(args, TASK)


if __name__ == "__main__":
    cli(main)
