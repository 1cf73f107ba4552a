"""One-command GPU check of FasterVLM at real model sizes: latency, batching and numerics, random weights.

    PYTHONUNBUFFERED=1 timeout 540 python -m llava.bench.gpu_check --out gpu-results   # one CUDA GPU, about 5 min
    python -m llava.bench.gpu_check --dry-run --out /tmp/gc                            # the same code on CPU, tiny

Nothing is downloaded. LLaVA-1.5-7B, LLaVA-1.6-vicuna-7B (LLaVA-NeXT on the paper's fixed 2×2 grid: 5 crops)
and LLaVA-1.5-13B are this project's ``LlavaLlamaForCausalLM`` with its ``CLIPVisionTower`` and projector, built
from configs at full size (every LLM layer, all 24 CLIP-L/336 layers, the 32000-token vocabulary) with random
weights created directly on the GPU in their final dtype: the LLM in ``--dtype``, the tower in fp32 for
LLaVA-1.5 (as ``load_pretrained_model`` loads it from ``mm_vision_tower``) and in the LLM's dtype for 1.6
(whose tower lives in the checkpoint). Sections, in priority order:

* ``<model>.latency``, for each model: prefill, time per output token and end-to-end latency
  (``llava.bench.latency.run_once``) at batch 1 and every kept-token budget (576 288 144 58 29 per crop;
  NeXT: 5 crops of each), with the FLOPs-limit speed-up (``llava.bench.flops``) beside each; interleaved with
  them, upstream FasterVLM's way (eager CLIP returning every attention map, batch 1) and, with
  ``--fp16-tower``, this project's path with an fp16 tower; then the vision tower alone, and the attention
  ops and kernels one prefill ran.
* ``llava-v1.5-7b.kept_sets``: agreement of the patches kept from fp32 and fp16 [CLS] scores on
  ``--agreement-images`` random images, at every budget.
* ``llava-v1.5-7b.batching``: whether ``--compare-batch`` greedy answers generated as one left-padded batch
  equal batch-1 answers on the same prompts (of one length, and of different lengths, so that padding
  happens), then samples/s and peak memory at ``--batch-sizes`` and 576 / 58 tokens.

Timings are medians over ``--repeats`` rounds after ``--warmup`` untimed ones (every case takes a turn in each
round), each run bracketed by ``torch.cuda.synchronize``. Peak memory is ``torch.cuda.max_memory_allocated``
above the loaded model, reset before every run. A running time budget (``--budget-s``, counted from the
start) skips a section that would not fit, recording "skipped (time budget)", and ends a section's rounds at
the deadline ("truncated (time budget)"). ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` are rewritten after
every section, so a killed run leaves what it measured. Random weights make the timings real and the
answers meaningless: greedy ties are far commoner than with trained weights, so the answer and kept-set
agreements are pessimistic. See llava/bench/LATENCY.md.
"""
from __future__ import annotations

import copy
import gc
import importlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Sequence

import torch

from llava.bench import flops, latency
from llava.eval.utils import ArgumentParser, cli
from llava.mm_utils import process_images
from llava.pruning.base import select_topk_raster

JSON_NAME, MARKDOWN_NAME = "gpu_check.json", "gpu_check.md"
SKIPPED, TRUNCATED = "skipped (time budget)", "truncated (time budget)"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DRY_VOCAB = 1000  # the dry run's vocabulary: batch-32 prefill logits over 32000 ids would dominate a CPU run
MIN_SHARE = 0.5  # a section starts only if this share of its (calibrated) estimate is left
FLASH_ATTN_INSTALL = ("pip", "install", "flash-attn", "--no-build-isolation")
# Profiler event names that show which attention ran: aten's SDPA variants, flash-attn's ops, their kernels.
ATTENTION_EVENT = re.compile(r"attention|flash|fmha|sdpa", re.IGNORECASE)


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """A LLaVA model to build with random weights: its shapes, and how its released checkpoint holds the tower."""

    name: str
    llm: flops.LLMConfig
    vision: flops.VisionConfig
    vision_heads: int
    anyres: bool = False  # LLaVA-NeXT on the paper's fixed 2×2 grid: 5 crops per image
    fp32_tower: bool = True  # 1.5 loads its tower from mm_vision_tower in fp32; 1.6's is in the checkpoint

    @property
    def crops(self) -> int:
        return 5 if self.anyres else 1


MODELS = {spec.name: spec for spec in (
    ModelSpec("llava-v1.5-7b", flops.VICUNA_7B, flops.CLIP_L14_336, 16),
    ModelSpec("llava-v1.6-vicuna-7b", flops.VICUNA_7B, flops.CLIP_L14_336, 16, anyres=True, fp32_tower=False),
    ModelSpec("llava-v1.5-13b", flops.VICUNA_13B, flops.CLIP_L14_336, 16),
)}


def dry_shape(spec: ModelSpec) -> ModelSpec:
    """The dry run's stand-in for ``spec``, for the same code paths in seconds on a CPU: tiny widths and depths,
    and 112-px crops of 8×8 patches (budgets 64 32 16 6 3 per crop; NeXT's 5 × 576 tokens would dominate)."""
    return replace(spec, llm=flops.LLMConfig(64, 128, 3 if spec.llm.num_layers > 32 else 2, 4), vision_heads=4,
                   vision=replace(spec.vision, num_layers=3, hidden_size=32, intermediate_size=64, image_size=112))


