"""Convert VizWiz test answers into the EvalAI upload file (scorers.md §5).

    python -m llava.eval.convert_vizwiz_for_submission --annotation-file llava_test.jsonl \
        --result-file answers.jsonl --result-upload-file upload.json
"""
from __future__ import annotations

import argparse

from llava.eval.m4c_evaluator import EvalAIAnswerProcessor
from llava.eval.utils import InputError, iter_jsonl, require_keys, write_json


def convert(annotation_file: str, result_file: str) -> list[dict]:
    """``[{"image", "answer"}]`` in question-file order; every question must be answered."""
    answers = {}
    for lineno, res in iter_jsonl(result_file):
        require_keys(res, ("question_id", "text"), f"{result_file}:{lineno}")
        if not isinstance(res["text"], str):
            raise InputError(f"{result_file}:{lineno}: 'text' must be a string")
        answers[res["question_id"]] = res["text"]
    questions = []
    for lineno, q in iter_jsonl(annotation_file):
        require_keys(q, ("question_id", "image"), f"{annotation_file}:{lineno}")
        questions.append(q)
    missing = [q["question_id"] for q in questions if q["question_id"] not in answers]
    if missing:
        shown = ", ".join(map(repr, missing[:20])) + (", ..." if len(missing) > 20 else "")
        raise InputError(f"{result_file}: {len(missing)} of {len(questions)} questions of {annotation_file} "
                         f"have no answer: {shown}")
    process = EvalAIAnswerProcessor()
    return [{"image": q["image"], "answer": process(answers[q["question_id"]])} for q in questions]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True, help="llava_test.jsonl (VizWiz test questions)")
    parser.add_argument("--result-file", required=True, help="LLaVA answer file (JSON-lines)")
    parser.add_argument("--result-upload-file", required=True, help="output upload JSON for EvalAI")
    args = parser.parse_args(argv)
    upload = convert(args.annotation_file, args.result_file)
    print(f"questions: {len(upload)}, written to {args.result_upload_file}")
    write_json(args.result_upload_file, upload)


if __name__ == "__main__":
    main()
