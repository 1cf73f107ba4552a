"""Score ScienceQA answers locally; reported metric = IMG accuracy (scorers.md §6).

    python -m llava.eval.eval_science_qa --base-dir scienceqa --result-file answers.jsonl \
        [--question-file llava_test_CQM-A.json] [--output-file out.json] [--output-result result.json]

The ground truth comes from ``<base-dir>/problems.json`` as upstream, or, where it is absent, from
LLaVA's question file (``gpt`` turn = answer letter, ``A. ...`` lines of the human turn = choices).
``--output-file`` and ``--output-result`` are byte-identical to upstream's (``json.dump`` with indent 2).

Every problem of the split needs exactly one answer, and an answer to a problem outside it is an error.
``--allow-partial`` scores a partial run as upstream does (a missing answer counts as FAILED, hence wrong
and non-image) and marks the score partial.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from llava.eval.provenance import write_score
from llava.eval.utils import (ArgumentParser, InputError, add_allow_partial, check_coverage, cli, iter_jsonl,
                              read_json, require_keys, write_json)

FAILED = "FAILED"
# Upstream's pattern: one capital letter after "The answer is", then any character.
ANSWER_PATTERN = re.compile(r"The answer is ([A-Z]).")


def parse_answer(text: str, options: list[str]) -> str:
    """Extract the chosen letter from a model output, or :data:`FAILED`."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = ANSWER_PATTERN.findall(text)
    return found[0] if len(found) == 1 else FAILED


def answer_position(letter: str, n_choices: int, options: list[str]) -> int:
    """Position of ``letter`` among the first ``n_choices`` options, else -1."""
    return options.index(letter) if letter in options[:n_choices] else -1


def count_choices(human: str, options: list[str]) -> int:
    """Number of choices listed as ``A. …``, ``B. …`` lines at the end of the human turn."""
    lines = human.split("\n")
    # The last "A. " line starts the choice block; earlier ones may belong to the context.
    starts = [i for i, line in enumerate(lines) if line.startswith(f"{options[0]}. ")]
    if not starts:
        return 0
    n = 0
    for line in lines[starts[-1]:]:
        # Lines not starting with the next letter continue a multi-line choice (e.g. a letter closing).
        if n < len(options) and line.startswith(f"{options[n]}. "):
            n += 1
    return n


def problems_from_question_file(path: str, options: list[str]) -> dict[str, dict]:
    """Build ``{pid: {"answer": position, "n_choices": n}}`` from LLaVA's ``llava_test_CQM-A.json``."""
    doc = read_json(path)
    if not isinstance(doc, list):
        raise InputError(f"{path}: expected a JSON list of conversations")
    problems = {}
    for i, item in enumerate(doc):
        where = f"{path}: item {i}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object")
        require_keys(item, ("id", "conversations"), where)
        turns = item["conversations"]
        if (not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2])
                or not isinstance(turns[0].get("value"), str) or not isinstance(turns[1].get("value"), str)):
            raise InputError(f"{where}: expected a human turn and a gpt turn with string values")
        n_choices = count_choices(turns[0]["value"], options)
        letter = turns[1]["value"].strip()
        if letter not in options[:n_choices]:
            raise InputError(f"{where}: answer {letter!r} is not one of its {n_choices} choices")
        problems[str(item["id"])] = {"answer": options.index(letter), "n_choices": n_choices}
    return problems


def load_problems(base_dir: str | None, question_file: str | None, split: str,
                  options: list[str]) -> dict[str, dict]:
    """Problems of ``split`` in split order, each with ``answer`` (position) and ``n_choices``."""
    base = Path(base_dir) if base_dir else None
    if base and (base / "problems.json").is_file():
        raw = read_json(base / "problems.json")
        if not isinstance(raw, dict):
            raise InputError(f"{base / 'problems.json'}: expected a JSON object keyed by problem id")
        problems = {}
        for pid, prob in raw.items():
            where = f"{base / 'problems.json'}: problem {pid}"
            if not isinstance(prob, dict):
                raise InputError(f"{where}: expected an object")
            require_keys(prob, ("answer", "choices"), where)
            if not isinstance(prob["choices"], list):
                raise InputError(f"{where}: 'choices' must be a list")
            if not isinstance(prob["answer"], int) or not 0 <= prob["answer"] < len(options):
                raise InputError(f"{where}: 'answer' must be an option position, got {prob['answer']!r}")
            problems[pid] = {"answer": prob["answer"], "n_choices": len(prob["choices"])}
        source = str(base / "problems.json")
    elif question_file:
        problems, source = problems_from_question_file(question_file, options), question_file
    else:
        raise InputError(f"--base-dir {base_dir}: no problems.json there and no --question-file given")

    if base and (base / "pid_splits.json").is_file():
        splits = read_json(base / "pid_splits.json")
        if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
            raise InputError(f"{base / 'pid_splits.json'}: no list for split {split!r}")
        if not all(isinstance(pid, (str, int)) for pid in splits[split]):
            raise InputError(f"{base / 'pid_splits.json'}: split {split!r} must list problem ids")
        pids = [str(pid) for pid in splits[split]]
    elif source == question_file:
        pids = list(problems)  # LLaVA's question file is itself one split
    else:
        raise InputError(f"--base-dir {base_dir}: problems.json found but pid_splits.json missing")
    missing = [pid for pid in pids if pid not in problems]
    if missing:
        raise InputError(f"{source}: {len(missing)} problem(s) of split {split!r} absent, e.g. {missing[0]!r}")
    if not pids:
        raise InputError(f"split {split!r} is empty")
    return {pid: problems[pid] for pid in pids}