def build_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype, attention: str, dry_run: bool,
                seed: int) -> tuple[object, object, dict]:
    """``(model, image_processor, facts)``: ``spec`` (its :func:`dry_shape` in a dry run), random and in memory."""
    shape = dry_shape(spec) if dry_run else spec
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model, processor = latency.build_random_llava(
        shape.llm, shape.vision, shape.vision_heads, shape.llm.num_layers, shape.vision.num_layers, str(device),
        dtype, DRY_VOCAB if dry_run else latency.LLAMA_VOCAB,
        vision_dtype=torch.float32 if spec.fp32_tower else dtype, anyres=spec.anyres, attn_implementation=attention)
    latency.synchronize(device)
    model.config._name_or_path = spec.name  # the name latency.flops_model reports
    tower = model.get_vision_tower()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return model, processor, {
        "build_s": time.perf_counter() - t0, "weights_mib": weights / 2**20,
        "llm_dtype": str(model.dtype).removeprefix("torch."), "tower_dtype": str(tower.dtype).removeprefix("torch."),
        "llm_attention": model.config._attn_implementation, "vocab_size": model.config.vocab_size,
        "llm_layers": model.config.num_hidden_layers, "tower_layers": tower.config.num_hidden_layers}


class Models:
    """The one model held at a time: asking for another frees this one first (a 13B and a 7B need not fit together)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, attention: str, dry_run: bool, seed: int):
        self.device, self.dtype, self.attention, self.dry_run, self.seed = device, dtype, attention, dry_run, seed
        self._held: tuple[ModelSpec, object, object, dict] | None = None

    def get(self, spec: ModelSpec) -> tuple[object, object, dict]:
        """``(model, image_processor, facts)`` of ``spec``, built on first use."""
        if self._held is None or self._held[0] != spec:
            self.release()
            build = partial(build_model, spec, self.device, self.dtype, seed=self.seed, dry_run=self.dry_run)
            try:
                model, processor, facts = build(attention=self.attention)
            except (ImportError, ValueError) as e:  # FlashAttention 2 refused by transformers: say so, run SDPA
                if self.attention != "flash_attention_2":
                    raise
                model, processor, facts = build(attention="sdpa")
                facts["attention_fallback"] = f"flash_attention_2 refused ({type(e).__name__}: {e}); SDPA used"
            self._held = (spec, model, processor, facts)
            # Every measured run starts with a gc.collect (latency.PeakMemory); with the long-lived heap frozen
            # that takes milliseconds, not a few hundred.
            gc.collect()
            gc.freeze()
            print(f"    built {spec.name} in {facts['build_s']:.1f} s ({facts['weights_mib'] / 1024:.1f} GiB)",
                  flush=True)
        return self._held[1:]

    def release(self) -> None:
        self._held = None
        gc.unfreeze()  # the model may sit in reference cycles: let the collector see it again
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


@contextmanager
def swapped_clip(model, clip) -> Iterator[None]:
    """Within the block, the model's tower runs ``clip`` (e.g. an fp16 copy of its fp32 CLIP)."""
    tower = model.get_vision_tower()
    previous, tower.vision_tower = tower.vision_tower, clip
    try:
        yield
    finally:
        tower.vision_tower = previous


# --------------------------------------------------------------------------- runs


def kept_budgets(cfg: flops.ModelConfig) -> list[int | None]:
    """Kept tokens per crop: None (all N), then the paper's 50/75/90/95 % reductions (288 144 58 29 of 576)."""
    per_crop = replace(cfg, num_crops=1)
    return [None] + [flops.kept_from_reduction(per_crop, r) for r in latency.REDUCTIONS]


@torch.inference_mode()
def prefill_generate(model, ids: torch.Tensor, images, image_sizes, new_tokens: int,
                     tower: Callable[[], object] = nullcontext) -> tuple[float, None, float, list[int]]:
    """A ``latency.Run`` of one prompt without the decode loop: a prefill forward, then ``generate`` of exactly
    ``new_tokens`` tokens, both with the vision tower that the ``tower()`` context sets up."""
    with tower():
        t_prefill, _ = latency.timed(lambda: model(ids, images=images, image_sizes=image_sizes, use_cache=True,
                                                   logits_to_keep=1), ids.device)
        visual = list(model.last_pruning.visual_tokens)
        t_e2e, generated = latency.timed(lambda: model.generate(
            ids, images=images, image_sizes=image_sizes, do_sample=False, num_beams=1, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, use_cache=True), ids.device)
    if generated.shape[1] != new_tokens:
        raise RuntimeError(f"generate returned {generated.shape[1]} tokens, expected {new_tokens}")
    return t_prefill * 1e3, None, t_e2e * 1e3, visual


@torch.inference_mode()
def generate_left_padded(model, prompts: Sequence[list[int]], pixels: torch.Tensor, new_tokens: int,
                         image_sizes: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, list[int]]:
    """``llava.eval.runner.generate_batch`` on images preprocessed beforehand: exactly ``new_tokens`` greedy tokens.

    ``prompts``: token ids with the image placeholder; ``pixels``: (B, 3, H, W), or (B, crops, 3, H, W), on the
    model's device and dtype. As there, several prompts are left-padded with an attention mask and spliced on
    the left; one prompt goes alone. Returns the new ids (B, new_tokens) and the visual tokens of each sample.
    """
    device = model.device
    kwargs = {}
    if len(prompts) == 1:
        input_ids = torch.tensor([prompts[0]], device=device)
    else:
        longest = max(map(len, prompts))
        input_ids = torch.tensor([[latency.PAD_ID] * (longest - len(p)) + p for p in prompts], device=device)
        kwargs["attention_mask"] = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts],
                                                device=device)
    previous = getattr(model.config, "tokenizer_padding_side", "right")
    model.config.tokenizer_padding_side = "left" if len(prompts) > 1 else previous
    try:
        out = model.generate(input_ids, images=pixels, image_sizes=image_sizes, do_sample=False, num_beams=1,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                             pad_token_id=latency.PAD_ID, **kwargs)
    finally:
        model.config.tokenizer_padding_side = previous
    if tuple(out.shape) != (len(prompts), new_tokens):
        raise RuntimeError(f"generate returned ids of shape {tuple(out.shape)}, expected {(len(prompts), new_tokens)}")
    return out, list(model.last_pruning.visual_tokens)


