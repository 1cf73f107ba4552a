"""Answer a LLaVA question file (JSON-lines: question_id, image, text) with up to 1024 new tokens (MM-Vet).

Same answer-line format as ``model_vqa_loader``; only the default generation length differs.
"""
from __future__ import annotations

from llava.eval.model_vqa_loader import VQA_KEY, build_parser, vqa_samples
from llava.eval.runner import run


def main(argv: list[str] | None = None) -> None:
    args = build_parser(__doc__, max_new_tokens=1024).parse_args(argv)
    run(args, vqa_samples(args.question_file, args.image_folder), key_fields=VQA_KEY)


if __name__ == "__main__":
    main()
