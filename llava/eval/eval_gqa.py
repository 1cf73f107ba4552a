"""Convert LLaVA GQA answers to GQA predictions and score them like the official eval.py (scorers.md §4).

    python -m llava.eval.eval_gqa --result-file merge.jsonl --questions testdev_balanced_questions.json \
        [--choices testdev_choices.json] [--consistency] [--predictions-out testdev_balanced_predictions.json]

The metrics of the official eval.py (ver 1.1), over the balanced questions:

- Accuracy: exact match with the gold answer; Binary and Open split it by whether the structural type is
  'query' (open); also per structural type, semantic type, reasoning steps and question words.
- Distribution: per global answer group, the chi-square of the predicted answer counts against the gold
  ones, averaged with the groups' sizes as weights, /100 (lower is better). Reported when the questions
  carry a ``groups.global``.
- Validity and plausibility (``--choices``): the share of predictions among the question's valid /
  plausible answers.
- Consistency (``--consistency``): over the questions answered correctly, the mean accuracy on their
  ``entailed`` questions. As in eval.py, every question of ``--questions`` then needs a prediction (pass
  ``{tier}_all_questions.json``).

Grounding needs the model's attention maps and is not computed (scene graphs serve only grounding).
The answers must cover the balanced questions (all questions with ``--consistency``) exactly once;
``--allow-partial`` scores the answered ones and marks the score partial.
"""
from __future__ import annotations

from collections import defaultdict

from llava.eval.provenance import write_score
from llava.eval.utils import (ArgumentParser, InputError, add_allow_partial, check_coverage, cli, iter_jsonl,
                              read_json, require_keys, write_json)

# Operations that eval.py does not count as reasoning steps (substrings of "operation: argument").
NON_STEPS = ("exist", "query: name", "choose name")
# eval.py accepts any of these for questions whose detailed type contains "Common".
COMMON_GROUP = ("color", "material", "shape")
BREAKDOWNS = (("structural", "structural type"), ("semantic", "semantic type"), ("steps", "steps number"),
              ("length", "words number"))


def convert(result_file: str) -> list[dict]:
    """``[{"questionId": str, "prediction": str}]``: text without trailing periods, lower-cased; ids unique."""
    preds, seen = [], {}
    for lineno, res in iter_jsonl(result_file):
        where = f"{result_file}:{lineno}"
        require_keys(res, ("question_id", "text"), where)
        qid, text = res["question_id"], res["text"]
        if not isinstance(text, str):
            raise InputError(f"{where}: 'text' must be a string")
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise InputError(f"{where}: question_id must be a string or an integer, got {qid!r}")
        # GQA ids are strings; eval.py also keys predictions by str(questionId).
        qid = str(qid)
        if qid in seen:
            raise InputError(f"{where}: duplicate answer for question_id {qid!r} (first at line {seen[qid]})")
        seen[qid] = lineno
        preds.append({"questionId": qid, "prediction": text.rstrip(".").lower()})
    return preds


def _check_question(q: object, where: str, consistency: bool, choices: bool) -> None:
    """Require the fields eval.py reads from a question (balanced ones are scored, the others only entailed)."""
    if not isinstance(q, dict):
        raise InputError(f"{where}: expected an object")
    require_keys(q, ("isBalanced", "answer"), where)
    if not isinstance(q["answer"], str):
        raise InputError(f"{where}: 'answer' must be a string")
    if not q["isBalanced"]:
        return
    require_keys(q, ("question", "types", "semantic", "groups"), where)
    if not isinstance(q["question"], str):
        raise InputError(f"{where}: 'question' must be a string")
    if not isinstance(q["types"], dict) or not isinstance(q["groups"], dict):
        raise InputError(f"{where}: 'types' and 'groups' must be objects")
    type_keys = ("structural", "semantic", *(("detailed",) if choices else ()))
    require_keys(q["types"], type_keys, f"{where}: types")
    require_keys(q["groups"], ("global",), f"{where}: groups")
    group = q["groups"]["global"]
    if not all(isinstance(q["types"][k], str) for k in type_keys) or not (group is None or isinstance(group, str)):
        raise InputError(f"{where}: the types and the global group must be strings")
    if consistency:
        require_keys(q, ("entailed",), where)
        if not isinstance(q["entailed"], list) or not all(isinstance(e, str) for e in q["entailed"]):
            raise InputError(f"{where}: 'entailed' must be a list of question ids")
    if not isinstance(q["semantic"], list) or not all(isinstance(op, dict) and {"operation", "argument"} <= op.keys()
                                                      for op in q["semantic"]):
        raise InputError(f"{where}: 'semantic' must be a list of {{operation, argument}} objects")


