"""The toy world's demo: a leaderboard of pruning methods on a trained tiny LLaVA, in minutes on a CPU.

    python -m llava.tools.toy_demo [--zoo] [--methods ...] [--tokens 576 58 29 14] [--world v3] [--out playground/demo]

Loads the toy checkpoint of ``--world`` (v3, the default: ``llava/toy/llava-v1.5-toy-v3``, 4–7 coloured shapes of
three colours, questions about the colour that covers the most of the picture; v2: ``llava/toy/llava-v1.5-toy-v2``,
the colour most of 3–4 equal shapes have; v1: ``llava/toy/llava-v1.5-toy``, one coloured shape; trained into
``checkpoints/`` by ``llava.tools.train_toy`` if the package lacks it), writes the held-out toy benchmarks
(``llava.tools.toy_world``: TextVQA-, POPE- and ScienceQA-format questions), then
for every method and budget answers them through the benchmark CLIs' own loop (``llava.eval.runner.run`` on the
CLIs' ``Sample`` lists, greedy, ``vicuna_v1``) and scores them with the benchmarks' own scorers. It prints a
table of accuracy per method and budget with the average visual tokens and the prefill speed-up (timed in this
run, batch 1, against the unpruned model), saves a plot, and writes ``OUT/results.json`` as
``{"<method>": {"<tokens>": <accuracy in %>}}`` plus ``OUT/details.json`` (per family, tokens, timings). The methods
are the registry's: by default the registered ones of ``DEFAULT_METHODS`` (a few minutes), with ``--zoo`` every
registered method, a method this install cannot run skipped with the reason.

Accuracy is over all questions: a TextVQA question scores its soft VQA accuracy, a POPE question 1 when POPE's
yes/no rule matches the label, a ScienceQA question 1 when ScienceQA's letter parser finds the right option.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from pathlib import Path

import torch
from tqdm import tqdm

from llava.eval import eval_pope, eval_science_qa, eval_textvqa
from llava.eval import model_vqa_loader, model_vqa_science
from llava.eval.model_vqa_loader import build_parser, vqa_samples
from llava.eval.runner import Sample, build_prompt, run
from llava.eval.utils import ArgumentParser, InputError, cli, write_json
from llava.pruning import InLLMPruningMethod, available_methods, get_method
from llava.tools import toy_world

CKPT_NAME = "llava-v1.5-toy"
CKPT_NAMES = {"v1": CKPT_NAME, "v2": "llava-v1.5-toy-v2", "v3": "llava-v1.5-toy-v3"}
TOY_DIR = Path(__file__).resolve().parents[1] / "toy"
SHIPPED = TOY_DIR / CKPT_NAME
SHIPPED_V2 = TOY_DIR / CKPT_NAMES["v2"]
SHIPPED_V3 = TOY_DIR / CKPT_NAMES["v3"]
# The default board: these, where registered (the zoo's methods join when they are), in a few minutes on 2 cores.
DEFAULT_METHODS = ("fastervlm", "vispruner", "divprune", "random")
TOKENS = {"v1": (576, 144, 58, 29), "v2": (576, 58, 29, 14), "v3": (576, 58, 29, 14)}
CONV_MODE = "vicuna_v1"
# The targets of each world, on the held-out questions. v1: FasterVLM keeps the answer at 58 tokens and random
# pruning does not. v2 and v3: the unpruned model answers, and at every pruned budget of the board no method comes
# within ``headroom`` points of it (room to rank methods; v2 misses it at 58 and 29 tokens, v3 meets it).
TARGETS = {"v1": {"unpruned": 90.0, "fastervlm_58_ratio": 0.9, "random_58_ratio": 0.75},
           "v2": {"unpruned": 90.0, "headroom": 2.0}, "v3": {"unpruned": 90.0, "headroom": 2.0}}
MIN_TARGET_QUESTIONS = 500


def toy_checkpoint(world: str = "v3", cache_dir: Path = Path("checkpoints")) -> Path:
    """The shipped toy checkpoint of ``world``, else the one cached in ``cache_dir``, trained first if absent."""
    shipped = TOY_DIR / CKPT_NAMES[world]
    if (shipped / "config.json").is_file():
        return shipped
    cache = cache_dir / CKPT_NAMES[world]
    if not (cache / "config.json").is_file():
        from llava.tools.train_toy import train_toy

        print(f"no shipped toy checkpoint; training one into {cache} (10–30 minutes on 2 cores, once)")
        train_toy(cache, world=world, threads={"v1": 2, "v2": 1, "v3": 1}[world])  # the shipped weights' thread counts
    return cache


@dataclass(frozen=True)
class Family:
    """One toy benchmark: where its files are, which CLI module answers it, and its scorer."""

    name: str
    question_file: str  # relative to the data root
    image_folder: str
    module: ModuleType  # the benchmark's inference CLI (its registered TASK)

    def args(self, data: Path, model_path: Path, answers: Path, method: str, tokens: int, batch_size: int,
             device: str) -> argparse.Namespace:
        """The CLI's arguments for one run, as ``scripts/_benchmarks.sh`` passes them, with 3 new tokens.

        The method is set after parsing: the CLI's choices are the methods registered when the runner was
        imported, and a method registered later (``--import``, a notebook, a test) must run too.
        """
        args = build_parser(__doc__, max_new_tokens=3).parse_args([
            "--question-file", str(data / self.question_file), "--image-folder", str(data / self.image_folder),
            "--model-path", str(model_path), "--answers-file", str(answers), "--overwrite", "--temperature", "0",
            "--conv-mode", CONV_MODE, "--visual-token-num", str(tokens), "--batch-size", str(batch_size),
            "--device", device])
        args.pruning_method = method
        args.single_pred_prompt = True  # read by ScienceQA's loader only: its letter instruction, as bench_sqa
        return args

    def score(self, data: Path, answers: Path) -> tuple[float, int]:
        """(points, questions) of an answers file, by the benchmark's own scorer."""
        if self.name == "textvqa":
            n, acc, _ = eval_textvqa.evaluate(str(data / "textvqa" / "TextVQA_0.5.1_val.json"), str(answers),
                                              str(data / self.question_file))
            return acc * n / 100, n
        if self.name == "pope":
            splits, _ = eval_pope.evaluate(str(data / "pope" / "coco"), str(data / self.question_file), str(answers))
            return sum(s.tp + s.tn for s in splits.values()), sum(s.total for s in splits.values())
        options = list(toy_world.LETTERS)
        problems = eval_science_qa.load_problems(str(data / "sqa"), None, "test", options)
        _, result = eval_science_qa.evaluate(problems, eval_science_qa.load_predictions(str(answers)), options)
        return result["correct"], result["count"]


