"""Score POPE (COCO adversarial / popular / random) answers locally; reported metric = mean F1 (scorers.md §8).

    python -m llava.eval.eval_pope --annotation-dir pope/coco --question-file llava_pope_test.jsonl \
        --result-file answers.jsonl [--score-file score.json]

Upstream zips each split's labels with its answers by position, which is silently wrong once the
answer order differs from the annotation order.  Here every LLaVA question is matched to its POPE
annotation by (image, question text), which is unique within a split, and every answer to its
question by ``question_id``, so neither file order nor the LLaVA id offsets matter.  Every question of
the question file needs exactly one answer; ``--allow-partial`` scores the answered ones, marked partial.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llava.eval.provenance import write_score
from llava.eval.utils import (ArgumentParser, InputError, add_allow_partial, check_coverage, cli, iter_jsonl,
                              require_keys)

SPLITS = ("adversarial", "popular", "random")
NEGATIVE_WORDS = frozenset({"No", "not", "no"})


def parse_answer(text: str) -> str:
    """Map a model output to ``"yes"``/``"no"`` exactly like POPE's ``evaluate.py``.

    Only the text before the first '.' counts; commas are dropped and the rest is split on single
    spaces.  A ``No``/``not``/``no`` token means no; anything else, even empty text, means yes.
    """
    words = text.split(".", 1)[0].replace(",", "").split(" ")
    return "no" if NEGATIVE_WORDS.intersection(words) else "yes"


@dataclass
class SplitScore:
    """Confusion counts of one split, yes being the positive class."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def add(self, pred: str, label: str) -> None:
        if pred == "yes":
            if label == "yes":
                self.tp += 1
            else:
                self.fp += 1
        elif label == "no":
            self.tn += 1
        else:
            self.fn += 1

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.total

    @property
    def precision(self) -> float:
        # Upstream divides by zero when the model never says yes; 0 is the usual convention.
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def yes_ratio(self) -> float:
        return (self.tp + self.fp) / self.total

    def as_dict(self) -> dict:
        return {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn, "accuracy": self.accuracy,
                "precision": self.precision, "recall": self.recall, "f1": self.f1, "yes_ratio": self.yes_ratio}


def load_labels(annotation_dir: str, split: str) -> dict[tuple[str, str], str]:
    """Map (image, question) -> ``"yes"``/``"no"`` for ``coco_pope_<split>.json`` (JSON-lines)."""
    path = Path(annotation_dir) / f"coco_pope_{split}.json"
    labels: dict[tuple[str, str], str] = {}
    for lineno, ann in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_keys(ann, ("image", "text", "label"), where)
        if not isinstance(ann["image"], str) or not isinstance(ann["text"], str):
            raise InputError(f"{where}: 'image' and 'text' must be strings")
        if ann["label"] not in ("yes", "no"):
            raise InputError(f"{where}: label must be 'yes' or 'no', got {ann['label']!r}")
        key = (ann["image"], ann["text"])
        if key in labels:
            raise InputError(f"{where}: duplicate question {key[1]!r} for image {key[0]!r}")
        labels[key] = ann["label"]
    return labels


