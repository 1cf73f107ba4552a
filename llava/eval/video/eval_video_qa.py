"""GPT judge for zero-shot video QA (TGIF, MSVD, MSRVTT, ActivityNet), scorers.md §12.

    python -m llava.eval.video.eval_video_qa --pred-path merge.jsonl --output-dir DIR \\
        --output-json results.json --judge-model gpt-3.5-turbo-0125 \\
        --gt-file-answers test_a_1k.json --benchmark msvd --score-file n_2048.json

Messages and aggregation formulas are Video-LLaVA's (= Video-ChatGPT's), so numbers stay comparable. Unlike
upstream:

- ground truth is joined by question id. Upstream pairs questions and answers by position, which is right
  (on any number of GPUs: both lists are chunked alike) as long as the two files are position-aligned, as
  the 1k files are; the join by id does not depend on that.
- a reply is a verdict only if 'pred' is exactly yes or no and 'score' a number in 0..5; anything else is
  re-asked, then the item fails. Upstream counts any 'pred' containing "yes" as a yes, else one containing
  "no" as a no ("unknown" is a no), leaves other verdicts out of the accuracy, and averages whatever
  ``int()`` makes of the score (1000 included).
- retries are bounded, and an item that still fails is reported, not counted; without ``--allow-partial`` a
  run with failed or unpredicted items writes no score file and exits 1.
- only this prediction file's items are aggregated (upstream also counts stale files in the output folder),
  and the per-item cache is keyed by judge model and prompt version as well as by the item.
"""
from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from llava.eval.judge import (FAILURES_FILE, Judge, MalformedReply, Tally, add_judge_args, judge_from_args,
                              judge_many, positive_int, prompt_sha256)
from llava.eval.provenance import check_answers, write_score
from llava.eval.utils import (ArgumentParser, InputError, add_allow_partial, cli, iter_jsonl, read_json, require_keys,
                              write_json)

# Exact texts of Video-LLaVA videollava/eval/video/eval_video_qa.py (identical in Video-ChatGPT's
# quantitative_evaluation/evaluate_activitynet_qa.py). Upstream concatenates literals without
# separators, hence "task:------##INSTRUCTIONS: - Focus"; the double space in "is  a string",
# "STRING.DO" and the 4.8 example are upstream's too and must stay for comparability.
SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs "
    "for question-answer pairs. Your task is to compare the predicted answer with the correct answer "
    "and determine if they match meaningfully. Here's how you can accomplish the task:------"
    "##INSTRUCTIONS: - Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
USER_INSTRUCTION = (
    "Provide your evaluation only as a yes/no and score where the score is an integer value between "
    "0 and 5, with 5 indicating the highest meaningful match. Please generate the response in the form "
    "of a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of "
    "'yes' or 'no' and value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT "
    "OR EXPLANATION. Only provide the Python dictionary string. For example, your response should look "
    "like this: {'pred': 'yes', 'score': 4.8}."
)

# Column prefixes of the paper's Table 10 (reference-data/paper/table10_video_llava.csv).
DATASETS = ("tgif", "msvd", "msrvtt", "anet")

QA = dict  # {"q": question, "a": answer, "pred": prediction}, the upstream per-item record
VERDICTS = {"yes": True, "no": False}
MAX_SCORE = 5


def build_messages(question: str, answer: str, pred: str) -> list[dict]:
    """The two chat messages upstream sends for one item."""
    user = ("Please evaluate the following video-based question-answer pair:\n\n"
            f"Question: {question}\nCorrect Answer: {answer}\nPredicted Answer: {pred}\n\n"
            + USER_INSTRUCTION)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def cache_context(judge_model: str) -> dict:
    """What decides a verdict besides the item: the judge model and the exact prompt (a change to either misses
    the cache)."""
    return {"judge_model": judge_model,
            "prompt_sha256": prompt_sha256(build_messages("{question}", "{answer}", "{pred}"))}