FAMILIES = (
    Family("textvqa", "textvqa/llava_textvqa_val_v051_ocr.jsonl", "textvqa/train_images", model_vqa_loader),
    Family("pope", "pope/llava_pope_test.jsonl", "pope/val2014", model_vqa_loader),
    Family("sqa", "sqa/llava_test_CQM-A.json", "sqa/images/test", model_vqa_science),
)


def answer(args: argparse.Namespace, family: Family) -> float:
    """Run the CLI's inference loop quietly (its bars and log go to a buffer); the average visual tokens it used."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            counts = run(args, family.module.TASK)
    except Exception:
        sys.stderr.write(err.getvalue()[-3000:])
        raise
    if not counts:  # --overwrite is set, so every question is answered anew
        raise RuntimeError(f"the inference loop wrote no answers to {args.answers_file}")
    return sum(counts) / len(counts)


def prefill_ms(model_path: Path, sample: Sample, cells: list[tuple[str, int]], device: str,
               repeats: int = 7) -> tuple[float, dict[tuple[str, int], float]]:
    """Median batch-1 prefill time (vision tower to first logits) of the unpruned model and of every cell.

    The cells take turns within each round (``llava.bench.latency.interleave``), so load from other processes
    lands on all of them alike.
    """
    from llava.bench.latency import interleave, timed
    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(model_path), None, CKPT_NAME, device=device)
    image = sample.media()
    ids = tokenizer_image_token(build_prompt(sample.question, 1, CONV_MODE, False), tokenizer, return_tensors="pt")
    ids = ids[None].to(model.device)
    pixels = process_images([image], processor, model.config).to(model.device, model.dtype)

    @torch.inference_mode()
    def prefill(method: str, tokens: int | None) -> float:
        model.set_pruning_method(method)
        model.set_visual_token_num(tokens)
        return timed(lambda: model(ids, images=pixels, image_sizes=[image.size], use_cache=True, logits_to_keep=1),
                     model.device)[0] * 1e3

    cases = [partial(prefill, "fastervlm", None)] + [partial(prefill, m, t) for m, t in cells]
    times, _ = interleave(cases, warmup=2, repeats=repeats)
    medians = [statistics.median(t) for t in times]
    return medians[0], dict(zip(cells, medians[1:]))


def plot(results: dict, speedups: dict, path: Path) -> None:
    """Accuracy against kept tokens per method (left), prefill speed-up (right), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, speed_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, by_tokens in results.items():
        tokens = sorted(int(t) for t in by_tokens)
        acc_ax.plot(tokens, [by_tokens[str(t)] for t in tokens], marker="o", label=method)
        speed_ax.plot(tokens, [speedups[method][str(t)] for t in tokens], marker="o", label=method)
    for ax, label in ((acc_ax, "accuracy (%)"), (speed_ax, "prefill speed-up (×, batch 1)")):
        ax.set_xscale("log")
        ax.set_xticks(sorted({int(t) for r in results.values() for t in r}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # log-scale minor ticks label as "3×10¹"
        ax.set(xlabel="visual tokens kept per image", ylabel=label)
        ax.grid(alpha=0.3)
    acc_ax.set_ylim(0, 100)
    acc_ax.legend(fontsize="small")
    acc_ax.set_title("toy world: accuracy on held-out questions")
    speed_ax.set_title("prefill (tower to first logits)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_targets(results: dict, world: str = "v3") -> list[dict]:
    """The targets of ``world`` (name, value, requirement, met) for the cells ``results`` has (accuracy in %, as
    ``results.json``: ``{method: {"<tokens>": %}}``); none without an unpruned (576-token) cell."""
    full = next((r[str(toy_world.PATCHES)] for r in results.values() if str(toy_world.PATCHES) in r), None)
    if full is None:
        return []
    targets = TARGETS[world]
    checks = [{"name": "unpruned accuracy (%)", "value": full, "requirement": f">= {targets['unpruned']:g}",
               "met": full >= targets["unpruned"]}]
    if world == "v1":
        for method, sign in (("fastervlm", ">="), ("random", "<=")):
            at58 = results.get(method, {}).get("58")
            if at58 is not None:
                bound = targets[f"{method}_58_ratio"]
                ratio = at58 / full
                checks.append({"name": f"{method} at 58 / unpruned", "value": ratio, "requirement": f"{sign} {bound}",
                               "met": ratio >= bound if sign == ">=" else ratio <= bound})
        return checks
    budgets = sorted({t for r in results.values() for t in r if t != str(toy_world.PATCHES)}, key=int, reverse=True)
    for t in budgets:
        best = max((r[t], m) for m, r in results.items() if t in r)
        checks.append({"name": f"best at {t} ({best[1]}), points below unpruned", "value": full - best[0],
                       "requirement": f"> {targets['headroom']:g}", "met": full - best[0] > targets["headroom"]})
    return checks


def evaluate_cell(data: Path, model_path: Path, method: str, tokens: int, batch_size: int = 32,
                  device: str = "cpu") -> dict:
    """Answer and score every toy benchmark under ``data`` with one method and budget.

    Returns ``accuracy`` (% over all questions), ``per_family`` (%), ``questions`` and ``avg_visual_tokens`` (what
    the inference loop reports: for an in-LLM method, what enters the LLM). The answers go where the scripts put
    them: ``<bench>/answers/<ckpt>/<method>/n_<tokens>/merge.jsonl``, overwritten.
    """
    points = total = visual = 0.0
    per_family = {}
    for fam in FAMILIES:
        answers = data / fam.name / "answers" / model_path.name / method / f"n_{tokens}" / "merge.jsonl"
        count = answer(fam.args(data, model_path, answers, method, tokens, batch_size, device), fam)
        p, n = fam.score(data, answers)
        per_family[fam.name] = 100 * p / n
        points, total, visual = points + p, total + n, visual + count * n
    return {"accuracy": 100 * points / total, "per_family": per_family, "questions": int(total),
            "avg_visual_tokens": visual / total}


def usable_methods(methods) -> tuple[list[str], dict[str, str]]:
    """The methods this install can run, and why each other one is skipped (in-LLM methods need a newer
    transformers; the demo says so instead of failing after the other cells)."""
    from llava.pruning import check_installed, get_method

    usable, skipped = [], {}
    for m in methods:
        try:
            check_installed(get_method(m))
        except NotImplementedError as err:
            skipped[m] = str(err)
        else:
            usable.append(m)
    return usable, skipped


def default_methods() -> list[str]:
    """``DEFAULT_METHODS`` that are registered, in that order."""
    return [m for m in DEFAULT_METHODS if m in available_methods()]


def run_demo(out: Path, data: Path, model_path: Path | None = None, methods=None, tokens=None, seed: int = 1,
             questions: int = 510, batch_size: int = 32, device: str = "cpu", threads: int | None = None,
             world: str = "v3", keep_going: bool = False) -> dict:
    """Evaluate every (method, tokens) cell with the benchmarks of ``world`` under ``data``; returns what
    ``details.json`` holds. ``keep_going``: a cell that raises is reported as failed (with the error) and the
    board goes on, as ``--zoo`` wants of methods it has not been tried with.

    A budget of all 576 patches prunes nothing, whatever the method: that column is one unpruned run, shown for
    every method, and its prefill speed-up is 1 by construction (timed once, not per method).
    """
    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    model_path = model_path or toy_checkpoint(world)
    methods, skipped = usable_methods(methods or default_methods())
    tokens = tuple(tokens or TOKENS[world])
    for m, why in skipped.items():
        print(f"skipping {m}: {why}")
    if not methods:
        raise InputError(f"none of the methods can run here: {skipped}")
    per_family = -(-questions // len(toy_world.FAMILIES))
    if not (data / "toy_world.json").is_file() or \
            json.loads((data / "toy_world.json").read_text()) != toy_world.stamp(seed, per_family, world):
        shutil.rmtree(data, ignore_errors=True)
        toy_world.make_toy_benchmarks(data, seed, questions, world)

    full = toy_world.PATCHES
    pruned = [(m, t) for m in methods for t in tokens if t < full]
    runs = ([(methods[0], full)] if full in tokens else []) + pruned
    details: dict = {"model_path": str(model_path), "world": world, "cells": {}, "skipped": skipped, "failed": {}}
    bar = tqdm(runs, desc="toy world: methods x budgets", unit="cell")
    for method, budget in bar:
        try:
            cell = evaluate_cell(data, model_path, method, budget, batch_size, device)
        except Exception as err:
            if not keep_going:
                raise
            details["failed"][f"{method}/{budget}"] = f"{type(err).__name__}: {err}"
            continue
        cell["accuracy"] = round(cell["accuracy"], 1)  # the one rounding: every table, file and plot shows this
        for m in (methods if budget == full else [method]):
            details["cells"][f"{m}/{budget}"] = cell
        details["questions"] = cell["questions"]
        bar.set_postfix(last=f"{method}@{budget}={cell['accuracy']:.1f}%")
    results = {m: {str(t): details["cells"][f"{m}/{t}"]["accuracy"] for t in tokens if f"{m}/{t}" in details["cells"]}
               for m in methods}
    eval_s = time.perf_counter() - start

    first = FAMILIES[0]
    sample = vqa_samples(str(data / first.question_file), str(data / first.image_folder))[0]
    timed_cells = [(m, t) for m in methods for t in tokens if t < full and f"{m}/{t}" in details["cells"]]
    base_ms, cell_ms = prefill_ms(model_path, sample, timed_cells, device)
    for m in methods:
        for t in tokens:
            key = f"{m}/{t}"
            if key in details["cells"]:
                ms = base_ms if t == full else cell_ms[m, t]
                details["cells"][key] = {**details["cells"][key], "prefill_ms": ms, "prefill_speedup": base_ms / ms}
    speedups = {m: {t: details["cells"][f"{m}/{t}"]["prefill_speedup"] for t in r} for m, r in results.items()}
    details.update(unpruned_prefill_ms=base_ms, eval_wall_s=eval_s, wall_s=time.perf_counter() - start,
                   targets=check_targets(results, world))

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results, indent=2)
    write_json(out / "details.json", details, indent=2)
    plot(results, speedups, out / "accuracy.png")
    print_report(results, details, out, tokens)
    return details


def print_report(results: dict, details: dict, out: Path, tokens) -> None:
    """The accuracy matrix, the per-cell table and the targets, as markdown."""
    methods = list(results)
    tokens = [str(t) for t in tokens]
    print(f"\nToy world {details['world']}: {details['questions']} held-out questions (TextVQA / POPE / ScienceQA "
          f"formats), checkpoint {details['model_path']}\n")
    print("| accuracy (%) | " + " | ".join(f"{t} tokens" for t in tokens) + " |")
    print("|---|" + "---:|" * len(tokens))
    for m in methods:
        print(f"| {m} | " + " | ".join(f"{results[m][t]:.1f}" if t in results[m] else "failed" for t in tokens) + " |")
    print("\n| method | tokens | accuracy (%) | TextVQA | POPE | ScienceQA | avg visual tokens | prefill (ms) | prefill × |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in methods:
        for t in tokens:
            c = details["cells"].get(f"{m}/{t}")
            if c:
                f = c["per_family"]
                print(f"| {m} | {t} | {c['accuracy']:.1f} | {f['textvqa']:.1f} | {f['pope']:.1f} | {f['sqa']:.1f} "
                      f"| {c['avg_visual_tokens']:.0f} | {c['prefill_ms']:.1f} | {c['prefill_speedup']:.2f}x |")
    in_llm = {m: get_method(m) for m in methods if isinstance(get_method(m), InLLMPruningMethod)}
    if in_llm:
        print(f"\nIn-LLM methods: all {toy_world.PATCHES} visual tokens enter the LLM (the avg visual tokens column); "
              "T is the tokens column.")
    for m, method in in_llm.items():
        print(f"  {m}: {method.budget_note('T')}")
    if str(toy_world.PATCHES) in tokens:
        print(f"{toy_world.PATCHES} tokens keep every patch: one unpruned run, the same for every method, its prefill "
              "timed once (1.00x by construction).")
    for m, why in details["skipped"].items():
        print(f"Skipped {m}: {why}")
    for cell, why in details["failed"].items():
        print(f"Failed {cell}: {why}")
    print(f"Unpruned prefill: {details['unpruned_prefill_ms']:.1f} ms (batch 1, median); evaluation "
          f"{details['eval_wall_s']:.0f} s, all {details['wall_s']:.0f} s.")
    if details["targets"] and details["questions"] < MIN_TARGET_QUESTIONS:
        print(f"The targets are set for >= {MIN_TARGET_QUESTIONS} questions; these {details['questions']} only indicate.")
    for t in details["targets"]:
        print(f"target {t['name']}: {t['value']:.3g} ({t['requirement']}): {'met' if t['met'] else 'NOT met'}")
    print(f"\nWrote {out / 'results.json'}, {out / 'details.json'} and {out / 'accuracy.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("playground/demo"),
                        help="folder for results.json, details.json and accuracy.png (default playground/demo)")
    parser.add_argument("--data", type=Path, default=Path("playground/data/toy"),
                        help="folder for the toy benchmarks and their answers, in the layout of playground/data/eval "
                             "(default playground/data/toy; rewritten when --world, --seed or --questions change)")
    parser.add_argument("--world", choices=toy_world.WORLDS, default="v3",
                        help="v3 (default): 4–7 coloured shapes of three colours, the colour covering the most of the "
                             "picture; v2: 3–4 equal shapes, the colour most of them have (saturates at 58 tokens); "
                             "v1: one coloured shape (saturates: FasterVLM keeps ~98 %% at 29 tokens)")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="toy checkpoint (default: the shipped one of --world, else checkpoints/<its name>, "
                             "trained if absent)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"pruning methods to compare (default: those of {' '.join(DEFAULT_METHODS)} that are "
                             "registered); any registered name works")
    parser.add_argument("--zoo", action="store_true",
                        help="every registered method (after --import) at 576 58 29 14 tokens unless --tokens says "
                             "otherwise; a method this install cannot run, or a cell that fails, is reported and skipped")
    parser.add_argument("--import", dest="imports", nargs="+", default=[], metavar="MODULE",
                        help="modules to import first, e.g. one defining your own @register'ed pruning method")
    parser.add_argument("--tokens", nargs="+", type=int, default=None,
                        help="visual tokens kept per image (default: 576 58 29 14 in v2 and v3, 576 144 58 29 in v1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out questions (default 1)")
    parser.add_argument("--questions", type=int, default=510,
                        help="held-out questions, split evenly over the three benchmarks (default 510)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="questions per forward (default 32; within a toy benchmark every prompt has the same "
                             "length, so the answers equal batch 1's)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 gives steadier timings on a busy machine")
    args = parser.parse_args(argv)
    for module in args.imports:
        importlib.import_module(module)
    if args.zoo and args.methods:
        parser.error("--zoo runs every registered method; give either --zoo or --methods")
    methods = list(available_methods()) if args.zoo else args.methods or default_methods()
    unknown = [m for m in methods if m not in available_methods()]
    if unknown:
        parser.error(f"unknown pruning method(s) {', '.join(unknown)} (registered: {', '.join(available_methods())})")
    tokens = args.tokens or (TOKENS["v3"] if args.zoo else TOKENS[args.world])
    run_demo(args.out, args.data, args.model_path, tuple(methods), tuple(tokens), args.seed, args.questions,
             args.batch_size, args.device, args.threads, args.world, keep_going=args.zoo)


if __name__ == "__main__":
    cli(main)
