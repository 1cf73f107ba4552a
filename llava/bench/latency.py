"""Measured latency and memory of FasterVLM per kept-token budget, next to the FLOPs-limit speed-up.

    python -m llava.bench.latency --model-path ./checkpoints/llava-v1.5-7b      # a real (or tiny) checkpoint
    python -m llava.bench.latency --tiny                                        # a tiny random checkpoint
    python -m llava.bench.latency --random-arch llama-7b --layers 2 --compare upstream --json out.json
    python -m llava.bench.latency --tiny --compare upstream-e2e --batch-size 8  # upstream-style vs ours, batched

For each budget (default: all N patches, then 50/25/10/5 % of them rounded as the paper does, i.e.
576 288 144 58 29 for a 336-px CLIP-L tower) the harness times, in rounds in which every budget runs
once (the first ``--warmup`` rounds untimed):

* prefill: one forward over the prompt and the image (vision tower, [CLS] scoring, top-k, projector, LLM
  prefill) up to the first token's logits;
* decode: ``--new-tokens`` − 1 greedy steps on the prefill's KV cache → time per output token (TPOT);
* end to end: ``model.generate`` of exactly ``--new-tokens`` tokens (EOS suppressed);

and reports medians over the ``--repeats`` timed rounds, peak memory, and each ratio to the unpruned
model of the same run. The FLOPs-limit speed-up (``llava.bench.flops``: LLM prefill over text + visual
tokens plus every vision tower layer) is the bound for a compute-bound prefill; measured ratios fall
short of it where fixed costs (vision tower, launch overhead, decode-time weight reads) dominate.

The prompt is ``--text-tokens`` random token ids with the image placeholder after the first 35 (the
vicuna_v1 system prompt's length); latency depends on lengths only. The image is a fixed random
640×480 picture preprocessed under the model's config.

``--compare`` adds one or both comparisons with upstream FasterVLM's way of scoring, whose vision tower is
HF's ``CLIPVisionModel`` in eager attention returning every layer's attentions and hidden states, the
[CLS] row read from the selected layer's map (``attentions[-2]``):

* ``upstream``: the vision tower alone, upstream's against this project's (SDPA, one extra [CLS] query
  row, no layer after the selected one), both relative to a plain SDPA CLIP forward with hidden states,
  as vanilla LLaVA runs it;
* ``upstream-e2e``: the whole model at every budget, upstream-style (the tower's forward swapped for
  upstream's, batch 1) against this project's path (its own tower, ``--batch-size`` prompts left-padded),
  both through the evaluation loop's ``llava.eval.runner.generate_batch``: prefill (a one-token
  generation: preprocessing, tower, projector, LLM prefill), samples/s (``--new-tokens`` tokens per
  sample), peak memory, and ours ÷ upstream. The batch's prompts have the same length with different ids
  and images, so the left-padding path runs without padding skewing the per-sample cost.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from llava.bench import flops
from llava.compat import MODEL_CACHE_KWARG, output_cache
from llava.eval.runner import pruning_kwargs
from llava.eval.utils import cli
from llava.pruning import available_methods, cli_parameters
from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images
from llava.pruning.base import TowerOutputs, TowerRequest

PROMPT_PREFIX = 35  # BOS + vicuna_v1 system prompt + "USER: " before the image (upstream-behaviour.md §11)
REDUCTIONS = (50.0, 75.0, 90.0, 95.0)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# --random-arch presets: LLM shape, vision tower shape, tower attention heads (CLIP-L/14: 16 of 64 dims).
RANDOM_ARCHS: dict[str, tuple[flops.LLMConfig, flops.VisionConfig, int]] = {
    "llama-7b": (flops.VICUNA_7B, flops.CLIP_L14_336, 16),
    "llama-13b": (flops.VICUNA_13B, flops.CLIP_L14_336, 16),
}
LLAMA_VOCAB = 32000
PAD_ID = 0  # any id will do: left padding is masked out
T = TypeVar("T")


# --------------------------------------------------------------------------- models


# LLaVA-1.6's image_grid_pinpoints as (columns, rows) of tower crops: [[336, 672], [672, 336], ...] at 336 px.
NEXT_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Within the block, new floating-point tensors (module parameters included) are created in ``dtype``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_random_llava(llm: flops.LLMConfig, vision: flops.VisionConfig, vision_heads: int, layers: int,
                       vision_layers: int, device: str, dtype: torch.dtype, vocab_size: int = LLAMA_VOCAB, *,
                       vision_dtype: torch.dtype | None = None, anyres: bool = False,
                       attn_implementation: str = "sdpa"):
    """A random-weight LLaVA-1.5 with ``llm``/``vision`` shapes but ``layers``/``vision_layers`` layers.

    Built in memory (no checkpoint, no download): ``(model, image_processor)``. Every weight is created and
    initialised on ``device`` in its final dtype (the LLM in ``dtype``, the tower in ``vision_dtype``, by default
    ``dtype``), so a 13B-shaped model never exists in fp32 or on the CPU and builds in seconds on a GPU.
    ``anyres``: LLaVA-NeXT (1.6) as the paper ran it instead: anyres on the fixed 2×2 grid (``anyres_protocol``
    ``paper``, 5 crops), with 1.6's grids and ``spatial_unpad`` merge in the config. ``attn_implementation``:
    the LLM's attention kernel. The tower needs at least two layers, since LLaVA reads the penultimate one.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from llava.model.multimodal_encoder.clip_encoder import CLIPImageProcessor

    if vision_layers < 2:
        raise ValueError("the vision tower needs at least 2 layers (LLaVA reads the penultimate one)")
    side = vision.image_size
    next_keys = dict(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
                     image_grid_pinpoints=[[cols * side, rows * side] for cols, rows in NEXT_GRIDS])
    config = LlavaConfig(
        hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size, num_hidden_layers=layers,
        num_attention_heads=llm.num_heads, num_key_value_heads=llm.num_kv_heads or llm.num_heads,
        vocab_size=vocab_size, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, tie_word_embeddings=False, mm_vision_tower=f"random-{vision.name}",
        mm_hidden_size=vision.hidden_size, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", **(next_keys if anyres else
                                             dict(image_aspect_ratio="pad", mm_patch_merge_type="flat")))
    config._attn_implementation = attn_implementation
    with torch.device(device):
        with default_dtype(dtype):
            # The tower is built with delay_load: nothing is fetched.
            model = LlavaLlamaForCausalLM(config, anyres_protocol="paper" if anyres else None)
        with default_dtype(vision_dtype or dtype):
            clip = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
                num_hidden_layers=vision_layers, num_attention_heads=vision_heads, image_size=side,
                patch_size=vision.patch_size))
    if anyres:
        with torch.no_grad():  # a bare nn.Parameter, which no _init_weights fills (the paper protocol never reads it)
            model.get_model().image_newline.normal_()
    tower = model.get_vision_tower()
    # What CLIPVisionTower.load_model would set from a folder, here from the in-memory modules.
    tower.vision_tower = clip.requires_grad_(False)
    tower.image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    tower.is_loaded = True
    return model.eval(), tower.image_processor