def steps_number(question: dict) -> int:
    """eval.py's reasoning length: the program's operations, less the existence and name-query ones."""
    return sum(not any(o in f"{op['operation']}: {op['argument']}" for o in NON_STEPS) for op in question["semantic"])


def belongs(answer: str, group: list[str], question: dict) -> bool:
    """eval.py's validity / plausibility test of one prediction."""
    if "Common" in question["types"]["detailed"]:
        group = COMMON_GROUP
    return answer in group


def chi_square(gold: dict[str, dict[str, int]], predicted: dict[str, dict[str, int]]) -> float | None:
    """eval.py's ``chiSquare``: per group, sum (o - e)² / e over the gold answers; mean weighted by group size.

    None where no question has a global group (eval.py divides by zero there).
    """
    total, weight = 0.0, 0
    for group, counts in gold.items():
        score = 0.0
        for answer, e in counts.items():
            score += float(predicted[group].get(answer, 0) - e) ** 2 / e
        size = sum(counts.values())
        total += score * size
        weight += size
    return total / weight if weight else None


def _avg100(values: list[float]) -> float:
    """eval.py's ``avg(l) * 100``, in the same float operations (0 for an empty list)."""
    return float(sum(values)) / len(values) * 100 if values else 0.0


def score(questions: dict, predictions: list[dict], questions_file: str = "questions", *,
          choices: dict | None = None, consistency: bool = False, allow_partial: bool = False,
          source: str = "predictions", choices_file: str = "choices") -> dict:
    """eval.py's metrics (percent) over the balanced questions; None for those whose inputs are not given."""
    for qid, q in questions.items():
        _check_question(q, f"{questions_file}: question {qid}", consistency, choices is not None)
    pred = {p["questionId"]: p["prediction"] for p in predictions}
    unknown = [qid for qid in pred if qid not in questions]
    if unknown:
        raise InputError(f"{source}: {len(unknown)} answer(s) to questions not in {questions_file}, "
                         f"e.g. {', '.join(map(repr, unknown[:3]))}")
    balanced = [qid for qid, q in questions.items() if q["isBalanced"]]
    if not balanced:
        raise InputError(f"{questions_file}: no balanced questions")
    expected = list(questions) if consistency else balanced
    expected_set = set(expected)
    partial = check_coverage(expected, [qid for qid in pred if qid in expected_set], source, allow_partial,
                             "question" if consistency else "balanced question")

    accuracy, by_answer_type = [], {"binary": [], "open": []}
    per: dict[str, dict] = {kind: defaultdict(list) for kind, _ in BREAKDOWNS}
    validity, plausibility, consistent = [], [], []
    gold_dist: dict = defaultdict(lambda: defaultdict(int))
    pred_dist: dict = defaultdict(lambda: defaultdict(int))
    for qid in balanced:
        if qid not in pred:  # only with allow_partial: the answered questions are scored
            continue
        q, predicted = questions[qid], pred[qid]
        correct = predicted == q["answer"]
        s = float(correct)
        accuracy.append(s)
        per["structural"][q["types"]["structural"]].append(s)
        per["semantic"][q["types"]["semantic"]].append(s)
        per["steps"][steps_number(q)].append(s)
        per["length"][len(q["question"].split())].append(s)
        by_answer_type["open" if q["types"]["structural"] == "query" else "binary"].append(s)
        if choices is not None:
            entry = choices.get(qid)
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), list) for k in ("valid", "plausible")):
                raise InputError(f"{choices_file}: question {qid}: expected 'valid' and 'plausible' answer lists")
            validity.append(float(belongs(predicted, entry["valid"], q)))
            plausibility.append(float(belongs(predicted, entry["plausible"], q)))
        group = q["groups"]["global"]
        if group is not None:
            gold_dist[group][q["answer"]] += 1
            pred_dist[group][predicted] += 1
        if consistency and correct:
            entailed = [eid for eid in q["entailed"] if eid != qid]
            missing = [eid for eid in entailed if eid not in questions]
            if missing:
                raise InputError(f"{questions_file}: question {qid}: entailed question {missing[0]} is not in the file")
            # Entailed questions without a prediction occur only with allow_partial; they are left out.
            hits = [float(pred[eid] == questions[eid]["answer"]) for eid in entailed if eid in pred]
            if hits:
                consistent.append(float(sum(hits)) / len(hits))
    distribution = chi_square(gold_dist, pred_dist)
    return {
        "accuracy": _avg100(accuracy), "binary": _avg100(by_answer_type["binary"]),
        "open": _avg100(by_answer_type["open"]), "questions": len(accuracy),
        "consistency": _avg100(consistent) if consistency else None,
        "validity": _avg100(validity) if choices is not None else None,
        "plausibility": _avg100(plausibility) if choices is not None else None,
        "distribution": None if distribution is None else distribution / 100,
        **{kind: {t: (_avg100(v), len(v)) for t, v in sorted(per[kind].items())} for kind, _ in BREAKDOWNS},
        "partial": partial,
    }


