"""Optional GPT-4 grader for MM-Vet, following yuweihao/MM-Vet ``mm-vet_evaluator.py`` (scorers.md §11).

    python -m llava.eval.eval_mmvet --mmvet-data mm-vet/mm-vet.json \\
        --result-file results/llava-v1.5-13b.json --output-dir results --judge-model gpt-4-0613

Writes ``<model>_<gpt>-grade-<n>runs.json`` (official structure) and the capability /
capability-integration csv files. Grades are cached per question and run under
``<output-dir>/<model>_<gpt>-cache/run<j>/``, keyed by judge model and prompt version too, so an
interrupted run resumes. A question whose grade failed (transport errors or unusable replies past the
retry budget) or that has no answer makes the score partial: without ``--allow-partial`` no grade, csv or
score file is written and the run exits 1; rerunning grades only what is missing.
"""
from __future__ import annotations

import csv
import json
import os
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

from llava.eval.judge import (FAILURES_FILE, Judge, Tally, add_judge_args, judge_from_args, judge_many, positive_int,
                              prompt_sha256)
from llava.eval.provenance import check_answers, write_score
from llava.eval.utils import (ArgumentParser, InputError, add_allow_partial, cli, read_json, require_keys, write_json)

# Exact few-shot prompt of yuweihao/MM-Vet mm-vet_evaluator.py (it ends with a newline).
FEW_SHOT_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""
REASK_SUFFIX = "\nPredict the correctness of the answer (digit): "
MAX_REASKS = 5
MAX_TOKENS = 3


def build_query(question: str, answer: str, prediction: str) -> str:
    """The grader's single user message: few-shot prompt, then the row to complete."""
    gt = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return FEW_SHOT_PROMPT + "\n" + " | ".join([question, gt, prediction, ""])


def parse_score(content: str) -> tuple[str, float | None]:
    """The reply's first space-separated token and its score, or None if not a number in [0, 1]."""
    token = content.split(" ")[0].strip()
    try:
        score = float(token)
    except ValueError:
        return token, None
    # Upstream's range check lets NaN through (its comparisons are False); a NaN grade is refused here.
    return token, score if 0.0 <= score <= 1.0 else None


def grade(judge: Judge, query: str) -> dict:
    """One grade, ``{"model", "content", "score"}``, with upstream's re-ask rule.

    The first call is at temperature 0. While the reply does not parse, re-ask with
    :data:`REASK_SUFFIX`, at 0.0, 0.5, 1.0, 1.5, 2.0; the fifth re-ask's reply is not parsed
    and the grade is 0.0. A parsed grade stores the parsed token as its content, as upstream.
    Rate limits and other transport errors are retried by :meth:`Judge.chat` (upstream: sleep 30 s).
    """
    reply = judge.chat([{"role": "user", "content": query}], max_tokens=MAX_TOKENS, temperature=0.0)
    temperature = 0.0
    for _ in range(MAX_REASKS):
        token, score = parse_score(reply.content)
        if score is not None:
            return {"model": reply.model, "content": token, "score": score}
        reply = judge.chat([{"role": "user", "content": query + REASK_SUFFIX}],
                           max_tokens=MAX_TOKENS, temperature=temperature)
        temperature += 0.5
    return {"model": reply.model, "content": reply.content, "score": 0.0}


def cache_context(judge_model: str) -> dict:
    """What decides a grade besides the question: the judge model and the grading protocol (prompt, re-ask
    suffix, token limit, re-ask count), so a change to any of them misses the cache."""
    return {"judge_model": judge_model,
            "prompt_sha256": prompt_sha256(build_query("{question}", "{answer}", "{prediction}"), REASK_SUFFIX,
                                           MAX_TOKENS, MAX_REASKS)}