def load_source(args: argparse.Namespace, dtype: torch.dtype):
    """``(model, image_processor, description)`` for ``--model-path``, ``--tiny`` or ``--random-arch``."""
    if args.random_arch:
        llm, vision, heads = RANDOM_ARCHS[args.random_arch]
        vision_layers = args.vision_layers or max(2, round(vision.num_layers * args.layers / llm.num_layers))
        model, processor = build_random_llava(llm, vision, heads, args.layers, vision_layers, args.device, dtype)
        return model, processor, (f"random {args.random_arch} ({args.layers} of {llm.num_layers} LLM layers, "
                                  f"{vision_layers} of {vision.num_layers} tower layers)")
    from llava.model.builder import load_pretrained_model

    def load(path: str):
        # The tower in the dtype evaluation loads it in (fp32 for LLaVA-1.5, the LLM's for LLaVA-NeXT): the builder's
        # default, so that these rows time what the evaluation CLIs run.
        _, model, processor, _ = load_pretrained_model(path, None, Path(path).name, device=args.device, dtype=dtype)
        if isinstance(processor, dict):
            raise SystemExit(f"{path}: a video checkpoint; the latency harness times image models only")
        return model, processor

    if not args.tiny:
        return (*load(args.model_path), args.model_path)
    from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:  # every weight is in memory once loaded
        return (*load(str(make_tiny_checkpoint(Path(tmp) / "llava-v1.5-tiny"))), "tiny random checkpoint")


