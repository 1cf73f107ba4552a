"""GPT judge for zero-shot video QA (TGIF, MSVD, MSRVTT, ActivityNet), scorers.md §12.

    python -m llava.eval.video.eval_video_qa --pred-path merge.jsonl --output-dir DIR \\
        --output-json results.json --judge-model gpt-3.5-turbo-0125 \\
        --gt-file-answers test_a_1k.json --benchmark msvd --score-file n_2048.json

Messages and aggregation are Video-LLaVA's (= Video-ChatGPT's), so numbers stay comparable.
Unlike upstream, ground truth is joined by id (upstream pairs by position, which breaks for
multi-GPU runs), retries are bounded, and only this prediction file's items are aggregated
(upstream also counts stale files left in the output folder).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

from llava.eval.judge import Judge, MalformedReply, add_judge_args, judge_from_args, judge_many, positive_int
from llava.eval.utils import InputError, iter_jsonl, read_json, require_keys, write_json, write_score

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


def build_messages(question: str, answer: str, pred: str) -> list[dict]:
    """The two chat messages upstream sends for one item."""
    user = ("Please evaluate the following video-based question-answer pair:\n\n"
            f"Question: {question}\nCorrect Answer: {answer}\nPredicted Answer: {pred}\n\n"
            + USER_INSTRUCTION)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_reply(text: str) -> dict:
    """Upstream's ``ast.literal_eval`` parse, additionally requiring ``{'pred': str, 'score': ...}``."""
    try:
        obj = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise MalformedReply(f"not a Python literal: {text[:200]!r}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("pred"), str) or "score" not in obj:
        raise MalformedReply(f"expected a dict with 'pred' (str) and 'score': {text[:200]!r}")
    try:
        json.dumps(obj)  # it is cached as JSON; a set or bytes value could not be
    except (TypeError, ValueError):
        raise MalformedReply(f"reply is not JSON-serialisable: {text[:200]!r}") from None
    return obj


def judge_item(judge: Judge, qa: QA) -> list:
    """``[reply_dict, qa]``, the upstream per-item file. No temperature is sent, as upstream (API default)."""
    reply, _ = judge.ask(build_messages(qa["q"], qa["a"], qa["pred"]), parse_reply)
    return [reply, qa]


def is_fresh(qa: QA, cached: Any) -> bool:
    """A cache file is reused only if it has the upstream shape and was made for this very item."""
    return (isinstance(cached, list) and len(cached) == 2 and isinstance(cached[0], dict)
            and cached[1] == qa)


def aggregate(items: Iterable[Sequence]) -> dict:
    """Upstream's accuracy and average score over ``[reply_dict, qa]`` items.

    Each item counts; its score is ``int(score)`` (4.8 -> 4). A lower-cased 'pred' containing
    "yes" is a yes, else one containing "no" is a no (so "I don't know" is a no). As in
    Video-LLaVA, an item whose score cannot be read counts with score 0 and is left out of accuracy.
    """
    count = score_sum = yes = no = unscorable = 0
    for reply, _qa in items:
        count += 1
        try:
            score_sum += int(reply["score"])
            pred = reply["pred"].lower()
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            unscorable += 1
            continue
        if "yes" in pred:
            yes += 1
        elif "no" in pred:
            no += 1
    if count == 0:
        raise ValueError("no judged items to aggregate")
    if yes + no == 0:
        raise ValueError("no judged item has a yes/no verdict; accuracy is undefined")
    return {"accuracy": 100 * yes / (yes + no), "score": score_sum / count,
            "count": count, "yes": yes, "no": no, "unscorable": unscorable}


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
        # The symptom of upstream's multi-GPU chunking bug, which pairs answers by position.
        print(f"note: {disagree} prediction line(s) carry an answer that differs from the ground truth; "
              "using the ground truth", file=sys.stderr)
    if gt is not None and len(gt) > len(preds):
        print(f"note: {len(gt) - len(preds)} ground-truth question(s) have no prediction", file=sys.stderr)
    return preds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Judge video QA predictions with a GPT model (Video-ChatGPT protocol).")
    parser.add_argument("--pred-path", required=True,
                        help='JSON-lines predictions: {"id", "question", "answer", "pred"} per line')
    parser.add_argument("--output-dir", required=True, help="folder for the per-item judge files <id>.json (the cache)")
    parser.add_argument("--output-json", required=True, help="combined {id: [reply, qa]} file to write")
    parser.add_argument("--gt-file-answers", default=None,
                        help="test_a*.json ground truth, joined by question_id (overrides the lines' answers)")
    parser.add_argument("--max-parse-attempts", type=positive_int, default=3,
                        help="attempts per item while the reply is not a valid dict (default 3)")
    parser.add_argument("--benchmark", choices=DATASETS, default=None,
                        help="dataset key recorded in --score-file (required with it)")
    parser.add_argument("--score-file", default=None,
                        help="write accuracy (%%) and average score here for llava.eval.summarize")
    add_judge_args(parser, default_model="gpt-3.5-turbo")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Judge, cache, combine and aggregate; exits with status 1 if any item failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.score_file and not args.benchmark:
        parser.error("--score-file needs --benchmark")
    gt = load_gt_answers(args.gt_file_answers) if args.gt_file_answers else None
    preds = load_predictions(args.pred_path, gt)
    judge = judge_from_args(args, parse_attempts=args.max_parse_attempts)
    report = judge_many(preds, lambda qa: judge_item(judge, qa), args.output_dir,
                        workers=args.workers, is_fresh=is_fresh, desc=f"judging ({args.judge_model})")
    print(f"{len(preds)} items: {report.cached} cached, {report.judged} judged, {len(report.failures)} failed")
    write_json(args.output_json, report.results)
    summary = aggregate(report.results.values()) if report.results else {}
    if summary:
        label = " (PARTIAL: failed items excluded)" if report.failures else ""
        print(f"Yes count: {summary['yes']}\nNo count: {summary['no']}")
        if summary["unscorable"]:
            print(f"Unscorable (counted as score 0, not in accuracy): {summary['unscorable']}")
        print(f"Accuracy: {summary['accuracy']:.2f}{label}\nAverage score: {summary['score']:.2f}{label}")
    print(f"Failures: {len(report.failures)}")
    if report.failures:
        # No score file: a partial number must not reach the summary table.
        raise SystemExit(f"{len(report.failures)} item(s) failed; rerun the same command to judge only them")
    write_score(args.score_file, args.benchmark, summary["accuracy"], "accuracy",
                {"score": summary["score"], "count": summary["count"], "yes": summary["yes"], "no": summary["no"],
                 "unscorable": summary["unscorable"], "judge_model": args.judge_model})
    return summary


if __name__ == "__main__":
    main()
