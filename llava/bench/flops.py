"""Theoretical prefill FLOPs and visual KV-cache size for FasterVLM and FastV.

Reproduces the ``FLOPs (T)`` and ``KV Storage (MB)`` columns of the FasterVLM paper's
efficiency tables (arXiv 2412.01818, tables 6 and 11-13); see ``FLOPS.md`` beside this file
for which terms the paper counted and how that was established.

Conventions (all verified against the paper's tables):

* One FLOP = one multiply or one add, so a ``(n, a) @ (a, b)`` matmul costs ``2nab``.
* LLM prefill, per decoder layer with ``n`` tokens, hidden size ``d`` and FFN size ``m``:
  ``8nd^2 + 4n^2d + 6ndm`` (Q/K/V/O projections, QK^T and AV, the three SwiGLU matrices).
  The paper counts **visual tokens only** (``n_text = 0``); text tokens can be added.
* The vision encoder (one ViT pass per crop / frame, CLS token included) is counted in
  tables 11-13 and not in table 6; the projector, embeddings, norms and LM head are not counted.
* KV storage = ``2 (K and V) x layers x d x n_visual x 2 bytes (fp16)``, with MB = 2**20 bytes.
* FastV (in-LLM pruning at layer K): layers ``0..K-1`` see every visual token, layers
  ``K..L-1`` only the kept ones, for both compute and KV cache. The other in-LLM methods of
  ``llava.pruning`` (``cls-llm-layer2``, ``adaptprune``) cost the same at their own layer
  (``--in-llm NAME:K``; AdaptPrune's soft-NMS over one image is not counted).

Run ``python -m llava.bench.flops --help``. Pure Python; no torch needed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

MIB = 2**20  # the paper's "MB": 576 tokens x 0.5 MiB/token = 288.00 exactly
TERA = 1e12
PAPER_REDUCTIONS: tuple[float, ...] = (25.0, 50.0, 75.0, 90.0, 95.0)


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class LLMConfig:
    """Shape of a LLaMA-style decoder (SwiGLU FFN, rotary attention)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None  # None = multi-head attention (all LLaVA models)

    @property
    def kv_dim(self) -> int:
        """Width of one layer's K (or V) per token; smaller than ``hidden_size`` under GQA."""
        kv_heads = self.num_kv_heads or self.num_heads
        return self.hidden_size * kv_heads // self.num_heads


@dataclass(frozen=True)
class VisionConfig:
    """Shape of a ViT vision tower (CLIP-style: GELU MLP with two matrices)."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    image_size: int
    patch_size: int
    cls_token: bool = True

    @property
    def num_patches(self) -> int:
        """Patch tokens per crop, i.e. the visual tokens one crop hands to the LLM."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def seq_len(self) -> int:
        """Tokens the ViT itself processes (patches plus CLS)."""
        return self.num_patches + int(self.cls_token)


@dataclass(frozen=True)
class ModelConfig:
    """A LLaVA-family model: LLM, vision tower, and crops (or frames) per sample."""

    name: str
    llm: LLMConfig
    vision: VisionConfig
    num_crops: int = 1  # LLaVA-NeXT at the paper's fixed 672x672 grid: 5; Video-LLaVA: 8 frames

    @property
    def visual_tokens(self) -> int:
        """Unpruned visual tokens entering the LLM."""
        return self.num_crops * self.vision.num_patches


VICUNA_7B = LLMConfig(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32)
VICUNA_13B = LLMConfig(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40)
CLIP_L14_336 = VisionConfig("openai/clip-vit-large-patch14-336", 24, 1024, 4096, 336, 14)
CLIP_L14_224 = VisionConfig("openai/clip-vit-large-patch14", 24, 1024, 4096, 224, 14)
# LanguageBind's video tower is ViT-L/14 at 224 per frame; its extra temporal-attention
# blocks are not counted (no paper table covers video efficiency).
LANGUAGEBIND_VIDEO = replace(CLIP_L14_224, name="LanguageBind/LanguageBind_Video_merge")

PRESETS: dict[str, ModelConfig] = {
    "llava-v1.5-7b": ModelConfig("llava-v1.5-7b", VICUNA_7B, CLIP_L14_336, 1),
    "llava-v1.5-13b": ModelConfig("llava-v1.5-13b", VICUNA_13B, CLIP_L14_336, 1),
    # anyres fixed to 672x672 (FasterVLM#8): base image + 2x2 grid = 5 crops = 2880 tokens.
    "llava-v1.6-vicuna-7b": ModelConfig("llava-v1.6-vicuna-7b", VICUNA_7B, CLIP_L14_336, 5),
    "Video-LLaVA-7B": ModelConfig("Video-LLaVA-7B", VICUNA_7B, LANGUAGEBIND_VIDEO, 8),
}