def flops_model(model, crops: int) -> flops.ModelConfig:
    """The loaded model's shapes in ``llava.bench.flops`` terms."""
    c = model.config
    t = model.get_vision_tower().config
    llm = flops.LLMConfig(c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                          getattr(c, "num_key_value_heads", None))
    vision = flops.VisionConfig(str(c.mm_vision_tower), t.num_hidden_layers, t.hidden_size, t.intermediate_size,
                                t.image_size, t.patch_size)
    return flops.ModelConfig(getattr(c, "_name_or_path", "") or "model", llm, vision, crops)


# --------------------------------------------------------------------------- inputs and timing


def make_prompt(vocab_size: int, text_tokens: int, seed: int) -> tuple[list[int], Image.Image]:
    """``text_tokens`` random ids with the image placeholder after the first :data:`PROMPT_PREFIX`, and a random
    640×480 image."""
    if text_tokens <= PROMPT_PREFIX:
        raise ValueError(f"--text-tokens must exceed the {PROMPT_PREFIX}-token prefix before the image")
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, vocab_size, (text_tokens,), generator=g).tolist()  # ids 0-2: unk/bos/eos
    text[0] = 1  # BOS
    pixels = (np.random.RandomState(seed).rand(480, 640, 3) * 255).astype("uint8")
    return text[:PROMPT_PREFIX] + [IMAGE_TOKEN_INDEX] + text[PROMPT_PREFIX:], Image.fromarray(pixels)


def make_inputs(model, processor, text_tokens: int, seed: int):
    """``(input_ids (1, text_tokens + 1), images, image_sizes)`` of :func:`make_prompt` on the model's device."""
    ids, image = make_prompt(model.config.vocab_size, text_tokens, seed)
    images = process_images([image], processor, model.config)
    images = ([x.to(model.device, model.dtype) for x in images] if isinstance(images, list)
              else images.to(model.device, model.dtype))
    return torch.tensor([ids], device=model.device), images, [image.size]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall-clock seconds of ``fn()`` with the device drained before and after, and its result."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


class PeakMemory:
    """Peak memory above the level at :meth:`start`, in MiB; None where it cannot be measured.

    CUDA: ``max_memory_allocated`` minus the allocation at start (weights excluded). CPU (Linux): peak
    resident set size (VmHWM, reset at start through ``/proc/self/clear_refs``) minus the RSS at start;
    approximate, since the allocator may keep freed pages mapped.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.base: int | None = None

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "CUDA max_memory_allocated above the loaded model"
        return "peak RSS above the RSS before the runs (/proc VmHWM, reset per run); n/a off Linux"

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        try:
            _malloc_trim()
            Path("/proc/self/clear_refs").write_text("5")  # resets the process's peak RSS to its current RSS
            self.base = _proc_status_kib("VmRSS") * 1024
        except (OSError, ValueError):
            self.base = None

    def stop(self) -> float | None:
        if self.base is None:
            return None
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _proc_status_kib("VmHWM") * 1024
        return (peak - self.base) / 2**20


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc), so a row's peak is not hidden by the last row's leftovers."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the delta stays a lower bound
        pass


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise ValueError(f"{key} not in /proc/self/status")


@dataclass
class Row:
    """One budget's medians and ratios (ratios: unpruned time ÷ this time; memory: this ÷ unpruned)."""

    kept_per_crop: int
    visual_tokens: int
    reduction_pct: float
    batch_size: int
    prefill_ms: float
    tpot_ms: float | None  # None where decode is not timed apart (generate_batch)
    e2e_ms: float
    samples_per_s: float
    peak_mem_mib: float | None
    prefill_speedup: float = 1.0
    tpot_speedup: float | None = 1.0
    e2e_speedup: float = 1.0
    mem_ratio: float | None = None
    flops_limit_speedup: float = 1.0
    prefill_runs_ms: tuple[float, ...] = ()
    tpot_runs_ms: tuple[float | None, ...] = ()
    e2e_runs_ms: tuple[float, ...] = ()


# A timed run at the model's current budget: prefill ms, ms per decoded token (None if not timed apart),
# end-to-end ms, and the visual tokens spliced into each sample of the batch.
Run = Callable[[], tuple[float, float | None, float, list[int]]]


