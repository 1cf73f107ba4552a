"""Answer ScienceQA in LLaVA's format (a JSON list of conversations, ``llava_test_CQM-A.json``).

Image questions get ``<image>\\n`` before the question (also in the stored ``prompt``); text-only
questions run without an image. ``--single-pred-prompt`` appends LLaVA's answer-with-a-letter instruction.
"""
from __future__ import annotations

import os

from llava.eval.runner import add_common_args, parse_args, run
from llava.eval.tasks import AnswerFormat, Sample, Task, register
from llava.eval.utils import ArgumentParser, InputError, cli, read_json, require_keys
from llava.mm_utils import load_image

SINGLE_PRED_EN = "Answer with the option's letter from the given choices directly."


def science_samples(question_file: str, image_folder: str, single_pred_prompt: bool) -> list[Sample]:
    items = read_json(os.path.expanduser(question_file))
    if not isinstance(items, list):
        raise InputError(f"{question_file}: expected a JSON list of questions")
    samples = []
    for i, item in enumerate(items):
        where = f"{question_file}: item {i}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object")
        require_keys(item, ("id", "conversations"), where)
        turns = item["conversations"]
        if not (isinstance(turns, list) and turns and isinstance(turns[0], dict) and turns[0].get("from") == "human"
                and isinstance(turns[0].get("value"), str)):
            raise InputError(f"{where} (id {item['id']!r}): 'conversations' must start with a human turn "
                             '{"from": "human", "value": "<question>"}')
        question = turns[0]["value"].replace("<image>", "").strip()
        if single_pred_prompt:
            question += "\n" + SINGLE_PRED_EN
        image, path = None, None
        prompt = question
        if "image" in item:
            if not isinstance(item["image"], str):
                raise InputError(f"{where} (id {item['id']!r}): 'image' must be a string, got {item['image']!r}")
            path = os.path.join(image_folder, item["image"])
            image = lambda p=path: load_image(p)
            prompt = "<image>\n" + question
        samples.append(Sample(key=(item["id"],), question=question, media=image, media_name=path, where=where, media_file=path,
                              record={"question_id": item["id"], "prompt": prompt}))
    return samples


def load_samples(args) -> list[Sample]:
    return science_samples(args.question_file, args.image_folder, args.single_pred_prompt)


def add_args(parser) -> None:
    parser.add_argument("--image-folder", type=str, required=True, help="ScienceQA test images folder")
    parser.add_argument("--question-file", type=str, required=True, help="llava_test_CQM-A.json")
    parser.add_argument("--single-pred-prompt", action="store_true", help="append the answer-with-a-letter instruction")
    parser.add_argument("--answer-prompter", action="store_true", help="accepted for upstream compatibility; has no effect")


TASK = register(Task("science_qa", add_args, load_samples, AnswerFormat(("question_id",))))


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    TASK.add_args(parser)
    add_common_args(parser, max_new_tokens=1024, conv_mode="llava_v0")
    args = parse_args(parser, argv)
    run(args, TASK)


if __name__ == "__main__":
    cli(main)
