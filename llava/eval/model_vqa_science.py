"""Answer ScienceQA in LLaVA's format (a JSON list of conversations, ``llava_test_CQM-A.json``).

Image questions get ``<image>\\n`` before the question (also in the stored ``prompt``); text-only
questions run without an image. ``--single-pred-prompt`` appends LLaVA's answer-with-a-letter instruction.
"""
from __future__ import annotations

import argparse
import os

from llava.eval.runner import Sample, add_common_args, run
from llava.eval.utils import InputError, read_json, require_keys
from llava.mm_utils import load_image

SINGLE_PRED_EN = "Answer with the option's letter from the given choices directly."


def science_samples(question_file: str, image_folder: str, single_pred_prompt: bool) -> list[Sample]:
    items = read_json(os.path.expanduser(question_file))
    if not isinstance(items, list):
        raise InputError(f"{question_file}: expected a JSON list of questions")
    samples = []
    for i, item in enumerate(items):
        where = f"{question_file}: item {i}"
        require_keys(item, ("id", "conversations"), where)
        question = item["conversations"][0]["value"].replace("<image>", "").strip()
        if single_pred_prompt:
            question += "\n" + SINGLE_PRED_EN
        image, path = None, None
        prompt = question
        if "image" in item:
            path = os.path.join(image_folder, item["image"])
            image = lambda p=path: load_image(p)
            prompt = "<image>\n" + question
        samples.append(Sample(key=(item["id"],), question=question, image=image, image_name=path,
                              record={"question_id": item["id"], "prompt": prompt}))
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-folder", type=str, required=True, help="ScienceQA test images folder")
    parser.add_argument("--question-file", type=str, required=True, help="llava_test_CQM-A.json")
    parser.add_argument("--single-pred-prompt", action="store_true", help="append the answer-with-a-letter instruction")
    parser.add_argument("--answer-prompter", action="store_true", help="accepted for upstream compatibility; has no effect")
    add_common_args(parser, max_new_tokens=1024, conv_mode="llava_v0")
    args = parser.parse_args(argv)
    run(args, science_samples(args.question_file, args.image_folder, args.single_pred_prompt))


if __name__ == "__main__":
    main()