@torch.inference_mode()
def run_once(model, ids, images, image_sizes, new_tokens: int) -> tuple[float, float, float, list[int]]:
    """A :data:`Run` of one prompt: a prefill forward, the decode steps on its KV cache, and one ``generate``."""
    device = ids.device
    t_prefill, out = timed(lambda: model(ids, images=images, image_sizes=image_sizes, use_cache=True,
                                         logits_to_keep=1), device)
    visual = list(model.last_pruning.visual_tokens)

    def decode():
        # The KV cache under the installed transformers' own name (llava.compat): the deprecated alias would warn
        # on every step.
        cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)  # (1, 1)
        for _ in range(new_tokens - 1):
            step = model(token, use_cache=True, **{MODEL_CACHE_KWARG: cache})
            cache, token = output_cache(step), step.logits[:, -1:].argmax(-1)

    t_decode, _ = timed(decode, device)
    del out  # free the prefill's KV cache before generate builds its own
    t_e2e, generated = timed(lambda: model.generate(
        ids, images=images, image_sizes=image_sizes, do_sample=False, num_beams=1, max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, use_cache=True), device)
    if generated.shape[1] != new_tokens:
        raise RuntimeError(f"generate returned {generated.shape[1]} tokens, expected {new_tokens}")
    return t_prefill * 1e3, t_decode * 1e3 / (new_tokens - 1), t_e2e * 1e3, visual