def verdict(reply: Any) -> tuple[bool, int]:
    """``(is_yes, score)`` of a reply dict; :class:`MalformedReply` unless it is a verdict.

    'pred' must be "yes" or "no" (case and surrounding spaces aside), not merely contain one. 'score' is
    read as upstream's ``int()`` reads it, a number (4.8 -> 4) or a string of an integer, and must lie in
    0..5 before truncation; a bool, NaN, -50 or 1000 is no score.
    """
    if not isinstance(reply, dict):
        raise MalformedReply(f"expected a dict, got {type(reply).__name__}")
    pred, score = reply.get("pred"), reply.get("score")
    if not isinstance(pred, str) or pred.strip().lower() not in VERDICTS:
        raise MalformedReply(f"'pred' must be 'yes' or 'no', got {pred!r}")
    number = score
    if isinstance(score, str):
        try:
            number = int(score)
        except ValueError:
            number = None
    # The range test is also false for NaN.
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number <= MAX_SCORE:
        raise MalformedReply(f"'score' must be a number in 0-{MAX_SCORE}, got {score!r}")
    return VERDICTS[pred.strip().lower()], int(number)


def parse_reply(text: str) -> dict:
    """Upstream's ``ast.literal_eval`` parse, additionally requiring a :func:`verdict` and a JSON-able dict."""
    try:
        obj = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise MalformedReply(f"not a Python literal: {text[:200]!r}") from None
    try:
        verdict(obj)
    except MalformedReply as e:
        raise MalformedReply(f"{e}: {text[:200]!r}") from None
    try:
        json.dumps(obj)  # it is cached as JSON; a set or bytes value under another key could not be
    except (TypeError, ValueError):
        raise MalformedReply(f"reply is not JSON-serialisable: {text[:200]!r}") from None
    return obj


def judge_item(judge: Judge, qa: QA) -> dict:
    """``{"reply": reply_dict, "model": reported model}``. No temperature is sent, as upstream (API default)."""
    parsed, reply = judge.ask(build_messages(qa["q"], qa["a"], qa["pred"]), parse_reply)
    return {"reply": parsed, "model": reply.model}


def is_valid_result(result: Any) -> bool:
    """Whether a cached result is one :func:`judge_item` could have returned (an older or edited file may not be)."""
    if not (isinstance(result, dict) and isinstance(result.get("model"), str)):
        return False
    try:
        verdict(result.get("reply"))
    except MalformedReply:
        return False
    return True


def aggregate(replies: Iterable[Any]) -> dict:
    """Upstream's accuracy (yes / (yes + no), in %) and average integer score over reply dicts.

    Every reply must be a :func:`verdict`, so every item counts in both.
    """
    count = score_sum = yes = 0
    for reply in replies:
        is_yes, score = verdict(reply)
        count += 1
        yes += is_yes
        score_sum += score
    if count == 0:
        raise ValueError("no judged items to aggregate")
    return {"accuracy": 100 * yes / count, "score": score_sum / count, "count": count, "yes": yes, "no": count - yes}