# (pattern on the tower name, layers, hidden, intermediate) for ViT sizes we can recognise.
_VIT_SIZES: tuple[tuple[str, int, int, int], ...] = (
    ("huge", 32, 1280, 5120),
    ("large", 24, 1024, 4096),
    ("base", 12, 768, 3072),
)


def vision_from_name(name: str) -> VisionConfig | None:
    """Guess the ViT shape from a tower name such as ``openai/clip-vit-large-patch14-336``.

    Returns None when the name is not recognisable; callers then need explicit flags.
    """
    low = name.lower()
    if "languagebind" in low:  # LanguageBind_Image / _Video(_merge): ViT-L/14 at 224
        return replace(CLIP_L14_224, name=name)
    m = re.search(r"vit-(huge|large|base)-patch(\d+)(?:-(\d+))?", low)
    if not m:
        return None
    layers, hidden, inter = next(s[1:] for s in _VIT_SIZES if s[0] == m.group(1))
    size = int(m.group(3) or 224)  # CLIP names omit the resolution at 224
    return VisionConfig(name, layers, hidden, inter, size, int(m.group(2)))


def load_config_json(path: str | Path, vision: VisionConfig | None = None,
                     num_crops: int | None = None) -> ModelConfig:
    """Build a :class:`ModelConfig` from a LLaVA ``config.json``.

    ``vision`` overrides the tower guessed from ``mm_video_tower``/``mm_vision_tower``;
    ``num_crops`` overrides the crop count (5 for ``anyres``, 8 frames for a video tower).
    """
    raw = json.loads(Path(path).read_text())
    if "text_config" in raw:  # [FasterVLM] a transformers-format (llava-hf) config, read as the original layout
        from llava.model import hf_format  # only such configs need torch and transformers

        raw = hf_format.original_config(Path(path).parent, raw, image_processor=False)
    llm = LLMConfig(
        hidden_size=int(raw["hidden_size"]),
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=int(raw["num_attention_heads"]),
        num_kv_heads=raw.get("num_key_value_heads"),
    )
    tower = raw.get("mm_video_tower") or raw.get("mm_vision_tower") or raw.get("mm_image_tower")
    shape = raw.get("mm_vision_config")  # a transformers-format checkpoint gives the tower's shape, not its hub id
    if vision is None and shape:
        vision = VisionConfig(shape.get("_name_or_path") or "vision_config", shape["num_hidden_layers"],
                              shape["hidden_size"], shape["intermediate_size"], shape["image_size"], shape["patch_size"])
    vis = vision or (vision_from_name(tower) if tower else None)
    if vis is None:
        raise ValueError(f"unrecognised vision tower {tower!r}: pass --vision-layers, "
                         "--vision-hidden, --vision-intermediate, --vision-image-size, "
                         "--vision-patch-size")
    if num_crops is None:
        if raw.get("mm_video_tower"):
            num_crops = int(raw.get("num_frames", 8))
        elif str(raw.get("image_aspect_ratio", "")).startswith("anyres"):
            num_crops = 5  # the paper's fixed 672x672 grid; other grids need --crops
        else:
            num_crops = 1
    name = raw.get("_name_or_path") or Path(path).parent.name or str(path)
    return ModelConfig(str(name), llm, vis, num_crops)


# --------------------------------------------------------------------------- formulas


def _llm(cfg: LLMConfig | ModelConfig) -> LLMConfig:
    return cfg.llm if isinstance(cfg, ModelConfig) else cfg


def layer_flops(cfg: LLMConfig | ModelConfig, n_tokens: int) -> float:
    """Prefill FLOPs of one decoder layer over ``n_tokens``: ``8nd^2 + 4n^2d + 6ndm`` (MHA).

    Under GQA the K/V projections shrink to ``d x kv_dim``; for MHA this is the paper's formula.
    """
    c = _llm(cfg)
    n, d, m = n_tokens, c.hidden_size, c.intermediate_size
    proj = 4 * n * d * d + 4 * n * d * c.kv_dim  # Q,O: 2nd^2 each; K,V: 2nd*kv_dim each
    attn = 4 * n * n * d  # QK^T and softmax(.)V, 2n^2d each (no causal halving, as the paper)
    ffn = 6 * n * d * m  # SwiGLU gate, up and down projections
    return float(proj + attn + ffn)


