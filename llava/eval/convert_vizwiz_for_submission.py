"""Convert VizWiz test answers into the EvalAI upload file (scorers.md §5).

    python -m llava.eval.convert_vizwiz_for_submission --annotation-file llava_test.jsonl \
        --result-file answers.jsonl --result-upload-file upload.json

Every question of the question file needs exactly one answer, as upstream asserts; ``--allow-partial``
writes a partial upload (unanswered questions get "") and says so. The file is byte-identical to upstream's.
"""
from __future__ import annotations

from llava.eval.m4c_evaluator import EvalAIAnswerProcessor
from llava.eval.provenance import check_answers
from llava.eval.utils import (ArgumentParser, InputError, add_allow_partial, check_coverage, cli, iter_jsonl,
                              require_keys, write_json)


def _check_id(qid: object, where: str) -> None:
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        raise InputError(f"{where}: question_id must be an integer or a string, got {qid!r}")


def load_questions(annotation_file: str) -> dict[object, str]:
    """``question_id`` -> image of LLaVA's VizWiz question file, in order."""
    images: dict[object, str] = {}
    lines: dict[object, int] = {}
    for lineno, q in iter_jsonl(annotation_file):
        where = f"{annotation_file}:{lineno}"
        require_keys(q, ("question_id", "image"), where)
        _check_id(q["question_id"], where)
        if not isinstance(q["image"], str):
            raise InputError(f"{where}: 'image' must be a string")
        if q["question_id"] in images:
            raise InputError(f"{where}: duplicate question_id {q['question_id']!r} "
                             f"(first at line {lines[q['question_id']]})")
        images[q["question_id"]], lines[q["question_id"]] = q["image"], lineno
    if not images:
        raise InputError(f"{annotation_file}: no questions")
    return images


def convert(annotation_file: str, result_file: str, allow_partial: bool = False) -> tuple[list[dict], dict | None]:
    """``[{"image", "answer"}]`` in question-file order, and the partial record (None when complete)."""
    images = load_questions(annotation_file)
    answers: dict[object, str] = {}
    lines: dict[object, int] = {}
    for lineno, res in iter_jsonl(result_file):
        where = f"{result_file}:{lineno}"
        require_keys(res, ("question_id", "text"), where)
        qid = res["question_id"]
        _check_id(qid, where)
        if not isinstance(res["text"], str):
            raise InputError(f"{where}: 'text' must be a string")
        if qid not in images:
            raise InputError(f"{where}: question_id {qid!r} is not in {annotation_file}")
        if qid in answers:
            raise InputError(f"{where}: duplicate answer for question_id {qid!r} (first at line {lines[qid]})")
        answers[qid], lines[qid] = res["text"], lineno
    partial = check_coverage(images, answers, result_file, allow_partial)
    process = EvalAIAnswerProcessor()
    return [{"image": image, "answer": process(answers[qid]) if qid in answers else ""}
            for qid, image in images.items()], partial


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True, help="llava_test.jsonl (VizWiz test questions)")
    parser.add_argument("--result-file", required=True, help="LLaVA answer file (JSON-lines)")
    parser.add_argument("--result-upload-file", required=True, help="output upload JSON for EvalAI")
    add_allow_partial(parser)
    args = parser.parse_args(argv)
    check_answers(args.result_file)
    upload, partial = convert(args.annotation_file, args.result_file, args.allow_partial)
    print(f"questions: {len(upload)}, written to {args.result_upload_file}")
    if partial:
        print(f"PARTIAL upload: {partial['missing']} of {partial['expected']} questions are unanswered "
              "(empty answers); the server will score them as wrong")
    # json.dump defaults, as upstream writes it: \u escapes, ", " and ": ", no trailing newline.
    write_json(args.result_upload_file, upload, ensure_ascii=True)


if __name__ == "__main__":
    cli(main)
