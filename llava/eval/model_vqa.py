"""Answer a LLaVA question file (JSON-lines: question_id, image, text) with up to 1024 new tokens (MM-Vet).

Same answer-line format as ``model_vqa_loader``; only the default generation length differs.
"""
from __future__ import annotations

from llava.eval.model_vqa_loader import TASK, build_parser
from llava.eval.runner import parse_args, run
from llava.eval.utils import cli


def main(argv: list[str] | None = None) -> None:
    args = parse_args(build_parser(__doc__, max_new_tokens=1024), argv)
    run(args, TASK)


if __name__ == "__main__":
    cli(main)