def llm_prefill_flops(cfg: LLMConfig | ModelConfig, n_tokens: int) -> float:
    """Prefill FLOPs of the whole LLM when every layer sees ``n_tokens``."""
    return _llm(cfg).num_layers * layer_flops(cfg, n_tokens)


def vision_encoder_flops(vision: VisionConfig | ModelConfig, num_crops: int | None = None) -> float:
    """FLOPs of the ViT over all crops: per layer ``8nd^2 + 4n^2d + 4ndm`` with ``n`` incl. CLS.

    All layers are counted even though LLaVA reads the penultimate one: the tables need the
    full 24 layers (23 layers would undershoot table 13 by ~2 %). Patch embedding is left out
    (~0.7 GFLOPs per crop, below the tables' precision).
    """
    if isinstance(vision, ModelConfig):
        num_crops = vision.num_crops if num_crops is None else num_crops
        vision = vision.vision
    n, d, m = vision.seq_len, vision.hidden_size, vision.intermediate_size
    per_layer = 8 * n * d * d + 4 * n * n * d + 4 * n * d * m  # GELU MLP: two matrices
    return float(vision.num_layers * per_layer * (1 if num_crops is None else num_crops))


def fastv_prefill_flops(cfg: LLMConfig | ModelConfig, n_text: int, n_visual: int,
                        kept: int, k: int) -> float:
    """FastV prefill FLOPs: ``k`` layers over all tokens, the remaining layers over the kept ones.

    Text tokens are never pruned, so they appear on both sides.
    """
    c = _llm(cfg)
    if not 0 <= k <= c.num_layers:
        raise ValueError(f"FastV K must be in [0, {c.num_layers}], got {k}")
    full = layer_flops(c, n_text + n_visual)
    pruned = layer_flops(c, n_text + kept)
    return k * full + (c.num_layers - k) * pruned


def kv_cache_mb(cfg: LLMConfig | ModelConfig, n_visual: float, bytes_per_elem: int = 2) -> float:
    """KV cache of ``n_visual`` tokens in MiB: ``2 x layers x kv_dim x n x bytes / 2**20``."""
    c = _llm(cfg)
    return 2 * c.num_layers * c.kv_dim * n_visual * bytes_per_elem / MIB


def fastv_kv_cache_mb(cfg: LLMConfig | ModelConfig, n_visual: int, kept: int, k: int,
                      bytes_per_elem: int = 2) -> float:
    """FastV's visual KV cache: layers below ``k`` cache all tokens, the rest only ``kept``."""
    c = _llm(cfg)
    mean_tokens = (k * n_visual + (c.num_layers - k) * kept) / c.num_layers
    return kv_cache_mb(c, mean_tokens, bytes_per_elem)


def kept_from_reduction(model: ModelConfig, reduction_pct: float) -> int:
    """Kept visual tokens for a reduction ratio, rounded per crop/frame as the paper does.

    E.g. 90 % of 576 keeps round(57.6) = 58; LLaVA-NeXT keeps 5 x 58 = 290; Video-LLaVA
    keeps 8 x round(25.6) = 208. Half-up rounding, not Python's banker's rounding.
    """
    per_crop = math.floor(model.vision.num_patches * (1 - reduction_pct / 100) + 0.5)
    return model.num_crops * per_crop


# --------------------------------------------------------------------------- comparison methods (docs/methods.md)

# Before the LLM (or at its input): every layer sees the kept tokens, costed as FasterVLM. Their selection
# arithmetic (VisPruner's similarity rounds, VisionZip's merging, DivPrune's greedy max-min) is below the
# tables' precision and not counted; VisionZip's and VisPruner's towers run whole, as FasterVLM's.
BEFORE_LLM_METHODS = ("vispruner", "visionzip", "divprune")
# PyramidDrop's default: stages end before layers 8, 16, 24 of a 32-layer LLM, each keeping λ of the previous.
PDROP_LAYERS, PDROP_RATIO = (8, 16, 24), 0.5