def is_score(value: Any) -> bool:
    """Whether ``value`` is an MM-Vet grade: a number in [0, 1] (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def is_valid_grade(result: Any) -> bool:
    """Whether a cached result is one :func:`grade` could have returned (an older or edited file may not be)."""
    return (isinstance(result, dict) and isinstance(result.get("model"), str)
            and isinstance(result.get("content"), str) and is_score(result.get("score")))


def load_mmvet(path: str | os.PathLike) -> dict[str, dict]:
    """The official annotation ``{"v1_0": {"imagename", "capability", "question", "answer"}, ...}``."""
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected a non-empty JSON object keyed by v1_<id>")
    for key, value in data.items():
        where = f"{path}: {key}"
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected an object")
        require_keys(value, ("capability", "question", "answer"), where)
        caps = value["capability"]
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
            raise InputError(f"{where}: capability must be a non-empty list of strings")
        if not isinstance(value["question"], str) or not isinstance(value["answer"], str):
            raise InputError(f"{where}: question and answer must be strings")
    return data


_SPACE = re.compile(r"\s*")


def _object_lines(text: str) -> list[tuple[str, int]]:
    """``(key, line)`` of every top-level member of a JSON object text, duplicates kept (``json`` keeps the last)."""
    decoder = json.JSONDecoder()
    members: list[tuple[str, int]] = []
    pos = _SPACE.match(text).end() + 1  # past "{"
    line, counted = 1, 0
    while True:
        pos = _SPACE.match(text, pos).end()
        if text[pos] == "}":
            return members
        line, counted = line + text.count("\n", counted, pos), pos
        key, pos = json.decoder.scanstring(text, pos + 1)
        members.append((key, line))
        pos = _SPACE.match(text, pos).end() + 1  # past ":"
        _, pos = decoder.raw_decode(text, _SPACE.match(text, pos).end())
        pos = _SPACE.match(text, pos).end()
        if text[pos] == ",":
            pos += 1


def load_results(path: str | os.PathLike, keys: Collection[str]) -> dict[str, str]:
    """The ``{"v1_<id>": text}`` submission; a key twice (naming its line) or not in ``keys`` is an error.

    Questions it does not answer are left out; they make the score partial.
    """
    results = read_json(path)
    if not isinstance(results, dict):
        raise InputError(f"{path}: expected a JSON object {{\"v1_<id>\": text}}")
    seen: set[str] = set()
    for key, line in _object_lines(Path(path).read_text(encoding="utf-8")):
        if key in seen:
            raise InputError(f"{path}:{line}: duplicate id {key!r}")
        seen.add(key)
    extra = [k for k in results if k not in keys]
    if extra:
        raise InputError(f"{path}: {len(extra)} answer(s) to questions not in the annotation, e.g. "
                         f"{', '.join(map(repr, extra[:3]))}")
    for k, text in results.items():
        if not isinstance(text, str):
            raise InputError(f"{path}: {k} must be a string")
    if not results:
        raise InputError(f"{path}: no answers")
    return results


def aggregate(scores: Mapping[str, Sequence[float]], capabilities: Mapping[str, Sequence[str]],
              decimal_places: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """Upstream's capability and capability-integration rows over ``scores[key][run]``.

    Each column is 100 × (sum of the scores of its questions / their number), computed per run,
    averaged over runs and rounded; "total" covers all questions, "std" is the population std of
    the run totals and "runs" lists them. Columns are ordered by question count, most first,
    ties in order of first appearance. Upstream names a capability combination by joining a
    Python set, whose order varies between processes; here its members follow the column order.
    """
    keys = list(capabilities)
    if not keys:
        raise ValueError("no questions")
    missing = [k for k in keys if k not in scores]
    if missing:
        raise ValueError(f"no grades for {len(missing)} question(s), e.g. {', '.join(missing[:5])}")
    num_run = len(scores[keys[0]])
    if num_run == 0 or any(len(scores[k]) != num_run for k in keys):
        raise ValueError("every question needs the same, non-zero number of runs")
    bad = [k for k in keys if not all(is_score(s) for s in scores[k])]
    if bad:
        raise ValueError(f"grades outside [0, 1] for {len(bad)} question(s), e.g. {', '.join(bad[:5])}")

    caps = {k: tuple(dict.fromkeys(capabilities[k])) for k in keys}
    columns = [c for c, _ in Counter(c for k in keys for c in caps[k]).most_common()]
    combos = Counter(frozenset(caps[k]) for k in keys)
    # sorted() is stable, so equal counts keep first-appearance order.
    combo_order = sorted(combos, key=lambda s: -combos[s])
    combo_name = {s: "_".join(c for c in columns if c in s) for s in combo_order}

    def column_sums(groups_of: Mapping[str, list[str]]) -> dict[str, list[float]]:
        sums: dict[str, list[float]] = {}
        counts: Counter = Counter()
        for k in keys:
            for g in groups_of[k]:
                counts[g] += 1
                run_sums = sums.setdefault(g, [0.0] * num_run)
                for i, s in enumerate(scores[k]):
                    run_sums[i] += s
        return {g: [100 * s / counts[g] for s in v] for g, v in sums.items()}

    per_cap = column_sums({k: [*caps[k], "total"] for k in keys})
    per_combo = column_sums({k: [combo_name[frozenset(caps[k])], "total"] for k in keys})
    totals = per_cap["total"]
    tail = {"std": round(statistics.pstdev(totals), decimal_places),
            "runs": "[" + ", ".join(str(round(t, decimal_places)) for t in totals) + "]"}

    def row(order: list[str], per: dict[str, list[float]]) -> dict[str, Any]:
        return {**{c: round(statistics.fmean(per[c]), decimal_places) for c in [*order, "total"]}, **tail}

    return row(columns, per_cap), row([combo_name[s] for s in combo_order], per_combo)


def write_row_csv(path: str | os.PathLike, model: str, row: Mapping[str, Any]) -> None:
    """One-row csv laid out like upstream's ``DataFrame.to_csv`` (blank first header cell)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["", *row])
        writer.writerow([model, *row.values()])


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Grade MM-Vet answers with a GPT model (official MM-Vet protocol).")
    parser.add_argument("--mmvet-data", required=True, help="official mm-vet.json annotation")
    parser.add_argument("--result-file", required=True, help='submission {"v1_<id>": text} (convert_mmvet_for_eval)')
    parser.add_argument("--output-dir", required=True, help="folder for the grade json, csv files and cache")
    parser.add_argument("--model-name", default=None, help="model name in output file names (default: result file stem)")
    parser.add_argument("--num-run", type=positive_int, default=1, help="grading runs; the MM-Vet paper used 5 (default 1)")
    parser.add_argument("--decimal-places", type=int, default=1, help="rounding of the reported scores (default 1)")
    parser.add_argument("--score-file", default=None, help="write the total score here for llava.eval.summarize")
    add_allow_partial(parser)
    add_judge_args(parser, default_model="gpt-4-0613")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Grade every run (cached), then write the grade json and csv files; exits 1 if the score would be partial."""
    args = build_parser().parse_args(argv)
    data = load_mmvet(args.mmvet_data)
    check_answers(args.result_file)  # before the first paid request
    results = load_results(args.result_file, data)
    model = args.model_name or Path(args.result_file).stem
    gpt = args.judge_model.replace("/", "_")
    out = Path(args.output_dir)
    cache = out / f"{model}_{gpt}-cache"
    queries = {k: build_query(v["question"], v["answer"], results[k]) for k, v in data.items() if k in results}
    judge = judge_from_args(args)
    context = cache_context(args.judge_model)
    reports = [judge_many(queries, lambda query: grade(judge, query), cache / f"run{j}", context=context,
                          is_valid=is_valid_grade, workers=args.workers,
                          desc=f"run {j + 1}/{args.num_run} ({args.judge_model})")
               for j in range(args.num_run)]
    failures: dict[str, str] = {}
    for j, report in enumerate(reports):
        for k, reason in report.failures.items():
            failures.setdefault(k, f"run {j}: {reason}")
    graded = [k for k in queries if k not in failures]
    tally = Tally(list(data), graded, {k: failures[k] for k in queries if k in failures})
    print(f"{len(queries)} answered question(s) x {args.num_run} run(s): "
          f"{sum(r.cached for r in reports)} grade(s) from the cache, {sum(r.judged for r in reports)} asked now, "
          f"{sum(len(r.failures) for r in reports)} failed")
    if graded:
        grades = {k: {f: [r.results[k][f] for r in reports] for f in ("model", "content", "score")} for k in graded}
        cap_row, combo_row = aggregate({k: g["score"] for k, g in grades.items()},
                                       {k: data[k]["capability"] for k in graded}, args.decimal_places)
        if not tally.complete:
            print(f"PARTIAL ({len(graded)} of {len(data)} questions graded):")
        for name, value in cap_row.items():
            print(f"{name}: {value}")
    if not tally.complete and not (args.allow_partial and graded):
        tally.refuse([cache / f"run{j}" / FAILURES_FILE for j, r in enumerate(reports) if r.failures])
    write_json(out / f"{model}_{gpt}-grade-{args.num_run}runs.json", grades, indent=4)
    write_row_csv(out / f"{model}_{gpt}-cap-score-{args.num_run}runs.csv", model, cap_row)
    write_row_csv(out / f"{model}_{gpt}-cap-int-score-{args.num_run}runs.csv", model, combo_row)
    write_score(args.score_file, "mmvet", cap_row["total"], "gpt_score",
                {"capabilities": cap_row, "judge_model": args.judge_model, "num_run": args.num_run,
                 "judge_models_reported": sorted({m for g in grades.values() for m in g["model"]})},
                answers_file=args.result_file, partial=tally.partial(f"the grades of {args.result_file}"))
    print(tally.line())
    return cap_row


if __name__ == "__main__":
    cli(main)