def batched_run(model, prompts: Sequence[list[int]], pixels: torch.Tensor,
                new_tokens: int) -> tuple[float, None, float, list[int]]:
    """A ``latency.Run`` of one left-padded batch: prefill is a one-token generation, end to end ``new_tokens``."""
    t_prefill, _ = latency.timed(lambda: generate_left_padded(model, prompts, pixels, 1), model.device)
    t_e2e, (_, counts) = latency.timed(lambda: generate_left_padded(model, prompts, pixels, new_tokens), model.device)
    return t_prefill * 1e3, None, t_e2e * 1e3, counts


def compare_answers(model, prompts: Sequence[list[int]], pixels: torch.Tensor, new_tokens: int) -> dict:
    """How far one left-padded batch's greedy answers (and kept patches) agree with batch-1 runs of each prompt."""
    batched, _ = generate_left_padded(model, prompts, pixels, new_tokens)
    kept_batched = [k.tolist() for k in model.last_pruning.kept_indices]
    single, kept_single = [], []
    for i, prompt in enumerate(prompts):
        ids, _ = generate_left_padded(model, [prompt], pixels[i:i + 1], new_tokens)
        single.append(ids[0])
        kept_single.append(model.last_pruning.kept_indices[0].tolist())
    same = batched == torch.stack(single)  # (B, new_tokens)
    matching_prefix = same.long().cumprod(dim=-1).sum(dim=-1)  # tokens before the first difference
    return {"prompts": len(prompts), "prompt_lengths": [len(p) for p in prompts],
            "identical_fraction": same.all(dim=-1).float().mean().item(),
            "first_token_identical_fraction": same[:, 0].float().mean().item(),
            "mean_matching_prefix_fraction": (matching_prefix.float() / new_tokens).mean().item(),
            "kept_sets_identical_fraction": statistics.mean(a == b for a, b in zip(kept_batched, kept_single))}