def pdrop_schedule(n_visual: int, num_layers: int, layers: Sequence[int] = PDROP_LAYERS,
                   ratio: float = PDROP_RATIO) -> list[int]:
    """Visual tokens each layer sees under PyramidDrop: ``n_visual`` before ``layers[0]``, then ``int(n × λ^s)``
    (the released code's truncation) in stage ``s``."""
    counts, stage = [], 0
    for layer in range(num_layers):
        while stage < len(layers) and layer >= layers[stage]:
            stage += 1
        counts.append(int(n_visual * ratio ** stage))
    return counts


def pdrop_ratio_for_average(target: float, n_visual: int, num_layers: int,
                            layers: Sequence[int] = PDROP_LAYERS) -> float:
    """The λ whose PyramidDrop schedule averages ``target`` visual tokens per layer (bisection; the average grows
    with λ). E.g. 576 tokens, 32 layers: λ = 0.5 averages 270 (576/288/144/72 over four 8-layer stages)."""
    floor = n_visual * layers[0] / num_layers  # λ = 0: only the first stage sees tokens
    if not floor < target <= n_visual:
        raise ValueError(f"PyramidDrop with stages at layers {list(layers)} averages more than {floor:g} visual tokens "
                         f"per layer (its first stage sees all {n_visual}); {target} is out of reach")
    bounds = (0, *layers, num_layers)
    lo, hi = 0.0, 1.0
    for _ in range(50):  # on the untruncated shares, as llava.pruning.pdrop solves it
        mid = (lo + hi) / 2
        avg = n_visual * sum((bounds[s + 1] - bounds[s]) * mid ** s for s in range(len(bounds) - 1)) / num_layers
        lo, hi = (mid, hi) if avg < target else (lo, mid)
    return hi


# SparseVLM v1 (Gumpest/SparseVLMs score.py): image tokens kept after layers 2, 6, 15 per budget it defines.
SPARSEVLM_LAYERS = (2, 6, 15)
SPARSEVLM_KEEPS = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}


def sparsevlm_schedule(n_visual: int, num_layers: int, keeps: Sequence[int],
                       layers: Sequence[int] = SPARSEVLM_LAYERS) -> list[int]:
    """Image tokens each layer sees under SparseVLM v1: after layer ``layers[s]`` min(keep, n − 1) stay, plus
    int((int(0.3 · dropped) + 1) / 10) + 1 recycled (merged) tokens, which count from then on."""
    counts, n, stage = [], n_visual, 0
    for layer in range(num_layers):
        counts.append(n)
        if stage < len(layers) and layer == layers[stage]:
            kept = min(keeps[stage], n - 1)
            n = kept + int((int((n - kept) * 0.3) + 1) / 10) + 1
            stage += 1
    return counts


def layer_schedule(method: str, model: ModelConfig, kept: int) -> list[int]:
    """Visual tokens per LLM layer that ``method`` leaves at budget ``kept`` (total over crops)."""
    L, n = model.llm.num_layers, model.visual_tokens
    if method in BEFORE_LLM_METHODS or method == "fastervlm":
        return [kept] * L
    if method == "pdrop":  # the target is the average over layers
        return pdrop_schedule(n, L, ratio=pdrop_ratio_for_average(kept, n, L))
    if method == "sparsevlm":  # the nominal budget per crop names the schedule
        per_crop = kept // model.num_crops
        if per_crop * model.num_crops != kept or per_crop not in SPARSEVLM_KEEPS:
            raise ValueError(f"SparseVLM defines {sorted(SPARSEVLM_KEEPS)} tokens per crop only, not {kept}")
        return sparsevlm_schedule(n, L, [k * model.num_crops for k in SPARSEVLM_KEEPS[per_crop]])
    raise ValueError(f"no FLOPs schedule for {method!r} (known: fastervlm, {', '.join(BEFORE_LLM_METHODS)}, "
                     "pdrop, sparsevlm)")


def schedule_prefill_flops(cfg: LLMConfig | ModelConfig, n_text: int, schedule: Sequence[int]) -> float:
    """Prefill FLOPs when layer ``i`` sees ``n_text + schedule[i]`` tokens (multi-stage pruning)."""
    return sum(layer_flops(cfg, n_text + n) for n in schedule)


def schedule_kv_cache_mb(cfg: LLMConfig | ModelConfig, schedule: Sequence[int], bytes_per_elem: int = 2) -> float:
    """Visual KV cache when layer ``i`` caches ``schedule[i]`` tokens."""
    return kv_cache_mb(cfg, sum(schedule) / len(schedule), bytes_per_elem)


