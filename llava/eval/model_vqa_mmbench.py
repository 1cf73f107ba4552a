"""Answer MMBench / MMBench-CN from the TSV (base64 images), as LLaVA's ``model_vqa_mmbench``.

Text = [hint + newline] + question + one "A. option" line per option (A–D, up to the first empty one)
[+ newline + the single-prediction instruction]. ``--all-rounds`` asks each question once per
rotation of its options (``round_id`` 0..n-1); the released scripts use one round.
"""
from __future__ import annotations

import base64
import io
import math
import numbers
import os

from PIL import Image

from llava.eval.model_vqa_science import SINGLE_PRED_EN
from llava.eval.runner import add_common_args, parse_args, run
from llava.eval.tasks import AnswerFormat, Sample, Task, register
from llava.eval.utils import ArgumentParser, InputError, cli

SINGLE_PRED_CN = "请直接回答选项字母。"
ALL_OPTIONS = ("A", "B", "C", "D")


def is_none(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and value.lower() in ("nan", "none"))


def mmbench_index(value, where: str) -> int:
    """A TSV row's ``index`` as an int (pandas reads it as an integer, or a float/str column when rows differ)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise InputError(f"{where}: 'index' must be an integer, got {value!r}")


def decode_image(b64: str, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
            return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - any decoding failure is a bad input row
        raise ValueError(f"{where}: cannot decode the base64 image ({e})") from None


def mmbench_samples(question_file: str, all_rounds: bool, single_pred_prompt: bool, lang: str) -> list[Sample]:
    import pandas as pd

    path = os.path.expanduser(question_file)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    try:
        table = pd.read_table(path)
    except (ValueError, UnicodeDecodeError) as e:  # pandas' parser errors are ValueErrors
        raise InputError(f"{path}: not a readable TSV ({e})") from None
    missing = {"index", "question", "image", "A", "B"} - set(table.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    suffix = SINGLE_PRED_CN if lang == "cn" else SINGLE_PRED_EN
    samples = []
    for row_no, row in table.iterrows():
        options = []
        for char in ALL_OPTIONS:
            if char not in row or is_none(row[char]):
                break
            options.append(row[char])
        chars = list(ALL_OPTIONS[:len(options)])
        where = f"{path}:{row_no + 2}"  # + header line, 1-based
        index = mmbench_index(row["index"], where)
        if not isinstance(row["question"], str):
            raise InputError(f"{where}: 'question' must be text, got {row['question']!r}")
        for round_id in range(len(options) if all_rounds else 1):
            question = row["question"]
            hint = row.get("hint")
            if not is_none(hint):
                question = f"{hint}\n{question}"
            for char, option in zip(ALL_OPTIONS, options):
                question += f"\n{char}. {option}"
            prompt = question
            if single_pred_prompt:
                question += "\n" + suffix
            samples.append(Sample(
                key=(index, round_id), question=question, where=where,
                media=lambda b=row["image"], w=where: decode_image(b, w), media_name=where,
                record={"question_id": index, "round_id": round_id, "prompt": prompt,
                        "options": list(options), "option_char": list(chars)}))
            options, chars = options[1:] + options[:1], chars[1:] + chars[:1]
    return samples


def add_args(parser) -> None:
    parser.add_argument("--question-file", type=str, required=True, help="MMBench TSV (e.g. mmbench_dev_20230712.tsv)")
    parser.add_argument("--image-folder", type=str, default=None, help="unused (images are inside the TSV); kept for upstream compatibility")
    parser.add_argument("--all-rounds", action="store_true", help="ask every rotation of the options")
    parser.add_argument("--single-pred-prompt", action="store_true", help="append the answer-with-a-letter instruction")
    parser.add_argument("--lang", choices=["en", "cn"], default="en", help="language of the instruction (en or cn)")


def load_samples(args) -> list[Sample]:
    return mmbench_samples(args.question_file, args.all_rounds, args.single_pred_prompt, args.lang)


TASK = register(Task("mmbench", add_args, load_samples, AnswerFormat(("question_id", "round_id"))))


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    TASK.add_args(parser)
    add_common_args(parser, max_new_tokens=1024)
    args = parse_args(parser, argv)
    run(args, TASK)


if __name__ == "__main__":
    cli(main)