def load_questions(annotation_dir: str, question_file: str) -> dict[object, tuple[str, str]]:
    """Map each LLaVA ``question_id`` to its (split, GT label)."""
    labels: dict[str, dict[tuple[str, str], str]] = {}
    questions: dict[object, tuple[str, str]] = {}
    lines: dict[object, int] = {}
    for lineno, q in iter_jsonl(question_file):
        where = f"{question_file}:{lineno}"
        require_keys(q, ("question_id", "image", "text", "category"), where)
        if (not isinstance(q["question_id"], (int, str)) or isinstance(q["question_id"], bool)
                or not isinstance(q["text"], str) or not isinstance(q["image"], str)):
            raise InputError(f"{where}: 'question_id' must be an int or string, 'image' and 'text' strings")
        split = q["category"]
        if split not in SPLITS:
            raise InputError(f"{where}: category must be one of {', '.join(SPLITS)}, got {split!r}")
        if split not in labels:
            labels[split] = load_labels(annotation_dir, split)
        # LLaVA appends its answer-format instruction on a new line; POPE's text is the first line.
        key = (q["image"], q["text"].split("\n", 1)[0])
        if key not in labels[split]:
            raise InputError(f"{where}: no {split} annotation for image {key[0]!r}, question {key[1]!r}")
        if q["question_id"] in lines:
            raise InputError(f"{where}: duplicate question_id {q['question_id']!r} "
                             f"(first at line {lines[q['question_id']]})")
        lines[q["question_id"]] = lineno
        questions[q["question_id"]] = (split, labels[split][key])
    if not questions:
        raise InputError(f"{question_file}: no questions")
    return questions


def evaluate(annotation_dir: str, question_file: str, result_file: str,
             allow_partial: bool = False) -> tuple[dict[str, SplitScore], dict | None]:
    """Confusion counts per answered split, in :data:`SPLITS` order, and the partial record (None if complete)."""
    questions = load_questions(annotation_dir, question_file)
    scores: dict[str, SplitScore] = {}
    seen: dict[object, int] = {}
    for lineno, ans in iter_jsonl(result_file):
        where = f"{result_file}:{lineno}"
        require_keys(ans, ("question_id", "text"), where)
        qid = ans["question_id"]
        if not isinstance(qid, (int, str)) or isinstance(qid, bool) or qid not in questions:
            raise InputError(f"{where}: question_id {qid!r} is not in {question_file}")
        if qid in seen:
            raise InputError(f"{where}: duplicate answer for question_id {qid!r} (first at line {seen[qid]})")
        if not isinstance(ans["text"], str):
            raise InputError(f"{where}: 'text' must be a string")
        seen[qid] = lineno
        split, label = questions[qid]
        scores.setdefault(split, SplitScore()).add(parse_answer(ans["text"]), label)
    if not scores:
        raise InputError(f"{result_file}: no answers")
    # Upstream's zip silently truncates to the shorter list; here a gap is an error unless allowed.
    partial = check_coverage(questions, seen, result_file, allow_partial)
    return {s: scores[s] for s in SPLITS if s in scores}, partial


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-dir", required=True,
                        help="folder holding coco_pope_{adversarial,popular,random}.json (JSON-lines)")
    parser.add_argument("--question-file", required=True,
                        help="LLaVA question file llava_pope_test.jsonl (its category names the split)")
    parser.add_argument("--result-file", required=True, help="LLaVA answer file (JSON-lines)")
    parser.add_argument("--score-file", help="optional JSON file to record the score for summarize")
    add_allow_partial(parser)
    args = parser.parse_args(argv)

    scores, partial = evaluate(args.annotation_dir, args.question_file, args.result_file, args.allow_partial)
    for split, s in scores.items():
        print(f"Category: {split}, # samples: {s.total}")
        print(f"TP\tFP\tTN\tFN\n{s.tp}\t{s.fp}\t{s.tn}\t{s.fn}")
        print(f"Accuracy: {100 * s.accuracy:.2f}%\nPrecision: {100 * s.precision:.2f}%\n"
              f"Recall: {100 * s.recall:.2f}%\nF1 score: {100 * s.f1:.2f}%\nYes ratio: {100 * s.yes_ratio:.2f}%")
        if s.tp + s.fp == 0:
            print("Note: the model never answered yes; precision and F1 are reported as 0")
        print("=" * 40)
    mean_f1 = 100 * sum(s.f1 for s in scores.values()) / len(scores)
    print(f"Average F1 score: {mean_f1:.2f}")
    write_score(args.score_file, "pope", mean_f1, "mean F1 over splits",
                {split: s.as_dict() for split, s in scores.items()}, answers_file=args.result_file, partial=partial)


if __name__ == "__main__":
    cli(main)