def pixels_of(images, model, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``process_images`` of PIL images under the model's config, on its device and in ``dtype`` (default: the
    model's, as the evaluation CLIs pass them)."""
    return process_images(images, model.get_vision_tower().image_processor, model.config).to(model.device,
                                                                                              dtype or model.dtype)


def set_agreement(reference: torch.Tensor, other: torch.Tensor, patches: int) -> dict:
    """Exact-set fraction and mean overlap ``|A ∩ B| / k`` of kept index sets (B, k) chosen over ``patches``."""
    def mask(keep: torch.Tensor) -> torch.Tensor:
        return torch.zeros(keep.shape[0], patches, device=keep.device).scatter_(1, keep, 1.0)

    overlap = (mask(reference) * mask(other)).sum(dim=1) / reference.shape[1]
    return {"exact_set_fraction": (reference == other).all(dim=1).float().mean().item(),
            "mean_overlap": overlap.mean().item()}


def attention_ops(run: Callable[[], object], device: torch.device) -> dict:
    """Profiler events of one ``run()`` whose names show which attention ran, with their counts.

    On CUDA: the aten SDPA variant (flash, memory-efficient, cuDNN, math) or flash-attn op, and its kernels.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            run()
            latency.synchronize(device)
    except Exception as e:  # the profiler is a diagnostic: its failure must not cost the section
        return {"error": f"{type(e).__name__}: {e}"}
    counts: dict[str, int] = {}
    for event in prof.events():
        if ATTENTION_EVENT.search(event.name):
            name = event.name[:160]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:24])


# --------------------------------------------------------------------------- sections


@dataclass
class Context:
    """What every section gets: the parsed flags, device and dtype, the model holder, the clock and the memory meter."""

    args: object
    device: torch.device
    dtype: torch.dtype
    models: Models
    budget: "Budget"
    memory: latency.PeakMemory

    @property
    def low_dtype(self) -> torch.dtype:
        """The low precision of the fp16-tower opt-in and the kept-set agreement: fp16, or bf16 under --dtype bf16."""
        return self.dtype if self.dtype != torch.float32 else torch.float16


def timed_runs(rows: Sequence[latency.Row]) -> int:
    """The fewest timed runs behind any row: below ``--repeats`` where the deadline cut the rounds short."""
    return min(len(r.prefill_runs_ms) for r in rows)


def latency_section(name: str, ctx: Context) -> dict:
    """Ours (with TPOT), upstream-style and optionally ours with an fp16 tower at every budget, batch 1, interleaved."""
    spec, a = MODELS[name], ctx.args
    model, processor, facts = ctx.models.get(spec)
    ids, images, sizes = latency.make_inputs(model, processor, a.text_tokens, a.seed)
    cfg = latency.flops_model(model, spec.crops)
    runs = {"ours": partial(latency.run_once, model, ids, images, sizes, a.new_tokens),
            "upstream": partial(prefill_generate, model, ids, images, sizes, a.new_tokens,
                                partial(latency.upstream_style_tower, model))}
    clip = model.get_vision_tower().vision_tower
    if a.fp16_tower and clip.dtype != ctx.low_dtype:
        runs["ours_fp16_tower"] = partial(prefill_generate, model, ids, images, sizes, a.new_tokens,
                                          partial(swapped_clip, model, copy.deepcopy(clip).to(ctx.low_dtype)))
    # First, so that lazy initialisation (kernels, workspaces) lands here and not in the first measured peak.
    latency.run_once(model, ids, images, sizes, 2)
    measured = latency.measure(model, kept_budgets(cfg), list(runs.values()), a.warmup, a.repeats, ctx.memory,
                               ctx.budget.deadline)
    # After the timed rounds: on some torch/CUPTI builds the CUDA profiler stays attached and slows what follows.
    ops = attention_ops(partial(latency.run_once, model, ids, images, sizes, 2), ctx.device)
    rows = dict(zip(runs, measured))
    for path_rows in rows.values():
        latency.add_ratios(path_rows, cfg, a.text_tokens)
    model.set_visual_token_num(None)
    return {**facts, "model": asdict(cfg), "crops": spec.crops, "timed_runs": timed_runs(rows["ours"]),
            "rows": {path: [asdict(r) for r in path_rows] for path, path_rows in rows.items()},
            "ours_over_upstream": [latency.ours_over_upstream(u, o) for u, o in zip(rows["upstream"], rows["ours"])],
            "tower_alone": latency.compare_upstream(model.get_vision_tower(), images, a.warmup, a.repeats),
            "attention_ops": ops}


def kept_set_section(ctx: Context) -> dict:
    """Kept patches from fp16 [CLS] scores against fp32 ones, on random images, at every budget.

    Reference: the fp32 tower on fp32 pixels (``process_images``' own output, never rounded). ``fp16_tower``: an
    fp16 copy on fp16 pixels (the ``--fp16-tower`` opt-in); ``fp32_tower_fp16_io``: the fp32 tower on pixels
    rounded to fp16, its scores cast to fp16 (LLaVA-1.5 as evaluation runs it: images in the LLM's dtype).
    """
    a = ctx.args
    model, _, facts = ctx.models.get(MODELS["llava-v1.5-7b"])
    tower = model.get_vision_tower()
    low = ctx.low_dtype
    clip_low = copy.deepcopy(tower.vision_tower).to(low)
    images = [latency.make_prompt(model.config.vocab_size, a.text_tokens, a.seed + 10_000 + i)[1]
              for i in range(a.agreement_images)]
    scores: dict[str, list[torch.Tensor]] = {"fp32": [], "fp16_tower": [], "fp32_tower_fp16_io": []}
    with torch.inference_mode():
        for chunk in pixels_of(images, model, torch.float32).split(16):  # (≤16, 3, H, W): bounds activations
            scores["fp32"].append(tower(chunk)[1].mean(dim=1))
            scores["fp32_tower_fp16_io"].append(tower(chunk.to(low))[1].mean(dim=1))
            with swapped_clip(model, clip_low):
                scores["fp16_tower"].append(tower(chunk.to(low))[1].mean(dim=1))
    merged = {name: torch.cat(s) for name, s in scores.items()}  # (images, N) head-mean [CLS] scores
    n = tower.num_patches
    per_budget = []
    for k in kept_budgets(latency.flops_model(model, 1)):
        k = n if k is None else k
        reference = select_topk_raster(merged["fp32"], k)
        per_budget.append({"kept_per_crop": k, **{name: set_agreement(reference, select_topk_raster(s, k), n)
                                                   for name, s in merged.items() if name != "fp32"}})
    return {"images": a.agreement_images, "tower_dtype": facts["tower_dtype"],
            "low_precision": str(low).removeprefix("torch."), "budgets": per_budget}


def batching_section(ctx: Context) -> dict:
    """Batch answers against batch-1 answers, then samples/s and peak memory per batch size at 576 and 58 tokens."""
    a = ctx.args
    model, _, facts = ctx.models.get(MODELS["llava-v1.5-7b"])
    vocab = model.config.vocab_size
    cfg = latency.flops_model(model, 1)
    budgets = [None, flops.kept_from_reduction(cfg, 90.0)]
    prompts = [latency.make_prompt(vocab, a.text_tokens, a.seed + i) for i in range(max(a.batch_sizes))]
    ids = [p for p, _ in prompts]
    pixels = pixels_of([image for _, image in prompts], model)
    # Different lengths (text_tokens + 0, 4, 8, ...), so that left padding and the attention mask come into play.
    padded = [latency.make_prompt(vocab, a.text_tokens + 4 * i, a.seed + 1000 + i) for i in range(a.compare_batch)]
    padded_pixels = pixels_of([image for _, image in padded], model)
    answers = []
    for k in budgets:
        model.set_visual_token_num(k)
        answers.append({"kept_per_crop": k or model.get_vision_tower().num_patches,
                        "same_length": compare_answers(model, ids[:a.compare_batch], pixels[:a.compare_batch],
                                                       a.new_tokens),
                        "padded": compare_answers(model, [p for p, _ in padded], padded_pixels, a.new_tokens)})
    runs = [partial(batched_run, model, ids[:b], pixels[:b], a.new_tokens) for b in a.batch_sizes]
    measured = latency.measure(model, budgets, runs, a.warmup, a.repeats, ctx.memory, ctx.budget.deadline)
    for rows in measured:
        latency.add_ratios(rows, cfg, a.text_tokens)
    model.set_visual_token_num(None)
    rows = [asdict(r) for rows_b in measured for r in rows_b]
    smallest = {r["visual_tokens"]: r for r in rows if r["batch_size"] == min(a.batch_sizes)}
    for r in rows:
        r["samples_per_s_vs_smallest_batch"] = r["samples_per_s"] / smallest[r["visual_tokens"]]["samples_per_s"]
    return {**facts, "model": asdict(cfg), "timed_runs": timed_runs([r for rows_b in measured for r in rows_b]),
            "answers": answers, "rows": sorted(rows, key=lambda r: (-r["visual_tokens"], r["batch_size"]))}


@dataclass(frozen=True)
class Section:
    """A named part of the check; ``estimate_s``: its rough cost on an H100/H200 at the default settings."""

    name: str
    estimate_s: float
    run: Callable[[Context], dict]


SECTIONS = (
    Section("llava-v1.5-7b.latency", 65, partial(latency_section, "llava-v1.5-7b")),
    Section("llava-v1.5-7b.kept_sets", 5, kept_set_section),
    Section("llava-v1.5-7b.batching", 65, batching_section),
    Section("llava-v1.6-vicuna-7b.latency", 75, partial(latency_section, "llava-v1.6-vicuna-7b")),
    Section("llava-v1.5-13b.latency", 80, partial(latency_section, "llava-v1.5-13b")),
)


class Budget:
    """The run's time budget: whether a section still fits, and the deadline at which measuring rounds stop."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.deadline = self.start + seconds
        self._scales: list[float] = []  # each finished section's time ÷ its estimate

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def fits(self, estimate_s: float) -> bool:
        """Whether :data:`MIN_SHARE` of a section estimated at ``estimate_s`` is left, the estimate scaled by how
        the sections so far compared with theirs (a slower GPU, or a dry run's tiny models)."""
        scale = statistics.median(self._scales) if self._scales else 1.0
        return self.left() >= MIN_SHARE * estimate_s * scale

    def record(self, estimate_s: float, took_s: float) -> None:
        self._scales.append(took_s / estimate_s)


def run_section(section: Section, ctx: Context) -> dict:
    """The section's result with its ``status``: ok, truncated or skipped (time budget), or error."""
    print(f"[{ctx.budget.elapsed():6.1f} s] {section.name}", flush=True)
    if not ctx.budget.fits(section.estimate_s):
        print(f"    {SKIPPED}: {ctx.budget.left():.0f} s left", flush=True)
        return {"status": SKIPPED, "time_left_s": ctx.budget.left()}
    t0 = time.perf_counter()
    try:
        result = section.run(ctx)
        status = TRUNCATED if result.get("timed_runs", ctx.args.repeats) < ctx.args.repeats else "ok"
    except Exception as e:  # one failing section (out of memory, a missing kernel) must not cost the others
        traceback.print_exc()
        result, status = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}, "error"
    if status == "error":  # here, not in the except block, whose traceback still holds the section's tensors
        ctx.models.release()
    took = time.perf_counter() - t0
    ctx.budget.record(section.estimate_s, took)
    print(f"    {status} in {took:.1f} s", flush=True)
    return {"status": status, "elapsed_s": took, **result}


# --------------------------------------------------------------------------- environment


def try_install_flash_attn(seconds: float, command: Sequence[str] | None = None) -> dict:
    """Run ``pip install flash-attn --no-build-isolation`` for at most ``seconds``; never raises.

    Returns what happened (``ok``, ``outcome``, the output's tail). On timeout the whole process group is
    killed, since pip builds in child processes.
    """
    command = list(command or (sys.executable, "-m", *FLASH_ATTN_INSTALL))
    t0 = time.perf_counter()
    record = {"command": " ".join(command), "limit_s": seconds}
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    except OSError as e:
        return {**record, "ok": False, "outcome": f"could not start: {e}", "elapsed_s": 0.0, "output_tail": ""}
    try:
        output, _ = proc.communicate(timeout=seconds)
        ok, outcome = proc.returncode == 0, "installed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):  # it may have ended just now
            os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        ok, outcome = False, f"timed out after {seconds:g} s"
    return {**record, "ok": ok, "outcome": outcome, "elapsed_s": time.perf_counter() - t0,
            "output_tail": (output or "")[-800:]}


def flash_attn_status(install_s: float | None) -> dict:
    """Whether ``flash_attn`` imports (after the opt-in install attempt), and its version."""
    status: dict = {"install": try_install_flash_attn(install_s) if install_s else None}
    importlib.invalidate_caches()
    try:
        import flash_attn
    except Exception as e:  # ImportError, or a broken build's OSError / RuntimeError
        return {**status, "importable": False, "reason": f"{type(e).__name__}: {e}"[:300]}
    return {**status, "importable": True, "version": getattr(flash_attn, "__version__", None)}


def choose_attention(requested: str, device: torch.device, flash: dict) -> str:
    """The LLM's attention: ``requested``, or for ``auto`` FlashAttention 2 where it imports on CUDA, else SDPA."""
    if requested != "auto":
        return requested
    return "flash_attention_2" if device.type == "cuda" and flash["importable"] else "sdpa"


def ceilings(device: torch.device, dtype: torch.dtype, dry_run: bool) -> dict:
    """The device's matmul rate (``dtype``, random data) and copy bandwidth (read + write), medians of 3 × 10."""
    n, numel = (256, 2**22) if dry_run else (8192, 2**29)  # GPU: 128 MiB matrices, a 2 GiB fp32 buffer
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)

    def rate(fn: Callable[[], object]) -> float:
        fn()
        return statistics.median(latency.timed(lambda: [fn() for _ in range(10)], device)[0] / 10 for _ in range(3))

    result = {"matmul_n": n, "matmul_tflop_s": 2 * n**3 / rate(lambda: a @ b) / 1e12,
              "copy_bytes": 2 * x.numel() * x.element_size(),
              "copy_gb_s": 2 * x.numel() * x.element_size() / rate(lambda: y.copy_(x)) / 1e9}
    del a, b, x, y
    return result


def environment(device: torch.device, dtype: torch.dtype, attention: str, flash: dict, dry_run: bool) -> dict:
    """Versions, the device, dtypes, attention kernels, and the measured ceilings."""
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
           else None, "device": str(device), "llm_dtype": str(dtype).removeprefix("torch."),
           "tower_dtype": {"llava-v1.5": "fp32 (loaded from mm_vision_tower, as load_pretrained_model does)",
                           "llava-v1.6": "the LLM's (the tower's weights are in the checkpoint)"},
           "llm_attention": attention, "flash_attn": flash,
           "tower_attention": {"ours": "SDPA in this project's CLIP layers; the [CLS] row alone in fp32 at the "
                                       "selected layer; no layer after it",
                               "upstream": "HF CLIP eager attention, every layer's maps returned"},
           "sdpa_backends": {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled", lambda: None)()
                             for name in ("flash", "mem_efficient", "math", "cudnn")},
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=props.total_memory / 2**30, multiprocessors=props.multi_processor_count)
    else:
        env.update(gpu=None, cpu=platform.processor() or platform.machine(), cpu_threads=torch.get_num_threads())
    env["ceilings"] = ceilings(device, dtype, dry_run)
    return env