def load_predictions(result_file: str) -> dict[str, dict]:
    """Answer lines keyed by ``str(question_id)``."""
    preds: dict[str, dict] = {}
    lines: dict[str, int] = {}
    for lineno, ans in iter_jsonl(result_file):
        where = f"{result_file}:{lineno}"
        require_keys(ans, ("question_id", "prompt", "text"), where)
        if not isinstance(ans["prompt"], str) or not isinstance(ans["text"], str):
            raise InputError(f"{where}: 'prompt' and 'text' must be strings")
        if not isinstance(ans["question_id"], (str, int)) or isinstance(ans["question_id"], bool):
            raise InputError(f"{where}: question_id must be a string or an integer, got {ans['question_id']!r}")
        pid = str(ans["question_id"])
        if pid in preds:
            raise InputError(f"{where}: duplicate answer for question_id {pid!r} (first at line {lines[pid]})")
        preds[pid], lines[pid] = ans, lineno
    return preds


def evaluate(problems: dict[str, dict], preds: dict[str, dict], options: list[str]) -> tuple[dict, dict]:
    """Return (``--output-file`` document, ``--output-result`` document) in upstream's formats."""
    analysis: dict[str, list] = {"correct": [], "incorrect": []}
    result: dict = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    for pid, prob in problems.items():
        # A missing prediction counts as FAILED and, having no prompt, as non-image.
        pred = preds.get(pid, {"text": FAILED, "prompt": "Unknown"})
        parsed = parse_answer(pred["text"], options)
        position = answer_position(parsed, prob["n_choices"], options)
        analysis["correct" if position == prob["answer"] else "incorrect"].append({
            "question_id": pid,
            "parsed_ans": parsed,
            "ground_truth": options[prob["answer"]],
            "question": pred["prompt"],
            "pred": pred["text"],
            "is_multimodal": "<image>" in pred["prompt"],
        })
        result["results"][pid] = position
        result["outputs"][pid] = pred["text"]
    correct, count = len(analysis["correct"]), len(problems)
    # Upstream's order of operations: c / n * 100 and 100 * c / n differ in the last digit for some counts.
    result.update(acc=correct / count * 100, correct=correct, count=count)
    return analysis, result


def img_counts(analysis: dict) -> tuple[int, int]:
    """(correct, total) over the image questions."""
    correct = sum(x["is_multimodal"] for x in analysis["correct"])
    return correct, correct + sum(x["is_multimodal"] for x in analysis["incorrect"])


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", help="ScienceQA data folder holding problems.json and pid_splits.json")
    parser.add_argument("--question-file",
                        help="LLaVA's llava_test_CQM-A.json, the ground truth when problems.json is absent")
    parser.add_argument("--result-file", required=True, help="LLaVA answer file (JSON-lines)")
    parser.add_argument("--output-file", help="optional JSON file listing correct and incorrect answers")
    parser.add_argument("--output-result", help="optional JSON file with acc, results and outputs per problem")
    parser.add_argument("--split", default="test", help="split of pid_splits.json to score (default: test)")
    parser.add_argument("--options", nargs="+", default=["A", "B", "C", "D", "E"],
                        help="option letters in order (default: A B C D E)")
    parser.add_argument("--score-file", help="optional JSON file to record the score for summarize")
    add_allow_partial(parser)
    args = parser.parse_args(argv)

    problems = load_problems(args.base_dir, args.question_file, args.split, args.options)
    preds = load_predictions(args.result_file)
    unknown = [pid for pid in preds if pid not in problems]
    if unknown:
        raise InputError(f"{args.result_file}: {len(unknown)} answer(s) to problems not in split {args.split!r}, "
                         f"e.g. {', '.join(map(repr, unknown[:3]))}")
    partial = check_coverage(problems, preds, args.result_file, args.allow_partial, "problem")
    if partial:
        print(f"the {partial['missing']} unanswered problems count as FAILED (wrong, non-image), as upstream's do",
              file=sys.stderr)
    analysis, result = evaluate(problems, preds, args.options)
    img_correct, img_total = img_counts(analysis)
    if not img_total:
        print("Note: no answered image question; IMG-Accuracy is reported as 0", file=sys.stderr)
    img_acc = img_correct / img_total * 100 if img_total else 0.0
    print(f"Total: {result['count']}, Correct: {result['correct']}, Accuracy: {result['acc']:.2f}%, "
          f"IMG-Accuracy: {img_acc:.2f}%")
    # json.dump(..., indent=2) as upstream: \u escapes, no trailing newline.
    if args.output_file:
        write_json(args.output_file, analysis, indent=2, ensure_ascii=True)
    if args.output_result:
        write_json(args.output_result, result, indent=2, ensure_ascii=True)
    write_score(args.score_file, "sqa_img", img_acc, "IMG accuracy",
                {"img_correct": img_correct, "img_total": img_total, "correct": result["correct"],
                 "total": result["count"], "accuracy": result["acc"]},
                answers_file=args.result_file, partial=partial)


if __name__ == "__main__":
    cli(main)