def average_pct(row: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """The paper's "Average %": mean over the 4 datasets of ``row / baseline × 100``.

    All of :data:`DATASETS` must be present in both, since a partial average is not the paper's.
    """
    missing = [d for d in DATASETS if d not in row or d not in baseline]
    if missing:
        raise ValueError(f"missing dataset(s) {', '.join(missing)}; need all of {', '.join(DATASETS)}")
    if any(baseline[d] == 0 for d in DATASETS):
        raise ValueError("a baseline value is 0")
    return 100 * sum(row[d] / baseline[d] for d in DATASETS) / len(DATASETS)


def load_gt_answers(path: str | os.PathLike) -> dict[str, str]:
    """``question_id -> answer`` from a Video-ChatGPT ``test_a*.json`` list."""
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of {{answer, type, question_id}}")
    answers: dict[str, str] = {}
    for i, row in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected an object")
        require_keys(row, ("question_id", "answer"), where)
        qid = row["question_id"]
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise InputError(f"{where}: question_id must be a string or integer, got {qid!r}")
        if not isinstance(row["answer"], str):
            raise InputError(f"{where}: answer must be a string")
        if str(qid) in answers:
            raise InputError(f"{where}: duplicate question_id {qid!r}")
        answers[str(qid)] = row["answer"]
    return answers


def load_predictions(path: str | os.PathLike, gt: Mapping[str, str] | None = None) -> dict[str, QA]:
    """``id -> {"q", "a", "pred"}`` from inference JSON-lines; with ``gt``, answers come from it by id."""
    preds: dict[str, QA] = {}
    disagree = 0
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_keys(obj, ("id", "question", "pred") if gt is not None else ("id", "question", "answer", "pred"),
                     where)
        item_id = obj["id"]
        if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
            raise InputError(f"{where}: id must be a string or integer, got {item_id!r}")
        item_id = str(item_id)
        if item_id in preds:
            raise InputError(f"{where}: duplicate id {item_id!r}")
        for key in ("question", "pred", "answer"):
            if key in obj and not isinstance(obj[key], str):
                raise InputError(f"{where}: {key} must be a string")
        if gt is None:
            answer = obj["answer"]
        else:
            if item_id not in gt:
                raise InputError(f"{where}: prediction id {item_id!r} is not in the ground-truth file")
            answer = gt[item_id]
            disagree += "answer" in obj and obj["answer"] != answer
        preds[item_id] = {"q": obj["question"], "a": answer, "pred": obj["pred"]}
    if not preds:
        raise InputError(f"{path}: no predictions")
    if disagree:
        # The lines were made from another answer file, or paired by position with one not aligned to it.
        print(f"note: {disagree} prediction line(s) carry an answer that differs from the ground truth; "
              "using the ground truth", file=sys.stderr)
    return preds


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Judge video QA predictions with a GPT model (Video-ChatGPT protocol).")
    parser.add_argument("--pred-path", required=True,
                        help='JSON-lines predictions: {"id", "question", "answer", "pred"} per line')
    parser.add_argument("--output-dir", required=True,
                        help="folder for the per-item cache files, keyed by id, judge model and prompt version")
    parser.add_argument("--output-json", required=True, help="combined {id: [reply, qa]} file to write")
    parser.add_argument("--gt-file-answers", default=None,
                        help="test_a*.json ground truth, joined by question_id (overrides the lines' answers); "
                             "its questions without a prediction make the score partial")
    parser.add_argument("--max-parse-attempts", type=positive_int, default=3,
                        help="attempts per item while the reply is not a valid verdict (default 3)")
    parser.add_argument("--benchmark", choices=DATASETS, default=None,
                        help="dataset key recorded in --score-file (required with it)")
    parser.add_argument("--score-file", default=None,
                        help="write accuracy (%%) and average score here for llava.eval.summarize")
    add_allow_partial(parser)
    add_judge_args(parser, default_model="gpt-3.5-turbo")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Judge, cache, combine and aggregate; exits with status 1 if the score would cover only part of the items."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.score_file and not args.benchmark:
        parser.error("--score-file needs --benchmark")
    gt = load_gt_answers(args.gt_file_answers) if args.gt_file_answers else None
    check_answers(args.pred_path)  # before the first paid request
    preds = load_predictions(args.pred_path, gt)
    judge = judge_from_args(args, parse_attempts=args.max_parse_attempts)
    report = judge_many(preds, lambda qa: judge_item(judge, qa), args.output_dir,
                        context=cache_context(args.judge_model), is_valid=is_valid_result, workers=args.workers,
                        desc=f"judging ({args.judge_model})")
    tally = Tally(list(preds) if gt is None else list(gt), list(report.results), report.failures)
    print(f"{len(preds)} predictions: {report.cached} verdict(s) from the cache, {report.judged} asked now, "
          f"{len(report.failures)} failed")
    write_json(args.output_json, {i: [r["reply"], preds[i]] for i, r in report.results.items()})
    summary = aggregate(r["reply"] for r in report.results.values()) if report.results else None
    if summary:
        label = "" if tally.complete else f" (PARTIAL: {len(tally.judged)} of {len(tally.expected)} items)"
        print(f"Yes count: {summary['yes']}\nNo count: {summary['no']}")
        print(f"Accuracy: {summary['accuracy']:.2f}{label}\nAverage score: {summary['score']:.2f}{label}")
    if not tally.complete and not (args.allow_partial and summary):
        tally.refuse([Path(args.output_dir) / FAILURES_FILE])
    models = sorted({r["model"] for r in report.results.values()})
    write_score(args.score_file, args.benchmark, summary["accuracy"], "accuracy",
                {"score": summary["score"], "count": summary["count"], "yes": summary["yes"], "no": summary["no"],
                 "judge_model": args.judge_model, "judge_models_reported": models},
                answers_file=args.pred_path, partial=tally.partial(f"the verdicts on {args.pred_path}"))
    print(tally.line())
    return summary


if __name__ == "__main__":
    cli(main)