# --------------------------------------------------------------------------- output


def _f(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _tokens(row: dict, first: bool) -> str:
    return f"{row['visual_tokens']} (unpruned)" if first else str(row["visual_tokens"])


def latency_markdown(name: str, s: dict) -> list[str]:
    rows, upstream = s["rows"]["ours"], s["rows"]["upstream"]
    fp16 = s["rows"].get("ours_fp16_tower")
    out = [f"## {name}: latency, batch 1", "",
           f"{s['llm_layers']} LLM layers, {s['tower_layers']}-layer tower ({s['tower_dtype']}), {s['crops']} crop(s), "
           f"LLM {s['llm_dtype']} with {s['llm_attention']} attention; built in {s['build_s']:.1f} s, weights "
           f"{s['weights_mib']:,.0f} MiB; {s['timed_runs']} timed runs per cell. Speed-ups (×) are against "
           "the same path unpruned.", "",
           "| Visual tokens | Reduction | FLOPs-limit × | Prefill (ms) | Prefill × | TPOT (ms) | TPOT × | E2E (ms) "
           "| E2E × | Peak mem (MiB) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        out.append(f"| {_tokens(r, i == 0)} | {r['reduction_pct']:.1f} % | {r['flops_limit_speedup']:.2f}x "
                   f"| {r['prefill_ms']:.2f} | {r['prefill_speedup']:.2f}x | {_f(r['tpot_ms'], '.2f')} "
                   f"| {_f(r['tpot_speedup'], '.2f')}x | {r['e2e_ms']:.1f} | {r['e2e_speedup']:.2f}x "
                   f"| {_f(r['peak_mem_mib'], '.1f')} |")
    paths = "upstream / ours" + (" / ours fp16 tower" if fp16 else "")
    out += ["", f"Upstream-style tower (eager CLIP, all attention maps) vs this project's, batch 1 ({paths}):", "",
            f"| Visual tokens | Prefill (ms) {paths} | Prefill × {paths} | E2E (ms) {paths} | Peak mem (MiB) {paths} "
            "| Ours ÷ upstream: prefill × | E2E × | peak mem |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, (u, o, x) in enumerate(zip(upstream, rows, s["ours_over_upstream"])):
        cells = [u, o] + ([fp16[i]] if fp16 else [])

        def joined(key: str, spec: str, suffix: str = "") -> str:
            return " / ".join(_f(c[key], spec) + suffix for c in cells)

        out.append(f"| {_tokens(o, i == 0)} | {joined('prefill_ms', '.2f')} | {joined('prefill_speedup', '.2f', 'x')} "
                   f"| {joined('e2e_ms', '.1f')} | {joined('peak_mem_mib', '.1f')} "
                   f"| {x['prefill_per_sample_speedup']:.2f}x | {x['samples_per_s_ratio']:.2f}x "
                   f"| {_f(x['mem_ratio'], '.2f')} |")
    t = s["tower_alone"]
    out += ["", f"Vision tower alone ({t['crops']} crop(s)): plain SDPA CLIP {t['plain_sdpa_ms']:.2f} ms; "
                f"upstream eager with all maps {t['upstream_eager_ms']:.2f} ms "
                f"({t['upstream_eager_overhead_pct']:+.1f} %); this project {t['ours_ms']:.2f} ms "
                f"({t['ours_overhead_pct']:+.1f} %).",
            "", "Attention ops and kernels of one prefill + decode step: "
                + (", ".join(f"`{k}` ×{v}" for k, v in s["attention_ops"].items()) or "none seen")]
    return out


def kept_sets_markdown(name: str, s: dict) -> list[str]:
    low = s["low_precision"]
    out = [f"## {name}: kept sets, fp32 vs {low} [CLS] scores ({s['images']} random images)", "",
           f"Reference: the {s['tower_dtype']} tower on fp32 pixels, fp32 scores. Exact set: share of images whose "
           f"kept set is identical; overlap: mean share of the reference's kept patches also kept. Ties: lower patch "
           f"index.", "",
           f"| Kept per crop | {low} tower on {low} pixels, {low} scores: exact set | overlap "
           f"| {s['tower_dtype']} tower on pixels rounded to {low}, scores cast to {low} (as evaluated): exact set "
           "| overlap |", "|---:|---:|---:|---:|---:|"]
    for b in s["budgets"]:
        t, d = b["fp16_tower"], b["fp32_tower_fp16_io"]
        out.append(f"| {b['kept_per_crop']} | {t['exact_set_fraction']:.3f} | {t['mean_overlap']:.4f} "
                   f"| {d['exact_set_fraction']:.3f} | {d['mean_overlap']:.4f} |")
    return out


def batching_markdown(name: str, s: dict) -> list[str]:
    out = [f"## {name}: batched generation (left-padded, preprocessed images)", "",
           f"{s['timed_runs']} timed runs per cell. Samples/s: batch ÷ end-to-end time; × batch 1 at the same "
           "budget.", "",
           "| Visual tokens | Batch | Prefill (ms) | E2E (ms) | Samples/s | × batch 1 | Peak mem (MiB) |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s["rows"]:
        out.append(f"| {r['visual_tokens']} | {r['batch_size']} | {r['prefill_ms']:.1f} | {r['e2e_ms']:.1f} "
                   f"| {r['samples_per_s']:.3g} | {r['samples_per_s_vs_smallest_batch']:.2f}x "
                   f"| {_f(r['peak_mem_mib'], '.1f')} |")
    out += ["", "Batch answers vs batch-1 answers on the same prompts (greedy, fixed seed):", "",
            "| Kept per crop | Prompts | Lengths | Identical answers | First token identical | Matching prefix "
            "| Kept sets identical |", "|---:|---|---|---:|---:|---:|---:|"]
    for a in s["answers"]:
        for kind in ("same_length", "padded"):
            x = a[kind]
            lengths = f"{min(x['prompt_lengths'])}–{max(x['prompt_lengths'])}"
            out.append(f"| {a['kept_per_crop']} | {x['prompts']} ({kind.replace('_', ' ')}) | {lengths} "
                       f"| {x['identical_fraction']:.3f} | {x['first_token_identical_fraction']:.3f} "
                       f"| {x['mean_matching_prefix_fraction']:.3f} | {x['kept_sets_identical_fraction']:.3f} |")
    return out


MARKDOWN = {"latency": latency_markdown, "kept_sets": kept_sets_markdown, "batching": batching_markdown}


def section_markdown(name: str, s: dict) -> str:
    model, kind = name.rsplit(".", 1)
    if s["status"] in ("ok", TRUNCATED):
        return "\n".join(MARKDOWN[kind](model, s) + ([f"", f"*{TRUNCATED}*"] if s["status"] == TRUNCATED else []))
    detail = f": {s['error']}" if s["status"] == "error" else ""
    return f"## {model}: {kind}\n\n*{s['status']}{detail}*"


def to_markdown(results: dict) -> str:
    """The whole report: the environment, then every section's tables (or its status)."""
    env, st = results["env"], results["settings"]
    flash = env["flash_attn"]
    device = (f"{env['gpu']} (compute capability {env['capability']}, {env['gpu_memory_gib']:.0f} GiB)" if env["gpu"]
              else f"CPU ({env['cpu_threads']} threads), dry run with tiny shapes")
    ceil = env["ceilings"]
    out = ["# FasterVLM GPU check" + (" (dry run)" if results["dry_run"] else ""), "",
           f"{device}; torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, Python "
           f"{env['python']}. LLM {env['llm_dtype']}, {env['llm_attention']} attention (flash_attn "
           f"{flash.get('version') if flash['importable'] else 'not importable'}). Measured ceilings: "
           f"{ceil['matmul_tflop_s']:.3g} TFLOP/s {env['llm_dtype']} matmul (n = {ceil['matmul_n']}), "
           f"{ceil['copy_gb_s']:.3g} GB/s copy.", "",
           f"Random weights. {st['text_tokens']} text tokens (image after the first {latency.PROMPT_PREFIX}), "
           f"{st['new_tokens']} new tokens, medians of {st['repeats']} runs after {st['warmup']} warm-up round(s). "
           f"Peak memory: above the loaded model. Status: {results['status']}, {results['elapsed_s']:.0f} s of a "
           f"{st['budget_s']:.0f} s budget, started {results['started_utc']}."]
    for name, s in results["sections"].items():
        if s["status"] not in ("pending", "not selected"):
            out += ["", section_markdown(name, s)]
    return "\n".join(out) + "\n"


def write_results(out_dir: Path, results: dict) -> None:
    """Replace the JSON and the markdown in ``out_dir`` (each written aside, then renamed, so never torn)."""
    for name, text in ((JSON_NAME, json.dumps(results, indent=2)), (MARKDOWN_NAME, to_markdown(results))):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / name)


# --------------------------------------------------------------------------- CLI

# Flags whose defaults differ in a dry run: (real run, dry run).
RUN_DEFAULTS = {"repeats": (10, 1), "warmup": (1, 0), "new_tokens": (16, 2), "batch_sizes": ([1, 8, 32], [1, 4, 8]),
                "compare_batch": (8, 4), "agreement_images": (64, 8), "dtype": ("fp16", "fp32")}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m llava.bench.gpu_check", description=__doc__)
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help=f"folder for {JSON_NAME} and {MARKDOWN_NAME} (created; both rewritten after every section)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every section on the CPU with tiny shapes and fewer repeats, to check the code, "
                        "not the GPU")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="seconds from the start after which no section starts and measuring rounds stop; a section "
                        "that would not fit is recorded as skipped (default 420)")
    p.add_argument("--sections", nargs="+", choices=[s.name for s in SECTIONS], metavar="NAME",
                   help=f"run only these sections (default: all, in this order: {', '.join(s.name for s in SECTIONS)})")
    p.add_argument("--repeats", type=int, help="timed rounds per section; medians are reported (default 10; 1 dry)")
    p.add_argument("--warmup", type=int, help="untimed rounds before them (default 1; 0 dry)")
    p.add_argument("--new-tokens", type=int,
                   help="tokens generated per run, EOS suppressed; at least 2 for TPOT (default 16; 2 dry)")
    p.add_argument("--text-tokens", type=int, default=60,
                   help=f"prompt tokens besides the image, which follows the first {latency.PROMPT_PREFIX} "
                        "(default 60)")
    p.add_argument("--batch-sizes", type=int, nargs="+", metavar="B",
                   help="batch sizes timed in the batching section (default 1 8 32; 1 4 8 dry)")
    p.add_argument("--compare-batch", type=int,
                   help="prompts whose batched answers are compared with batch-1 answers (default 8; 4 dry)")
    p.add_argument("--agreement-images", type=int, help="random images of the kept-set agreement (default 64; 8 dry)")
    p.add_argument("--dtype", choices=sorted(DTYPES),
                   help="the LLM's dtype and the NeXT tower's (default fp16, the paper's; fp32 dry, since CPUs run "
                        "fp16 matmuls slowly); bf16 also replaces fp16 in --fp16-tower and the kept-set agreement")
    p.add_argument("--attention", choices=["auto", "sdpa", "flash_attention_2", "eager"], default="auto",
                   help="the LLM's attention (default auto: flash_attention_2 where flash_attn imports on CUDA, "
                        "else sdpa)")
    p.add_argument("--install-flash-attn", type=float, metavar="SECONDS",
                   help=f"first try `{' '.join(FLASH_ATTN_INSTALL)}` for at most SECONDS (counted in --budget-s); "
                        "on failure or timeout carry on with SDPA, recording why")
    p.add_argument("--fp16-tower", action="store_true",
                   help="also time this project's path with the LLaVA-1.5 tower in fp16 (bf16 under --dtype bf16) "
                        "instead of fp32 (opt-in; about 20 s more per LLaVA-1.5 model)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, prompts and images (default 0)")
    p.add_argument("--device", default="cuda",
                   help="the one GPU every model runs on: cuda (the current one, cuda:0 unless set) or cuda:N "
                        "(default cuda; the dry run uses the CPU)")
    return p


