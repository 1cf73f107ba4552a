"""Convert merged VQAv2 answers into the EvalAI upload file (scorers.md §3).

    python -m llava.eval.convert_vqav2_for_submission --test-file llava_vqav2_mscoco_test2015.jsonl \
        --src merge.jsonl --dst upload.json [--question-file llava_vqav2_mscoco_test-dev2015.jsonl]

The answers must cover the test-dev questions that were asked (``--question-file``) exactly once. The
server asserts that the result ids equal the full test2015 id set, so, as upstream, every test2015
question gets an entry and the ones outside test-dev get "". ``--allow-partial`` writes a partial
upload (unanswered test-dev questions get "" too) and says so. The file is byte-identical to upstream's.
"""
from __future__ import annotations

from pathlib import Path

from llava.eval.m4c_evaluator import EvalAIAnswerProcessor
from llava.eval.provenance import check_answers
from llava.eval.utils import (ArgumentParser, InputError, add_allow_partial, check_coverage, cli, iter_jsonl,
                              require_keys, write_json)

TEST_DEV = "llava_vqav2_mscoco_test-dev2015.jsonl"


def _question_ids(path: str) -> list[int]:
    """The integer ``question_id`` of every line of a LLaVA VQAv2 question file, each once."""
    ids: dict[int, int] = {}
    for lineno, q in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_keys(q, ("question_id",), where)
        qid = q["question_id"]
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise InputError(f"{where}: question_id must be an integer, got {qid!r}")
        if qid in ids:
            raise InputError(f"{where}: duplicate question_id {qid} (first at line {ids[qid]})")
        ids[qid] = lineno
    if not ids:
        raise InputError(f"{path}: no questions")
    return list(ids)


def read_answers(path: str, asked: set[int]) -> dict[int, str]:
    """Map question_id -> text; every answer must be to an asked question, and only one."""
    answers: dict[int, str] = {}
    lines: dict[int, int] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_keys(obj, ("question_id", "text"), where)
        qid, text = obj["question_id"], obj["text"]
        if not isinstance(text, str):
            raise InputError(f"{where}: 'text' must be a string")
        if not isinstance(qid, int) or isinstance(qid, bool) or qid not in asked:
            raise InputError(f"{where}: question_id {qid!r} is not a test-dev question")
        if qid in answers:
            raise InputError(f"{where}: duplicate answer for question_id {qid} (first at line {lines[qid]})")
        answers[qid], lines[qid] = text, lineno
    return answers


def convert(test_file: str, src: str, question_file: str,
            allow_partial: bool = False) -> tuple[list[dict], int, dict | None]:
    """Return the upload entries (test2015 order), the number answered and the partial record (None if complete)."""
    test_ids = _question_ids(test_file)
    asked = _question_ids(question_file)
    test_set = set(test_ids)
    outside = [qid for qid in asked if qid not in test_set]
    if outside:
        raise InputError(f"{question_file}: {len(outside)} question(s) not in {test_file}, e.g. {outside[0]}")
    answers = read_answers(src, set(asked))
    partial = check_coverage(asked, answers, src, allow_partial, "test-dev question")
    process = EvalAIAnswerProcessor()
    upload = [{"question_id": qid, "answer": process(answers[qid]) if qid in answers else ""} for qid in test_ids]
    return upload, len(answers), partial


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-file", required=True, help="llava_vqav2_mscoco_test2015.jsonl (all test questions)")
    parser.add_argument("--question-file",
                        help=f"the test-dev questions that were answered (default: {TEST_DEV} beside --test-file)")
    parser.add_argument("--src", required=True, help="merged LLaVA answer file (JSON-lines)")
    parser.add_argument("--dst", required=True, help="output upload JSON for EvalAI")
    add_allow_partial(parser)
    args = parser.parse_args(argv)
    question_file = args.question_file or str(Path(args.test_file).with_name(TEST_DEV))
    check_answers(args.src)
    upload, answered, partial = convert(args.test_file, args.src, question_file, args.allow_partial)
    print(f"test questions: {len(upload)}, answered: {answered}, empty: {len(upload) - answered}")
    if partial:
        print(f"PARTIAL upload: {partial['missing']} of {partial['expected']} test-dev questions are unanswered "
              "(empty answers); the server will score them as wrong")
    # json.dump defaults, as upstream writes it: \u escapes, ", " and ": ", no trailing newline.
    write_json(args.dst, upload, ensure_ascii=True)


if __name__ == "__main__":
    cli(main)
