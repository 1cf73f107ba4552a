"""Score TextVQA val answers locally with the m4c soft accuracy (scorers.md §7).

    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file answers.jsonl \
        [--question-file llava_textvqa_val_v051_ocr.jsonl] [--allow-partial] [--score-file score.json]

A question is its (image id, lower-cased question text): LLaVA's ``question_id`` is the image id, which an
image's questions share. The answers must cover the expected questions exactly once: those of
``--question-file`` when given, else every question of the annotation file. ``--allow-partial`` scores the
answered ones and marks the score partial.
"""
from __future__ import annotations

from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator
from llava.eval.provenance import write_score
from llava.eval.utils import (ArgumentParser, InputError, add_allow_partial, check_coverage, cli, iter_jsonl,
                              read_json, require_keys)

OCR_PREFIX = "Reference OCR token: "

Key = tuple[str, str]  # (image id, lower-cased question)


def prompt_to_question(prompt: str) -> str:
    """Recover the lower-cased question from a LLaVA TextVQA prompt.

    A prompt is ``question\\nReference OCR token: ...\\nsuffix`` (the OCR line may come first)
    or, without OCR tokens, ``question\\nsuffix``.
    """
    lines = prompt.split("\n")
    if len(lines) == 3 and OCR_PREFIX in prompt:
        question = lines[1] if prompt.startswith(OCR_PREFIX) else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"unrecognised prompt layout ({len(lines)} lines): {prompt[:80]!r}")
    return question.lower()


def _key(obj: dict, text_field: str, where: str) -> Key:
    """The question key of a LLaVA question or answer line (``text_field`` holds the prompt)."""
    qid, prompt = obj["question_id"], obj[text_field]
    if not isinstance(qid, str) or not isinstance(prompt, str):
        raise InputError(f"{where}: 'question_id' and '{text_field}' must be strings")
    try:
        return qid, prompt_to_question(prompt)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None


def load_annotations(path: str) -> dict[Key, list[str]]:
    """Map (image_id, lower-cased question) -> the 10 GT answers of TextVQA_0.5.1_val.json, in file order."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise InputError(f"{path}: expected a JSON object with a 'data' list")
    gt: dict[Key, list[str]] = {}
    first: dict[Key, int] = {}
    for i, ann in enumerate(doc["data"]):
        where = f"{path}: data[{i}]"
        if not isinstance(ann, dict):
            raise InputError(f"{where}: expected an object")
        require_keys(ann, ("image_id", "question", "answers"), where)
        if not isinstance(ann["image_id"], str) or not isinstance(ann["question"], str):
            raise InputError(f"{where}: 'image_id' and 'question' must be strings")
        answers = ann["answers"]
        if not isinstance(answers, list) or len(answers) != 10 or not all(isinstance(a, str) for a in answers):
            raise InputError(f"{where}: 'answers' must be a list of 10 strings")
        key = (ann["image_id"], ann["question"].lower())
        if key in gt:
            raise InputError(f"{where}: question {key[1]!r} of image {key[0]!r} repeats data[{first[key]}]")
        gt[key], first[key] = answers, i
    return gt


def load_questions(path: str) -> list[Key]:
    """The question keys of LLaVA's question file, in order; each must be unique."""
    keys: dict[Key, int] = {}
    for lineno, q in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_keys(q, ("question_id", "text"), where)
        key = _key(q, "text", where)
        if key in keys:
            raise InputError(f"{where}: duplicate question {key[1]!r} for image {key[0]!r} (first at line {keys[key]})")
        keys[key] = lineno
    if not keys:
        raise InputError(f"{path}: no questions")
    return list(keys)


def evaluate(annotation_file: str, result_file: str, question_file: str | None = None,
             allow_partial: bool = False) -> tuple[int, float, dict | None]:
    """Return (number of answers scored, accuracy in percent, partial record or None)."""
    gt = load_annotations(annotation_file)
    expected = load_questions(question_file) if question_file else list(gt)
    expected_set = set(expected)
    unknown = [key for key in expected if key not in gt]
    if unknown:
        raise InputError(f"{question_file}: {len(unknown)} question(s) have no annotation in {annotation_file}, "
                         f"e.g. image_id={unknown[0][0]!r}, question={unknown[0][1]!r}")
    seen: dict[Key, int] = {}
    pred_list = []  # in answer-file order, as upstream sums them
    for lineno, res in iter_jsonl(result_file):
        where = f"{result_file}:{lineno}"
        require_keys(res, ("question_id", "prompt", "text"), where)
        if not isinstance(res["text"], str):
            raise InputError(f"{where}: 'text' must be a string")
        key = _key(res, "prompt", where)
        if key not in gt:
            raise InputError(f"{where}: no annotation for image_id={key[0]!r}, question={key[1]!r}")
        if key not in expected_set:
            raise InputError(f"{where}: question {key[1]!r} of image {key[0]!r} is not in {question_file}")
        if key in seen:
            raise InputError(f"{where}: duplicate answer to question {key[1]!r} of image {key[0]!r} "
                             f"(first at line {seen[key]})")
        seen[key] = lineno
        pred_list.append({"pred_answer": res["text"], "gt_answers": gt[key]})
    if not pred_list:
        raise InputError(f"{result_file}: no answers")
    partial = check_coverage(expected, seen, result_file, allow_partial)
    return len(pred_list), 100.0 * TextVQAAccuracyEvaluator().eval_pred_list(pred_list), partial


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json (GT answers)")
    parser.add_argument("--result-file", required=True, help="LLaVA answer file (JSON-lines)")
    parser.add_argument("--question-file",
                        help="LLaVA question file (llava_textvqa_val_v051_ocr.jsonl): the questions that must be "
                             "answered (default: every question of --annotation-file)")
    parser.add_argument("--score-file", help="optional JSON file to record the score for summarize")
    add_allow_partial(parser)
    args = parser.parse_args(argv)
    n, acc, partial = evaluate(args.annotation_file, args.result_file, args.question_file, args.allow_partial)
    print(f"Samples: {n}\nAccuracy: {acc:.2f}%")
    write_score(args.score_file, "textvqa", acc, "accuracy", {"samples": n}, answers_file=args.result_file,
                partial=partial)


if __name__ == "__main__":
    cli(main)
