"""Kept sets and answers of the toy checkpoint on two devices, and how often ties at the top-k boundary decide.

    python -m llava.bench.tie_check --device cuda --out tie_check.json     # on a GPU: CPU fp32 against it
    python -m llava.bench.tie_check --device cpu --images 16              # CPU only: fp16 scores on the CPU

The toy checkpoint (``llava/toy/llava-v1.5-toy``, LLaVA-1.5's 576-patch geometry) gives real-ish [CLS] attention on
toy-world scenes. For each budget it reports, over ``--images`` scenes:

* ``kept_same_as_cpu_fp32``: share of images whose kept set (this project's selection: ties go to the lower patch
  index) equals the one from CPU fp32 scores, for the scores of each run: ``cpu_fp16`` (the fp32 tower on pixels
  rounded to fp16, scores in fp16, as evaluation runs LLaVA-1.5 in fp16), ``<device>_fp32`` and ``<device>_fp16``;
* ``tie_at_boundary``: share of images whose k-th and (k+1)-th highest scores are equal (then ``topk`` may pick
  either);
* ``rule_differs_from_topk``: share of images where the tie rule keeps another set than plain ``topk`` on the same
  scores, on the CPU and on ``--device`` (upstream ran CUDA ``topk``);
* ``cpu_topk_differs_from_device_topk``: the same fp16 scores, plain ``topk`` on the CPU against on ``--device``;

and the share of ``--questions`` toy TextVQA questions whose greedy answer on ``--device`` in fp16 equals CPU fp32's.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from llava.eval.runner import build_prompt, generate_batch
from llava.eval.utils import ArgumentParser, InputError, cli
from llava.mm_utils import process_images, tokenizer_image_token
from llava.pruning.base import TowerRequest, select_topk_raster
from llava.tools import toy_world

TOY = Path(__file__).resolve().parents[1] / "toy" / "llava-v1.5-toy"
BUDGETS = (288, 144, 58, 29)


def load(device: str, dtype: torch.dtype):
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(TOY), None, TOY.name, device=device, dtype=dtype)
    return tokenizer, model, processor


@torch.inference_mode()
def cls_scores(model, pixels: torch.Tensor) -> torch.Tensor:
    """(B, N) head-mean [CLS] scores, in the dtype of ``pixels`` as the model computes them."""
    tower = model.get_vision_tower()(pixels.to(model.device), request=TowerRequest(cls_attn=True))
    return tower.cls_scores


def same_sets(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows of two (B, k) raster-sorted index sets that are equal."""
    return (a.cpu() == b.cpu()).all(dim=1).float().mean().item()


def plain_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(k, dim=-1).indices.sort(dim=-1).values


def tie_at_boundary(scores: torch.Tensor, k: int) -> float:
    ordered = scores.float().sort(dim=-1, descending=True).values
    return (ordered[:, k - 1] == ordered[:, k]).float().mean().item()


@torch.inference_mode()
def answers(loaded, scenes, k: int | None) -> list[str]:
    tokenizer, model, processor = loaded
    model.set_visual_token_num(k)
    question = toy_world.make_question("textvqa", scenes[0]).text
    prompt = tokenizer_image_token(build_prompt(question, 1, "vicuna_v1", False), tokenizer)
    gen = dict(max_new_tokens=4, num_beams=1, use_cache=True, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return [generate_batch(model, tokenizer, processor, [prompt], [toy_world.render(s)], gen)[0][0] for s in scenes]


def run(device: str, images: int, questions: int, budgets: Sequence[int]) -> dict:
    """Every number of the module docstring, as data."""
    dev = torch.device(device)
    scenes = [toy_world.sample(0, "tie-check", i, "textvqa")[0] for i in range(images)]
    cpu32 = load("cpu", torch.float32)
    pixels = process_images([toy_world.render(s) for s in scenes], cpu32[2], cpu32[1].config)  # (B, 3, H, W) fp32
    scores = {"cpu_fp32": cls_scores(cpu32[1], pixels), "cpu_fp16": cls_scores(cpu32[1], pixels.half())}
    on_device = {}
    if dev.type != "cpu":
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            on_device[name] = load(device, dtype)
            scores[f"{dev.type}_{name}"] = cls_scores(on_device[name][1], pixels.to(dtype))
    low = scores.get(f"{dev.type}_fp16", scores["cpu_fp16"])
    per_budget = []
    for k in budgets:
        reference = select_topk_raster(scores["cpu_fp32"], k)
        row = {"kept_per_image": k,
               "kept_same_as_cpu_fp32": {name: same_sets(reference, select_topk_raster(s, k))
                                         for name, s in scores.items() if name != "cpu_fp32"},
               "tie_at_boundary": {name: tie_at_boundary(s, k) for name, s in scores.items()},
               "rule_differs_from_topk": {name: 1 - same_sets(select_topk_raster(s, k), plain_topk(s, k))
                                          for name, s in scores.items() if "fp16" in name}}
        if dev.type != "cpu":
            row["cpu_topk_differs_from_device_topk"] = 1 - same_sets(plain_topk(low.cpu(), k), plain_topk(low, k))
        per_budget.append(row)
    result = {"device": str(dev), "images": images, "budgets": per_budget,
              "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    if questions:
        asked = scenes[:questions]
        target = on_device.get("fp16") or load("cpu", torch.float16)
        result["answers_same_as_cpu_fp32"] = {}
        for k in (None, *budgets):
            ref, got = answers(cpu32, asked, k), answers(target, asked, k)
            result["answers_same_as_cpu_fp32"][str(k or "all")] = sum(a == b for a, b in zip(ref, got)) / len(asked)
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    p = ArgumentParser(prog="python -m llava.bench.tie_check", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="the device compared with CPU fp32: cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--images", type=int, default=64, help="toy scenes scored (default 64)")
    p.add_argument("--questions", type=int, default=16,
                   help="of them, toy TextVQA questions answered on both sides (default 16; 0: none)")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), metavar="K",
                   help=f"kept patches per image (default {' '.join(map(str, BUDGETS))})")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = p.parse_args(argv)
    if args.images < 1 or not 0 <= args.questions <= args.images:
        raise InputError("--images must be >= 1 and --questions in [0, --images]")
    if any(not 0 < k < 576 for k in args.budgets):
        raise InputError("--budgets must lie in [1, 575] (the toy tower has 576 patches)")
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        raise InputError(f"--device {args.device!r}: cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: no CUDA GPU is visible")
    result = run(args.device, args.images, args.questions, args.budgets)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return result


if __name__ == "__main__":
    cli(main)
