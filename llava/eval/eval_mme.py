"""Score MME answers locally; reported metric = perception score (scorers.md §9).

    python -m llava.eval.eval_mme --question-file llava_mme.jsonl --result-file answers.jsonl \
        --gt-dir MME_Benchmark_release_version [--output-dir eval_tool/answers/EXP] [--score-file S]

``--gt-dir`` is either the official release folder (``<category>/questions_answers_YN/<stem>.txt``
or ``<category>/<stem>.txt``, lines ``question<TAB>answer``) or a folder of ``<category>.txt``
files with ``image<TAB>question<TAB>answer`` lines.  ``--output-dir`` receives the
``<category>.txt`` files that the official ``eval_tool/calculation.py`` reads, byte-identical to those of
LLaVA's ``convert_answer_to_mme.py`` (for answers in question order without tabs or newlines).

Every question needs exactly one answer; ``--allow-partial`` scores a partial run, the unanswered
questions counting as wrong (acc+ pairs an image's questions), and marks the score partial.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llava.eval.provenance import write_score
from llava.eval.utils import (ArgumentParser, InputError, add_allow_partial, check_coverage, cli, iter_jsonl,
                              require_keys)

PERCEPTION = ("existence", "count", "position", "color", "posters",
              "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
LLAVA_SUFFIX = "Answer the question using a single word or phrase."
MME_SUFFIX = "Please answer yes or no."

GroundTruth = dict[tuple[str, str, str], str]  # (category, image stem, question) -> "Yes"/"No"


def _gt_answer(answer: str, where: str) -> str:
    """The GT answer, checked to be yes or no in any case (calculation.py asserts the same)."""
    if answer.lower() not in ("yes", "no"):
        raise InputError(f"{where}: GT answer must be Yes or No, got {answer!r}")
    return answer


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """Tab-split, whitespace-stripped non-blank lines of a GT file, with line numbers."""
    try:
        with open(path, encoding="utf-8") as f:
            return [(n, line.strip().split("\t")) for n, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def plain_name(name: str, where: str) -> str:
    """``name`` if it is a single file name, so that a path built from it stays in its folder."""
    if name in ("", ".", "..") or PurePosixPath(name).name != name or "\\" in name or "\0" in name:
        raise InputError(f"{where}: {name!r} is not a plain file name (a path built from it would leave its folder)")
    return name


def load_ground_truth(gt_dir: str, categories: set[str]) -> GroundTruth:
    """Read the GT of ``categories`` from either supported ``--gt-dir`` layout."""
    root = Path(gt_dir)
    if not root.is_dir():
        raise InputError(f"--gt-dir {gt_dir}: not a folder")
    gt: GroundTruth = {}
    for category in sorted(categories):
        flat, folder = root / f"{category}.txt", root / category
        if flat.is_file():
            for lineno, fields in _read_lines(flat):
                where = f"{flat}:{lineno}"
                if len(fields) != 3:
                    raise InputError(f"{where}: expected image<TAB>question<TAB>answer")
                image, question, answer = fields
                gt[category, PurePosixPath(image).stem, question] = _gt_answer(answer, where)
        elif folder.is_dir():
            # Categories shipping an images/ folder keep their QA files in questions_answers_YN/.
            qa_dir = folder / "questions_answers_YN" if (folder / "images").is_dir() else folder
            qa_files = sorted(qa_dir.glob("*.txt"))
            if not qa_files:
                raise InputError(f"{qa_dir}: no question files")
            for path in qa_files:
                for lineno, fields in _read_lines(path):
                    where = f"{path}:{lineno}"
                    if len(fields) != 2:
                        raise InputError(f"{where}: expected question<TAB>answer")
                    gt[category, path.stem, fields[0]] = _gt_answer(fields[1], where)
        else:
            raise InputError(f"--gt-dir {gt_dir}: neither {category}.txt nor {category}/ found")
    return gt


def gt_question(text: str) -> str:
    """MME's question for a LLaVA prompt: LLaVA's suffix swapped for MME's yes/no instruction."""
    question = text.replace(LLAVA_SUFFIX, "").strip()
    return question if MME_SUFFIX in question else f"{question} {MME_SUFFIX}"