def resolve_defaults(args) -> None:
    """Fill the flags left unset with the real run's or the dry run's default, and check them."""
    for key, (real, dry) in RUN_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, dry if args.dry_run else real)
    if args.new_tokens < 2:
        raise ValueError("--new-tokens must be at least 2 (TPOT needs a decode step)")
    if args.repeats < 1 or args.warmup < 0 or args.agreement_images < 1:
        raise ValueError("--repeats and --agreement-images must be >= 1 and --warmup >= 0")
    if min(args.batch_sizes) < 1 or not 1 < args.compare_batch <= max(args.batch_sizes):
        raise ValueError("--batch-sizes must be >= 1 and --compare-batch in [2, the largest batch size]")
    if args.text_tokens <= latency.PROMPT_PREFIX:
        raise ValueError(f"--text-tokens must exceed the {latency.PROMPT_PREFIX}-token prefix before the image")


def cuda_device(name: str) -> torch.device:
    """``--device``: one visible CUDA device, ``cuda`` meaning the current one; anything else exits 2."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type != "cuda":
        print(f"error: --device {name!r}: expected cuda or cuda:N", file=sys.stderr)
        sys.exit(2)
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        print(f"error: --device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible", file=sys.stderr)
        sys.exit(2)
    return torch.device("cuda", index)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the check and write ``--out``; returns what the JSON holds."""
    args = build_parser().parse_args(argv)
    resolve_defaults(args)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible (torch.cuda.is_available() is False); "
              "use --dry-run to exercise the code on the CPU", file=sys.stderr)
        sys.exit(2)
    if not args.dry_run:
        args.device = str(cuda_device(args.device))
        torch.cuda.set_device(args.device)  # memory statistics and synchronisation without a device argument
        return run_check(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes gain nothing from threads and lose badly to a busy CPU's other jobs
    try:
        return run_check(args)
    finally:
        torch.set_num_threads(threads)


def run_check(args) -> dict:
    """Every selected section in priority order, the results rewritten to ``args.out`` after each."""
    import transformers

    budget = Budget(args.budget_s)
    transformers.logging.set_verbosity_error()  # per-call deprecation notices would bury the progress lines
    device = torch.device("cpu" if args.dry_run else args.device)
    dtype = DTYPES[args.dtype]
    args.out.mkdir(parents=True, exist_ok=True)
    flash = flash_attn_status(args.install_flash_attn)
    attention = choose_attention(args.attention, device, flash)
    selected = set(args.sections or [s.name for s in SECTIONS])
    results = {
        "schema": 1, "status": "running", "dry_run": args.dry_run,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "elapsed_s": 0.0,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "debug", "sections")},
        "env": environment(device, dtype, attention, flash, args.dry_run),
        "sections": {s.name: {"status": "pending" if s.name in selected else "not selected"} for s in SECTIONS},
    }
    print(f"GPU check on {results['env']['gpu'] or 'CPU (dry run)'}, budget {args.budget_s:.0f} s, "
          f"LLM attention {attention}", flush=True)
    ctx = Context(args, device, dtype, Models(device, dtype, attention, args.dry_run, args.seed), budget,
                  latency.PeakMemory(device))
    write_results(args.out, results)
    for section in SECTIONS:
        if section.name in selected:
            results["sections"][section.name] = run_section(section, ctx)
            results["elapsed_s"] = budget.elapsed()
            write_results(args.out, results)
            print(section_markdown(section.name, results["sections"][section.name]) + "\n", flush=True)
    ctx.models.release()
    results["status"] = "complete"
    results["elapsed_s"] = budget.elapsed()
    write_results(args.out, results)
    print(to_markdown(results), flush=True)
    print(f"wrote {args.out / JSON_NAME} and {args.out / MARKDOWN_NAME}", flush=True)
    return results


def _main_status() -> None:
    """``main`` as a command: exit 1 when a section failed (its error is in the JSON)."""
    results = main()
    if any(s["status"] == "error" for s in results["sections"].values()):
        sys.exit(1)


if __name__ == "__main__":
    cli(_main_status)