# --------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Row:
    """One line of the efficiency table."""

    method: str
    tokens: int
    reduction_pct: float
    flops_t: float
    kv_storage_mb: float
    speedup: float  # unpruned FLOPs / this row's FLOPs: the compute-bound limit


def efficiency_rows(model: ModelConfig, kept: Sequence[int], *, n_text: int = 0,
                    include_vision: bool = True, fastv_k: int | None = 2,
                    fastv_kept: Sequence[int] | None = None, bytes_per_elem: int = 2,
                    in_llm: Sequence[tuple[str, int]] = (), methods: Sequence[str] = ()) -> list[Row]:
    """Unpruned row, then FasterVLM and (unless ``fastv_k`` is None) FastV rows per budget.

    ``in_llm``: ``(method, K)`` of further in-LLM methods, each a FastV-like row at its layer K
    with FasterVLM's budget. ``methods``: comparison methods (``layer_schedule``) at each budget. ``n_text=0`` and ``include_vision=True`` reproduce tables 11-13;
    table 6 omits the vision encoder.
    """
    n_vis = model.visual_tokens
    vis = vision_encoder_flops(model) if include_vision else 0.0
    base = llm_prefill_flops(model, n_text + n_vis) + vis

    def row(method: str, tokens: int, flops: float, kv: float) -> Row:
        return Row(method, tokens, 100 * (1 - tokens / n_vis), flops / TERA, kv, base / flops)

    rows = [row(model.name, n_vis, base, kv_cache_mb(model, n_vis, bytes_per_elem))]
    fv_kept = list(kept if fastv_kept is None else fastv_kept)
    if fastv_k is not None and len(fv_kept) != len(kept):
        raise ValueError("--fastv-kept needs as many values as the kept budgets")
    for i, t in enumerate(kept):
        if not 0 <= t <= n_vis:
            raise ValueError(f"kept tokens must be in [0, {n_vis}], got {t}")
        if fastv_k is not None:
            ft = fv_kept[i]
            fl = fastv_prefill_flops(model, n_text, n_vis, ft, fastv_k) + vis
            rows.append(row(f"FastV (K={fastv_k})", ft, fl,
                            fastv_kv_cache_mb(model, n_vis, ft, fastv_k, bytes_per_elem)))
        for name, k in in_llm:
            fl = fastv_prefill_flops(model, n_text, n_vis, t, k) + vis
            rows.append(row(f"{name} (K={k})", t, fl, fastv_kv_cache_mb(model, n_vis, t, k, bytes_per_elem)))
        for name in methods:
            schedule = layer_schedule(name, model, t)
            rows.append(row(name, t, schedule_prefill_flops(model, n_text, schedule) + vis,
                            schedule_kv_cache_mb(model, schedule, bytes_per_elem)))
        fl = llm_prefill_flops(model, n_text + t) + vis
        rows.append(row("FasterVLM", t, fl, kv_cache_mb(model, t, bytes_per_elem)))
    return rows


def to_markdown(rows: Sequence[Row]) -> str:
    """Render rows as a GitHub-flavoured markdown table."""
    out = ["| Method | Tokens | Reduction | FLOPs (T) | KV storage (MB) | FLOPs-limit speed-up |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.method} | {r.tokens} | {r.reduction_pct:.1f} % | {r.flops_t:.2f} "
                   f"| {r.kv_storage_mb:.2f} | {r.speedup:.2f}x |")
    return "\n".join(out)


# --------------------------------------------------------------------------- CLI


