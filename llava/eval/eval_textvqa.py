"""Score TextVQA val answers locally with the m4c soft accuracy (scorers.md §7).

    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file answers.jsonl
"""
from __future__ import annotations

import argparse

from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator
from llava.eval.utils import InputError, iter_jsonl, read_json, require_keys, write_score

OCR_PREFIX = "Reference OCR token: "


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


def load_annotations(path: str) -> dict[tuple[str, str], list[str]]:
    """Map (image_id, lower-cased question) -> the 10 GT answers of TextVQA_0.5.1_val.json."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise InputError(f"{path}: expected a JSON object with a 'data' list")
    gt = {}
    for i, ann in enumerate(doc["data"]):
        require_keys(ann, ("image_id", "question", "answers"), f"{path}: data[{i}]")
        if not isinstance(ann["answers"], list) or len(ann["answers"]) != 10:
            raise InputError(f"{path}: data[{i}]: 'answers' must be a list of 10 strings")
        gt[ann["image_id"], ann["question"].lower()] = ann["answers"]
    return gt


def evaluate(annotation_file: str, result_file: str) -> tuple[int, float]:
    """Return (number of samples, accuracy in percent)."""
    gt = load_annotations(annotation_file)
    pred_list = []
    for lineno, res in iter_jsonl(result_file):
        where = f"{result_file}:{lineno}"
        require_keys(res, ("question_id", "prompt", "text"), where)
        if not isinstance(res["prompt"], str) or not isinstance(res["text"], str):
            raise InputError(f"{where}: 'prompt' and 'text' must be strings")
        try:
            key = (res["question_id"], prompt_to_question(res["prompt"]))
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
        if key not in gt:
            raise InputError(f"{where}: no annotation for image_id={key[0]!r}, question={key[1]!r}")
        pred_list.append({"pred_answer": res["text"], "gt_answers": gt[key]})
    if not pred_list:
        raise InputError(f"{result_file}: no answers")
    return len(pred_list), 100.0 * TextVQAAccuracyEvaluator().eval_pred_list(pred_list)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json (GT answers)")
    parser.add_argument("--result-file", required=True, help="LLaVA answer file (JSON-lines)")
    parser.add_argument("--score-file", help="optional JSON file to record the score for summarize")
    args = parser.parse_args(argv)
    n, acc = evaluate(args.annotation_file, args.result_file)
    print(f"Samples: {n}\nAccuracy: {acc:.2f}%")
    write_score(args.score_file, "textvqa", acc, "accuracy", {"samples": n})


if __name__ == "__main__":
    main()