class _GeneratedShape:
    """The tokenizer handed to ``generate_batch``, which only decodes with it: the harness needs the shape of the
    generated ids (to check that every sample got all its tokens), not text, and random ids make none."""

    shape: tuple[int, ...] = ()

    def batch_decode(self, ids: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        self.shape = tuple(ids.shape)
        return [""] * len(ids)


def run_batch(model, processor, prompts: Sequence[tuple[list[int], Image.Image]],
              new_tokens: int) -> tuple[float, None, float, list[int]]:
    """A :data:`Run` of ``prompts`` through the evaluation loop's ``generate_batch`` (left-padded beyond one).

    Prefill is a one-token generation. The decode steps run inside ``generate`` and are not timed apart: the
    difference of the two calls would be noise-dominated for short generations.
    """
    # Imported here, so that the harness (and llava.bench.gpu_check) loads without the evaluation loop's own
    # dependencies, such as shortuuid, which a bare GPU machine's image may lack.
    from llava.eval.runner import generate_batch

    ids, images = (list(x) for x in zip(*prompts))
    decoded = _GeneratedShape()

    def generate(n: int) -> tuple[float, list[int]]:
        kwargs = dict(do_sample=False, num_beams=1, max_new_tokens=n, min_new_tokens=n, use_cache=True,
                      pad_token_id=PAD_ID)
        t, (_, counts) = timed(lambda: generate_batch(model, decoded, processor, ids, images, kwargs), model.device)
        if decoded.shape != (len(prompts), n):
            raise RuntimeError(f"generate_batch returned ids of shape {decoded.shape}, expected {(len(prompts), n)}")
        return t * 1e3, counts

    t_prefill, _ = generate(1)
    t_e2e, counts = generate(new_tokens)
    return t_prefill, None, t_e2e, counts


def interleave(cases: Sequence[Callable[[], T]], warmup: int, repeats: int, memory: PeakMemory | None = None,
               deadline: float | None = None) -> tuple[list[list[T]], list[float | None]]:
    """Each case's results over the ``repeats`` timed rounds, after ``warmup`` untimed ones, and its peak memory.

    The cases take turns within each round rather than running back to back, so a burst of load from
    another process lands on all of them alike instead of skewing one case's ratios. The peak is measured
    per call and the largest kept (None without ``memory`` or where it cannot be measured). Past ``deadline``
    (a ``time.perf_counter()`` value), no further round starts once one timed round is done.
    """
    results: list[list[T]] = [[] for _ in cases]
    peaks: list[list[float | None]] = [[] for _ in cases]
    for r in range(warmup + repeats):
        for i, case in enumerate(cases):
            if memory is not None:
                memory.start()
            out = case()
            peaks[i].append(memory.stop() if memory is not None else None)
            if r >= warmup:
                results[i].append(out)
        if deadline is not None and r >= warmup and time.perf_counter() > deadline:
            break
    return results, [None if None in p else max(p) for p in peaks]


def measure(model, budgets: Sequence[int | None], runs: Sequence[Run], warmup: int, repeats: int,
            memory: PeakMemory, deadline: float | None = None) -> list[list[Row]]:
    """Every run at every budget (kept per crop; None = unpruned), all interleaved: one row list per run.

    ``deadline``: as :func:`interleave`'s; the rows then hold fewer than ``repeats`` runs.
    """
    n = model.get_vision_tower().num_patches
    cases = [(run, k) for run in runs for k in budgets]

    def at_budget(run: Run, k: int | None):
        model.set_visual_token_num(k)
        return run()

    results, peaks = interleave([partial(at_budget, run, k) for run, k in cases], warmup, repeats, memory, deadline)
    rows = []
    for (_, k), runs_k, peak in zip(cases, results, peaks):
        prefill_ms, tpot_ms, e2e_ms, counts = zip(*runs_k)
        batch = len(counts[-1])
        tpot = None if None in tpot_ms else statistics.median(tpot_ms)
        rows.append(Row(kept_per_crop=n if k is None else k, visual_tokens=counts[-1][0], reduction_pct=0.0,
                        batch_size=batch, prefill_ms=statistics.median(prefill_ms), tpot_ms=tpot,
                        e2e_ms=statistics.median(e2e_ms), samples_per_s=batch * 1e3 / statistics.median(e2e_ms),
                        peak_mem_mib=peak, prefill_runs_ms=prefill_ms, tpot_runs_ms=tpot_ms, e2e_runs_ms=e2e_ms))
    return [rows[i:i + len(budgets)] for i in range(0, len(rows), len(budgets))]


def add_ratios(rows: list[Row], cfg: flops.ModelConfig, text_tokens: int) -> None:
    """Fill each row's ratios against ``rows[0]`` (the unpruned model) and its FLOPs-limit speed-up."""
    base = rows[0]
    vision = flops.vision_encoder_flops(cfg)

    def prefill_flops(visual: int) -> float:
        return flops.llm_prefill_flops(cfg, text_tokens + visual) + vision

    for r in rows:
        r.prefill_speedup = base.prefill_ms / r.prefill_ms
        r.tpot_speedup = None if r.tpot_ms is None else base.tpot_ms / r.tpot_ms
        r.e2e_speedup = base.e2e_ms / r.e2e_ms
        r.mem_ratio = (r.peak_mem_mib / base.peak_mem_mib
                       if r.peak_mem_mib is not None and base.peak_mem_mib else None)
        r.flops_limit_speedup = prefill_flops(base.visual_tokens) / prefill_flops(r.visual_tokens)
        r.reduction_pct = 100 * (1 - r.visual_tokens / base.visual_tokens) if base.visual_tokens else 0.0


# --------------------------------------------------------------------------- --compare upstream, upstream-e2e


def upstream_tower_outputs(tower, clip, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream FasterVLM's tower forward: ``(features, cls_attn)`` as this project's tower returns them.

    ``clip`` (``tower``'s HF CLIP, in eager attention) returns every layer's hidden states and attention
    maps; the features are the selected layer's, the [CLS] row is read from that layer's map.
    """
    s = tower.select_layer
    out = clip(images.to(tower.device, tower.dtype), output_hidden_states=True, output_attentions=True)
    hidden = out.hidden_states[s]
    attn = out.attentions[s if s < 0 else s - 1]  # the map of the layer that produced hidden_states[s]
    features = hidden[:, 1:] if tower.select_feature == "patch" else hidden
    return features.to(images.dtype), attn[:, :, 0, 1:].to(images.dtype)


@torch.no_grad()
def _upstream_forward(tower, images: torch.Tensor, request: TowerRequest | None = None):
    """The tower's ``forward`` contract, computed the upstream way, which has FasterVLM's [CLS] attention only."""
    features, cls_attn = upstream_tower_outputs(tower, tower.vision_tower, images)
    if request is None:
        return features, cls_attn
    if request.keys or request.patch_attn:
        raise ValueError("the upstream-style tower yields only FasterVLM's [CLS] attention")
    return TowerOutputs(features, cls_attn=cls_attn)


@contextmanager
def upstream_style_tower(model) -> Iterator[None]:
    """Within the block, the model's vision tower runs as upstream FasterVLM's did (:func:`upstream_tower_outputs`).

    Its HF CLIP switches to eager attention in place, sparing a second copy of the weights: this project's
    tower runs its own SDPA layers and never reads that setting. Both are restored on exit.
    """
    tower = model.get_vision_tower()
    clip = tower.vision_tower
    previous = clip.config._attn_implementation
    clip.set_attn_implementation("eager")
    tower.forward = partial(_upstream_forward, tower)
    try:
        yield
    finally:
        del tower.forward
        clip.set_attn_implementation(previous)


@torch.inference_mode()
def compare_upstream(tower, images, warmup: int, repeats: int) -> dict:
    """Median ms of three ways to get the selected layer's features (and [CLS] attention) from the tower."""
    x = images if not isinstance(images, list) else torch.cat(images)
    x = (x.flatten(0, 1) if x.ndim == 5 else x).to(tower.device, tower.dtype)  # (crops, 3, H, W)
    # Copies, since the plain and the eager forward alternate within each round.
    plain = copy.deepcopy(tower.vision_tower)
    plain.set_attn_implementation("sdpa")
    eager = copy.deepcopy(tower.vision_tower)
    eager.set_attn_implementation("eager")
    paths = {
        "plain_sdpa": lambda: plain(x, output_hidden_states=True).hidden_states[tower.select_layer][:, 1:],
        "upstream_eager": partial(upstream_tower_outputs, tower, eager, x),
        "ours": partial(tower, x),
    }
    times, _ = interleave([lambda fn=fn: timed(fn, x.device)[0] * 1e3 for fn in paths.values()], warmup, repeats)
    result = {f"{name}_ms": statistics.median(t) for name, t in zip(paths, times)}
    for name in ("upstream_eager", "ours"):
        result[f"{name}_overhead_pct"] = 100 * (result[f"{name}_ms"] / result["plain_sdpa_ms"] - 1)
    result["crops"] = x.shape[0]
    return result


def compare_upstream_e2e(model, processor, budgets: Sequence[int | None], cfg: flops.ModelConfig,
                         args: argparse.Namespace, memory: PeakMemory) -> tuple[list[Row], list[Row]]:
    """Rows of the upstream-style path (batch 1) and of this project's (``--batch-size`` prompts), interleaved."""
    prompts = [make_prompt(model.config.vocab_size, args.text_tokens, args.seed + i) for i in range(args.batch_size)]

    def upstream():
        with upstream_style_tower(model):
            return run_batch(model, processor, prompts[:1], args.new_tokens)

    ours = partial(run_batch, model, processor, prompts, args.new_tokens)
    upstream_rows, our_rows = measure(model, budgets, [upstream, ours], args.warmup, args.repeats, memory)
    for rows in (upstream_rows, our_rows):
        add_ratios(rows, cfg, args.text_tokens)
    return upstream_rows, our_rows


def ours_over_upstream(upstream: Row, ours: Row) -> dict:
    """Per-sample prefill speed-up, samples/s ratio and peak-memory ratio of this project's path to upstream's."""
    return {
        "visual_tokens": ours.visual_tokens,
        "prefill_per_sample_speedup": (upstream.prefill_ms / upstream.batch_size) / (ours.prefill_ms / ours.batch_size),
        "samples_per_s_ratio": ours.samples_per_s / upstream.samples_per_s,
        "mem_ratio": (ours.peak_mem_mib / upstream.peak_mem_mib
                      if ours.peak_mem_mib is not None and upstream.peak_mem_mib else None),
    }


# --------------------------------------------------------------------------- output


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _label(rows: Sequence[Row], i: int) -> str:
    return f"{rows[i].visual_tokens} (unpruned)" if i == 0 else str(rows[i].visual_tokens)


def to_markdown(rows: Sequence[Row], compare: dict | None = None,
                e2e: tuple[Sequence[Row], Sequence[Row]] | None = None) -> str:
    """The per-budget table, then the tower comparison and the upstream-style vs ours table when there are."""
    out = ["| Visual tokens | Reduction | Prefill (ms) | Prefill × | TPOT (ms) | TPOT × | E2E (ms) | E2E × "
           "| Peak mem (MiB) | Mem ratio | FLOPs-limit × |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        out.append(f"| {_label(rows, i)} | {r.reduction_pct:.1f} % | {r.prefill_ms:.2f} | {r.prefill_speedup:.2f}x "
                   f"| {_fmt(r.tpot_ms, '.2f')} | {_fmt(r.tpot_speedup, '.2f')}x "
                   f"| {r.e2e_ms:.1f} | {r.e2e_speedup:.2f}x "
                   f"| {_fmt(r.peak_mem_mib, '.1f')} | {_fmt(r.mem_ratio, '.2f')} | {r.flops_limit_speedup:.2f}x |")
    if compare:
        out += ["", f"Vision tower alone ({compare['crops']} crop(s)): [CLS] scoring overhead over a plain SDPA "
                    "CLIP forward", "",
                "| Path | Time (ms) | Overhead |", "|---|---:|---:|",
                f"| plain SDPA CLIP, all layers, hidden states | {compare['plain_sdpa_ms']:.2f} | — |",
                f"| upstream: eager CLIP, all attentions + hidden states | {compare['upstream_eager_ms']:.2f} "
                f"| {compare['upstream_eager_overhead_pct']:+.1f} % |",
                f"| this project: SDPA, [CLS] row only, stops at the selected layer | {compare['ours_ms']:.2f} "
                f"| {compare['ours_overhead_pct']:+.1f} % |"]
    if e2e:
        upstream, ours = e2e
        out += ["", f"Upstream-style (eager CLIP with all attentions, batch {upstream[0].batch_size}) vs this project "
                    f"(SDPA [CLS]-row tower, batch {ours[0].batch_size}) through generate_batch; "
                    "Prefill ×: against the same path unpruned", "",
                "| Visual tokens | FLOPs-limit × | Prefill (ms) up / ours | Prefill × up / ours "
                "| Samples/s up / ours | Peak mem (MiB) up / ours | Ours ÷ up: prefill per sample | samples/s "
                "| peak mem |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for i, (u, o) in enumerate(zip(upstream, ours)):
            x = ours_over_upstream(u, o)
            out.append(f"| {_label(ours, i)} | {o.flops_limit_speedup:.2f}x | {u.prefill_ms:.1f} / {o.prefill_ms:.1f} "
                       f"| {u.prefill_speedup:.2f}x / {o.prefill_speedup:.2f}x "
                       f"| {u.samples_per_s:.3g} / {o.samples_per_s:.3g} "
                       f"| {_fmt(u.peak_mem_mib, '.1f')} / {_fmt(o.peak_mem_mib, '.1f')} "
                       f"| {x['prefill_per_sample_speedup']:.2f}x | {x['samples_per_s_ratio']:.2f}x "
                       f"| {_fmt(x['mem_ratio'], '.2f')} |")
    return "\n".join(out)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.bench.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-path", help="LLaVA checkpoint folder (real or tiny)")
    src.add_argument("--tiny", action="store_true", help="build a tiny random checkpoint in a temporary folder")
    src.add_argument("--random-arch", choices=sorted(RANDOM_ARCHS),
                     help="random weights in memory: the named LLM's layer shape (llama-7b: d=4096, m=11008, "
                          "32 heads) and a CLIP-L/336-shaped tower, with --layers / --vision-layers layers")
    p.add_argument("--layers", type=int, default=2, help="LLM layers of --random-arch (default 2)")
    p.add_argument("--vision-layers", type=int, default=None,
                   help="tower layers of --random-arch (default: 24 scaled like the LLM's layers, at least 2)")
    p.add_argument("--kept", type=int, nargs="+", metavar="T",
                   help="kept visual tokens per crop (default: all N patches, then N x 50/25/10/5 %% rounded "
                        "half-up: 576 288 144 58 29 for CLIP-L/336)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="the one device the model runs on: cpu, cuda (the current GPU) or cuda:N (default: cuda when "
                        "available, else cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="the LLM's dtype (default: fp16 on CUDA, fp32 on CPU); checkpoints keep the tower dtype "
                        "evaluation uses (fp32 for LLaVA-1.5), --random-arch runs its tower in this dtype too")
    p.add_argument("--pruning-method", default="fastervlm", choices=available_methods(),
                   help="how the kept tokens are chosen, as in the evaluation CLIs (default fastervlm; "
                        "llava/pruning/README.md)")
    for param in cli_parameters():  # each method's own options, e.g. --fastv-k, as the evaluation CLIs take them
        defaults = ", ".join(f"{name}: {value}" for name, value in param.defaults.items())
        p.add_argument(param.flag, type=param.type, choices=param.choices, default=None,
                       help=f"{param.help} (default {defaults})")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds (each runs every budget once) (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; medians are reported (default 5)")
    p.add_argument("--new-tokens", type=int, default=32,
                   help="tokens generated per run, EOS suppressed (default 32; at least 2 for TPOT)")
    p.add_argument("--text-tokens", type=int, default=60,
                   help=f"prompt tokens besides the image, the image after the first {PROMPT_PREFIX} (default 60)")
    p.add_argument("--compare", choices=["upstream", "upstream-e2e"], nargs="+", default=[],
                   help="also time upstream FasterVLM's eager all-attentions tower against this project's: the "
                        "tower alone (upstream), and/or the whole model at batch 1 against ours at --batch-size "
                        "(upstream-e2e)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="prompts per generate_batch call on this project's path in --compare upstream-e2e (default 8)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice); 1 is steadier on a shared machine")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt ids and the image (default 0)")
    p.add_argument("--json", metavar="PATH", help="also write every number (and each run's time) as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the markdown table; returns what ``--json`` writes."""
    args = build_parser().parse_args(argv)
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be at least 2 (TPOT needs a decode step)")
    if args.repeats < 1 or args.warmup < 0 or args.batch_size < 1:
        raise SystemExit("--repeats and --batch-size must be >= 1 and --warmup >= 0")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    method_kwargs = pruning_kwargs(args)  # a flag of another method fails before anything loads
    model, processor, source = load_source(args, dtype)
    model.set_pruning_method(args.pruning_method, **method_kwargs)
    ids, images, image_sizes = make_inputs(model, processor, args.text_tokens, args.seed)
    crops = len(images[0]) if isinstance(images, list) else (images.shape[1] if images.ndim == 5 else 1)
    cfg = flops_model(model, crops)
    n = cfg.vision.num_patches
    per_crop = replace(cfg, num_crops=1)
    kept = args.kept or [flops.kept_from_reduction(per_crop, r) for r in REDUCTIONS]
    if any(not 0 <= k <= n for k in kept):
        raise SystemExit(f"--kept values must be in [0, {n}] (patches per crop)")

    memory = PeakMemory(device)
    budgets: list[int | None] = [None] + [k for k in kept if k != n]  # a budget of N is the unpruned model
    [rows] = measure(model, budgets, [partial(run_once, model, ids, images, image_sizes, args.new_tokens)],
                     args.warmup, args.repeats, memory)
    add_ratios(rows, cfg, args.text_tokens)
    compare = (compare_upstream(model.get_vision_tower(), images, args.warmup, args.repeats)
               if "upstream" in args.compare else None)
    e2e = (compare_upstream_e2e(model, processor, budgets, cfg, args, memory)
           if "upstream-e2e" in args.compare else None)

    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({torch.get_num_threads()} threads)")
    result = {
        "source": source, "device": str(device), "device_name": device_name, "dtype": str(dtype).removeprefix("torch."),
        "tower_dtype": str(model.get_vision_tower().dtype).removeprefix("torch."),
        "pruning_method": repr(model.get_pruning_method()),
        "model": asdict(cfg),
        "settings": {k: getattr(args, k)
                     for k in ("warmup", "repeats", "new_tokens", "text_tokens", "seed", "threads", "batch_size")},
        "memory": memory.kind, "rows": [asdict(r) for r in rows], "compare_upstream": compare,
        "compare_upstream_e2e": None if e2e is None else {
            "upstream": [asdict(r) for r in e2e[0]], "ours": [asdict(r) for r in e2e[1]],
            "ours_over_upstream": [ours_over_upstream(*pair) for pair in zip(*e2e)]},
    }
    print(f"**{source}** on {device_name}, LLM {result['dtype']}, tower {result['tower_dtype']}, "
          f"{result['pruning_method']}: {n} patches per crop x {crops} crop(s), "
          f"{args.text_tokens} text tokens, {args.new_tokens} new tokens; medians of {args.repeats} runs after "
          f"{args.warmup} warm-up. Peak memory: {memory.kind}.\n")
    print(to_markdown(rows, compare, e2e))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    cli(main)
