"""Convert LLaVA GQA answers to GQA predictions and score them like the official eval.py (scorers.md §4).

    python -m llava.eval.eval_gqa --result-file merge.jsonl --questions testdev_balanced_questions.json

Accuracy is exact string match over the balanced questions; Binary/Open split them by whether
the structural type is 'query' (open). Validity, plausibility, consistency, grounding and the
distribution score of the full eval.py are not computed (LLaVA's patched copy reports accuracy).
"""
from __future__ import annotations

import argparse
from collections import defaultdict

from llava.eval.utils import InputError, iter_jsonl, read_json, require_keys, write_json, write_score


def convert(result_file: str) -> list[dict]:
    """``[{"questionId": str, "prediction": str}]``: text without trailing periods, lower-cased."""
    preds = []
    for lineno, res in iter_jsonl(result_file):
        require_keys(res, ("question_id", "text"), f"{result_file}:{lineno}")
        if not isinstance(res["text"], str):
            raise InputError(f"{result_file}:{lineno}: 'text' must be a string")
        # GQA ids are strings; eval.py also keys predictions by str(questionId).
        preds.append({"questionId": str(res["question_id"]), "prediction": res["text"].rstrip(".").lower()})
    return preds


def _pct(scores: list[float]) -> float:
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def score(questions: dict, predictions: list[dict], questions_file: str = "questions") -> dict:
    """Accuracy, binary, open and per-type accuracies (percent) over balanced questions."""
    balanced = {}
    for qid, q in questions.items():
        where = f"{questions_file}: question {qid}"
        if not isinstance(q, dict):
            raise InputError(f"{where}: expected an object")
        require_keys(q, ("isBalanced", "answer", "types"), where)
        require_keys(q["types"], ("structural", "semantic"), f"{where}: types")
        if q["isBalanced"]:
            balanced[qid] = q
    pred = {p["questionId"]: p["prediction"] for p in predictions}
    missing = [qid for qid in balanced if qid not in pred]
    if missing:
        raise InputError(f"missing predictions for {len(missing)} balanced question(s) of {questions_file}, "
                         f"e.g. {', '.join(missing[:5])}")
    overall, by_answer_type = [], defaultdict(list)
    by_structural, by_semantic = defaultdict(list), defaultdict(list)
    for qid, q in balanced.items():
        correct = float(pred[qid] == q["answer"])
        overall.append(correct)
        by_answer_type["open" if q["types"]["structural"] == "query" else "binary"].append(correct)
        by_structural[q["types"]["structural"]].append(correct)
        by_semantic[q["types"]["semantic"]].append(correct)
    if not overall:
        raise InputError(f"{questions_file}: no balanced questions")
    return {
        "accuracy": _pct(overall), "binary": _pct(by_answer_type["binary"]), "open": _pct(by_answer_type["open"]),
        "questions": len(overall),
        "structural": {t: (_pct(s), len(s)) for t, s in sorted(by_structural.items())},
        "semantic": {t: (_pct(s), len(s)) for t, s in sorted(by_semantic.items())},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result-file", required=True, help="merged LLaVA answer file (JSON-lines)")
    parser.add_argument("--questions", help="official testdev_balanced_questions.json (omit to only convert)")
    parser.add_argument("--predictions-out", help="optional path for the GQA predictions JSON list")
    parser.add_argument("--score-file", help="optional JSON file to record the score for summarize")
    args = parser.parse_args(argv)
    if args.questions is None and args.predictions_out is None:
        parser.error("nothing to do: give --questions to score and/or --predictions-out to convert")
    predictions = convert(args.result_file)
    if args.predictions_out:
        write_json(args.predictions_out, predictions)
        print(f"wrote {len(predictions)} predictions to {args.predictions_out}")
    if args.questions is None:
        return
    questions = read_json(args.questions)
    if not isinstance(questions, dict):
        raise InputError(f"{args.questions}: expected a JSON object mapping question id -> question")
    s = score(questions, predictions, args.questions)
    print(f"Binary: {s['binary']:.2f}%\nOpen: {s['open']:.2f}%\nAccuracy: {s['accuracy']:.2f}%")
    for kind in ("structural", "semantic"):
        print(f"\nAccuracy / {kind} type:")
        for t, (acc, n) in s[kind].items():
            print(f"  {t}: {acc:.2f}% ({n} questions)")
    write_score(args.score_file, "gqa", s["accuracy"], "accuracy",
                {k: s[k] for k in ("binary", "open", "questions")})


if __name__ == "__main__":
    main()