def _in_llm_method(text: str) -> tuple[str, int]:
    """``NAME:K`` → ``(NAME, K)`` for ``--in-llm``."""
    name, sep, k = text.rpartition(":")
    if not sep or not name or not k.isdigit():
        raise argparse.ArgumentTypeError(f"expected METHOD:K (e.g. adaptprune:2), got {text!r}")
    return name, int(k)


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m llava.bench.flops``."""
    p = argparse.ArgumentParser(
        prog="python -m llava.bench.flops",
        description="Theoretical prefill FLOPs and visual KV-cache size (FasterVLM vs FastV), "
                    "using the FasterVLM paper's counting conventions (see llava/bench/FLOPS.md).")
    p.add_argument("--model", default="llava-v1.5-7b",
                   help=f"preset ({', '.join(PRESETS)}) or path to a LLaVA config.json")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--kept", type=int, nargs="+", metavar="T",
                        help="kept visual tokens (total over crops/frames); one row per value")
    budget.add_argument("--reduction", type=float, nargs="+", metavar="PCT",
                        help="reduction ratios in %% (rounded per crop like the paper); "
                             "default: 25 50 75 90 95")
    p.add_argument("--text-tokens", type=int, default=0,
                   help="text tokens added to every prefill (the paper's tables use 0)")
    p.add_argument("--fastv-k", type=int, default=2,
                   help="FastV pruning layer K (the paper's comparison uses 2)")
    p.add_argument("--fastv-kept", type=int, nargs="+", metavar="T",
                   help="FastV's kept tokens R per budget (default: the same as FasterVLM's)")
    p.add_argument("--no-fastv", action="store_true", help="omit the FastV rows")
    p.add_argument("--in-llm", nargs="+", default=[], metavar="METHOD:K", type=_in_llm_method,
                   help="further in-LLM pruning methods, costed like FastV at their layer K, "
                        "e.g. cls-llm-layer2:2 adaptprune:2")
    p.add_argument("--methods", nargs="+", default=[], metavar="METHOD",
                   help="comparison methods at each budget: vispruner visionzip divprune (as FasterVLM), pdrop "
                        "(the budget is its average over layers), sparsevlm (64/96/128/192 name its schedule); "
                        "docs/methods.md")
    p.add_argument("--vision-encoder", action=argparse.BooleanOptionalAction, default=True,
                   help="count the ViT's FLOPs (tables 11-13 do; table 6 does not)")
    p.add_argument("--crops", type=int,
                   help="override crops (LLaVA-NeXT) or frames (video) per sample")
    p.add_argument("--kv-bytes", type=int, default=2,
                   help="bytes per cached element (2 = fp16, as the paper)")
    g = p.add_argument_group("vision tower shape (when a config.json's tower is not recognised)")
    g.add_argument("--vision-layers", type=int, help="ViT layers")
    g.add_argument("--vision-hidden", type=int, help="ViT hidden size")
    g.add_argument("--vision-intermediate", type=int, help="ViT MLP size")
    g.add_argument("--vision-image-size", type=int, help="ViT input resolution in pixels")
    g.add_argument("--vision-patch-size", type=int, help="ViT patch size in pixels")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return p


def _resolve_model(args: argparse.Namespace) -> ModelConfig:
    flags = (args.vision_layers, args.vision_hidden, args.vision_intermediate,
             args.vision_image_size, args.vision_patch_size)
    vision = None
    if any(f is not None for f in flags):
        if any(f is None for f in flags):
            raise SystemExit("all five --vision-* flags are needed together")
        vision = VisionConfig("custom", *flags)  # type: ignore[arg-type]
    if args.model in PRESETS:
        model = PRESETS[args.model]
        if vision is not None:
            model = replace(model, vision=vision)
    elif Path(args.model).is_file():
        try:
            model = load_config_json(args.model, vision, args.crops)
        except (ValueError, KeyError) as e:
            raise SystemExit(f"{args.model}: {e}") from e
    else:
        raise SystemExit(f"--model {args.model!r} is neither a preset ({', '.join(PRESETS)}) "
                         "nor a config.json file")
    return replace(model, num_crops=args.crops) if args.crops else model


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    model = _resolve_model(args)
    reductions = args.reduction or PAPER_REDUCTIONS
    kept = args.kept or [kept_from_reduction(model, r) for r in reductions]
    try:
        rows = efficiency_rows(model, kept, n_text=args.text_tokens,
                               include_vision=args.vision_encoder,
                               fastv_k=None if args.no_fastv else args.fastv_k,
                               fastv_kept=args.fastv_kept, bytes_per_elem=args.kv_bytes,
                               in_llm=args.in_llm, methods=args.methods)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    if args.json:
        json.dump({"model": asdict(model), "text_tokens": args.text_tokens,
                   "vision_encoder": args.vision_encoder,
                   "fastv_k": None if args.no_fastv else args.fastv_k,
                   "in_llm": dict(args.in_llm), "methods": args.methods,
                   "mb": "MiB (2**20 bytes)", "rows": [asdict(r) for r in rows]},
                  sys.stdout, indent=2)
        print()
    else:
        print(f"**{model.name}**: {model.visual_tokens} visual tokens "
              f"({model.num_crops} x {model.vision.num_patches}), {args.text_tokens} text tokens, "
              f"vision encoder {'counted' if args.vision_encoder else 'not counted'}\n")
        print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