def parse_prediction(text: str) -> str:
    """``calculation.py``'s rule: exact yes/no, else judge by the first 4 lower-cased characters."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    return "no" if "no" in prefix else "other"


def clean(text: str) -> str:
    """Prediction as written to the official files: a newline or tab would corrupt the line."""
    return text.replace("\r", " ").replace("\n", " ").replace("\t", " ")


@dataclass
class Record:
    """One MME question with its GT and (cleaned) model output."""

    image: str  # image file name: an image's questions form its acc+ group
    gt_file: str  # "<image stem>.txt", the first column of convert_answer_to_mme.py's files
    question: str
    gt: str
    pred: str = ""


@dataclass
class SubtaskScore:
    """acc and acc+ of one subtask, as fractions."""

    questions: int
    acc: float
    acc_plus: float
    other: int

    @property
    def score(self) -> float:
        return 100 * self.acc + 100 * self.acc_plus


def load_records(question_file: str, result_file: str, gt_dir: str,
                 allow_partial: bool = False) -> tuple[dict[str, list[Record]], dict | None]:
    """Records per category, in question-file order, with the predictions joined in; and the partial record."""
    questions: list[tuple[str, str, str, str]] = []  # (category, question_id, text, where)
    for lineno, q in iter_jsonl(question_file):
        where = f"{question_file}:{lineno}"
        require_keys(q, ("question_id", "text", "category"), where)
        if not all(isinstance(q[k], str) for k in ("question_id", "text", "category")):
            raise InputError(f"{where}: 'question_id', 'text' and 'category' must be strings")
        # The category names the GT file or folder read and the official file written.
        plain_name(q["category"], f"{where}: category")
        questions.append((q["category"], q["question_id"], q["text"], where))
    if not questions:
        raise InputError(f"{question_file}: no questions")
    gt = load_ground_truth(gt_dir, {c for c, *_ in questions})

    # question_id is the image path, shared by an image's two questions, so the text disambiguates.
    records: dict[str, list[Record]] = {}
    by_key: dict[tuple[str, str], Record] = {}
    for category, qid, text, where in questions:
        image = PurePosixPath(qid).name
        stem = PurePosixPath(qid).stem
        question = gt_question(text)
        if (category, stem, question) not in gt:
            # Seven MME questions have two spaces before "Please answer yes or no.".
            question = question.replace(f" {MME_SUFFIX}", f"  {MME_SUFFIX}")
        if (category, stem, question) not in gt:
            raise InputError(f"{where}: no GT in {gt_dir} for {category}/{stem}: {gt_question(text)!r}")
        if (qid, text) in by_key:
            raise InputError(f"{where}: duplicate question {text!r} for {qid!r}")
        by_key[qid, text] = record = Record(image, f"{stem}.txt", question, gt[category, stem, question])
        records.setdefault(category, []).append(record)

    answered: dict[tuple[str, str], int] = {}
    for lineno, ans in iter_jsonl(result_file):
        where = f"{result_file}:{lineno}"
        require_keys(ans, ("question_id", "prompt", "text"), where)
        if not isinstance(ans["text"], str):
            raise InputError(f"{where}: 'text' must be a string")
        key = (ans["question_id"], ans["prompt"])
        if not isinstance(key[0], str) or not isinstance(key[1], str) or key not in by_key:
            raise InputError(f"{where}: no question {key[1]!r} for {key[0]!r} in {question_file}")
        if key in answered:
            raise InputError(f"{where}: duplicate answer for {key[0]!r}: {key[1]!r} (first at line {answered[key]})")
        answered[key] = lineno
        by_key[key].pred = clean(ans["text"])
    if not answered:
        raise InputError(f"{result_file}: no answers")
    partial = check_coverage(by_key, answered, result_file, allow_partial)
    if partial:
        # Keeping unanswered questions (as wrong) keeps the image pairs and the score's scale intact.
        print(f"the {partial['missing']} unanswered questions count as wrong", file=sys.stderr)
    return records, partial


def score_subtask(records: list[Record]) -> SubtaskScore:
    """acc over questions and acc+ over images (all of an image's questions right)."""
    per_image: dict[str, list[bool]] = {}
    other = 0
    for r in records:
        pred = parse_prediction(r.pred)
        other += pred == "other"
        per_image.setdefault(r.image, []).append(pred == r.gt.lower())
    right = sum(sum(v) for v in per_image.values())
    return SubtaskScore(len(records), right / len(records),
                        sum(all(v) for v in per_image.values()) / len(per_image), other)


def write_official(output_dir: str, records: dict[str, list[Record]]) -> None:
    """Write ``<category>.txt`` for ``calculation.py``, which pairs consecutive lines per image.

    Lines are ``<image stem>.txt<TAB>question<TAB>GT<TAB>prediction``, as ``convert_answer_to_mme.py`` writes.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for category, recs in records.items():
        by_image: dict[str, list[Record]] = {}
        for r in recs:
            by_image.setdefault(r.image, []).append(r)
        path = out / plain_name(f"{category}.txt", f"--output-dir {output_dir}: category {category!r}")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for group in by_image.values():
                for r in group:
                    f.write(f"{r.gt_file}\t{r.question}\t{r.gt}\t{r.pred}\n")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question-file", required=True, help="LLaVA question file llava_mme.jsonl")
    parser.add_argument("--result-file", required=True, help="LLaVA answer file (JSON-lines)")
    parser.add_argument("--gt-dir", required=True,
                        help="MME_Benchmark_release_version folder, or a folder of <category>.txt GT files")
    parser.add_argument("--output-dir",
                        help="optional folder (eval_tool/answers/<exp>) for calculation.py's <category>.txt files")
    parser.add_argument("--score-file", help="optional JSON file to record the score for summarize")
    add_allow_partial(parser)
    args = parser.parse_args(argv)

    records, partial = load_records(args.question_file, args.result_file, args.gt_dir, args.allow_partial)
    scores = {c: score_subtask(r) for c, r in records.items()}
    if args.output_dir:
        write_official(args.output_dir, records)
    totals = {}
    for name, subtasks in (("Perception", PERCEPTION), ("Cognition", COGNITION)):
        present = [c for c in subtasks if c in scores]
        totals[name.lower()] = sum(scores[c].score for c in present)
        print(f"=========== {name} ===========\ntotal score: {totals[name.lower()]:.2f}")
        for c in present:
            s = scores[c]
            print(f"\t {c}  score: {s.score:.2f} (acc {100 * s.acc:.2f}, acc+ {100 * s.acc_plus:.2f}, "
                  f"other {s.other})")
    unknown = sorted(scores.keys() - set(PERCEPTION) - set(COGNITION))
    if unknown:
        print(f"Warning: subtask(s) {', '.join(unknown)} are in neither total", file=sys.stderr)
    write_score(args.score_file, "mme", totals["perception"], "perception score (max 2000)",
                {"cognition": totals["cognition"],
                 "subtasks": {c: {"acc": s.acc, "acc_plus": s.acc_plus, "score": s.score, "questions": s.questions}
                              for c, s in scores.items()}},
                answers_file=args.result_file, partial=partial)


if __name__ == "__main__":
    cli(main)