def _load_object(path: str, what: str) -> dict:
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object mapping question id -> {what}")
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result-file", required=True, help="merged LLaVA answer file (JSON-lines)")
    parser.add_argument("--questions",
                        help="official {tier}_questions.json, e.g. testdev_balanced_questions.json (omit to only "
                             "convert)")
    parser.add_argument("--choices", help="official {tier}_choices.json: adds validity and plausibility")
    parser.add_argument("--consistency", action="store_true",
                        help="also score consistency over the entailed questions; every question of --questions "
                             "then needs a prediction (pass {tier}_all_questions.json)")
    parser.add_argument("--predictions-out", help="optional path for the GQA predictions JSON list")
    parser.add_argument("--score-file", help="optional JSON file to record the score for summarize")
    add_allow_partial(parser)
    args = parser.parse_args(argv)
    if args.questions is None and args.predictions_out is None:
        parser.error("nothing to do: give --questions to score and/or --predictions-out to convert")
    if args.questions is None and (args.choices or args.consistency):
        parser.error("--choices and --consistency need --questions")
    predictions = convert(args.result_file)
    if args.predictions_out:
        # Byte-identical to LLaVA's convert_gqa_for_eval.py (json.dump defaults: \\u escapes, no newline).
        write_json(args.predictions_out, predictions, ensure_ascii=True)
        print(f"wrote {len(predictions)} predictions to {args.predictions_out}")
    if args.questions is None:
        return
    questions = _load_object(args.questions, "question")
    choices = _load_object(args.choices, "choices") if args.choices else None
    s = score(questions, predictions, args.questions, choices=choices, consistency=args.consistency,
              allow_partial=args.allow_partial, source=args.result_file, choices_file=args.choices)
    print(f"Binary: {s['binary']:.2f}%\nOpen: {s['open']:.2f}%\nAccuracy: {s['accuracy']:.2f}%")
    for metric in ("consistency", "validity", "plausibility"):
        if s[metric] is not None:
            print(f"{metric.capitalize()}: {s[metric]:.2f}%")
    if s["distribution"] is not None:
        print(f"Distribution: {s['distribution']:.2f} (lower is better)")
    for kind, title in BREAKDOWNS:
        print(f"\nAccuracy / {title}:")
        for t, (acc, n) in s[kind].items():
            print(f"  {t}: {acc:.2f}% ({n} questions)")
    details = {k: s[k] for k in ("binary", "open", "questions", "consistency", "validity", "plausibility",
                                 "distribution") if s[k] is not None}
    write_score(args.score_file, "gqa", s["accuracy"], "accuracy", details, answers_file=args.result_file,
                partial=s["partial"])


if __name__ == "__main__":
    cli(main)
