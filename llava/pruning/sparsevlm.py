"""SparseVLM v1 (Zhang et al., *SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
Inference*, ICML 2025, arXiv 2410.04417): text raters chosen once at the LLM's input; at layers 2, 6 and 15 the image
tokens the raters attend to least are dropped, and the most relevant of the dropped ones are clustered and merged
back (recycling). Details and the released code's choices: ``docs/methods.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import repeat_kv

from llava.compat import OUTPUT_CACHE_FIELD
from llava.pruning.base import ImageTokens, InLLMPruningMethod, group_sum, select_topk_raster
from llava.pruning.llm import PrefillResult, _causal_mask, _layers, _padding, start_prefill
from llava.pruning.pdrop import _rope
from llava.pruning.registry import register

# The released v1 schedule (score.py): image tokens kept after layers 2, 6, 15 for each budget it defines.
KEEPS = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}


def select_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(T,) bool: the text tokens whose mean over the image tokens of softmax(v · tᵀ) (over the text) exceeds the
    mean. ``visual``: (V, D), ``text``: (T, D) embeddings entering the LLM."""
    relevance = (visual @ text.T).softmax(dim=-1).mean(dim=0)  # (T,)
    return relevance > relevance.mean()


def dpc_knn_merge(x: torch.Tensor, clusters: int) -> torch.Tensor:
    """(n, C) tokens → (clusters, C): density-peak clustering with k = ``clusters`` neighbours, each cluster averaged.

    Distance ‖xᵢ − xⱼ‖ / √C; density exp(−mean of the squared distances to the k nearest, self included); a token's
    parent distance is the smallest distance to a denser token (the largest distance overall for the densest);
    centres are the top ``clusters`` by distance × density; every token joins its nearest centre (ties → the
    earlier centre), each centre its own cluster. The released code adds uniform noise × 1e-6 to the densities to
    break ties; this one does not (equal densities are then nobody's parent).
    """
    n, C = x.shape
    # Direct differences as released (x1 − x2).norm, without materialising them; not the matmul form.
    dist = torch.cdist(x.float()[None], x.float()[None], compute_mode="donot_use_mm_for_euclid_dist")[0] / C ** 0.5
    density = (-(dist.topk(clusters, dim=-1, largest=False).values ** 2).mean(dim=-1)).exp()  # (n,)
    denser = density[None, :] > density[:, None]  # (n, n): j denser than i
    parent = torch.where(denser, dist, dist.max()).min(dim=-1).values  # (n,)
    centres = (parent * density).topk(clusters).indices  # (clusters,)
    assign = dist[centres].argmin(dim=0)  # (n,)
    assign[centres] = torch.arange(clusters, device=x.device)
    sums = group_sum(x.float(), assign, clusters)  # (clusters, C)
    return (sums / torch.bincount(assign, minlength=clusters)[:, None]).to(x.dtype)


def rater_attention(layer, hidden, cos, sin, padding, raters) -> torch.Tensor:
    """(B, L): the attention decoder ``layer`` pays from each row's rater tokens to every token, head mean then
    rater mean (causal, softmax in fp32), recomputed from its input ``hidden`` (B, L, D)."""
    attn = layer.self_attn
    B, L, _ = hidden.shape
    x = layer.input_layernorm(hidden)
    q = _rope(attn.q_proj(x).view(B, L, -1, attn.head_dim).transpose(1, 2), cos, sin)  # (B, H, L, d)
    k = repeat_kv(_rope(attn.k_proj(x).view(B, L, -1, attn.head_dim).transpose(1, 2), cos, sin),
                  attn.num_key_value_groups)
    out = []
    for b in range(B):
        rows = raters[b].nonzero().squeeze(1)  # (R,)
        logits = q[b, :, rows] @ k[b].transpose(-1, -2) * attn.scaling  # (H, R, L)
        visible = (torch.arange(L, device=hidden.device)[None] <= rows[:, None]) & padding[b][None]  # (R, L)
        logits = logits.masked_fill(~visible, torch.finfo(logits.dtype).min)
        out.append(torch.softmax(logits, dim=-1, dtype=torch.float32).mean(dim=0).mean(dim=0))
    return torch.stack(out)


@dataclass
class SparseCache:
    """A SparseVLM prefill's cache: per stage, its first layer and the padding of the tokens its layers hold."""

    bounds: tuple[int, ...]
    held: list[torch.Tensor]  # per stage (B, L_s) bool
    prefill_length: int

    def decode(self, model, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache,
               **kwargs) -> BaseModelOutputWithPast:
        """A decode step. As released, new tokens take their full-length positions in every layer (the cache of
        layer 0 counts every prefill token), while the kept prefill tokens of later stages were renumbered."""
        B, q, _ = inputs_embeds.shape
        past = past_key_values.get_seq_length()
        if position_ids is None:
            position_ids = (torch.arange(q, device=inputs_embeds.device) + past)[None]
        position_ids = position_ids.expand(B, -1)
        padding = _padding(attention_mask, B, past + q, inputs_embeds.device)
        hidden, position_embeddings = inputs_embeds, model.rotary_emb(inputs_embeds, position_ids)
        for s, held in enumerate(self.held):
            held = torch.cat([held, padding[:, self.prefill_length:]], dim=1)
            mask = _causal_mask(model.config, hidden, held, past_key_values, position_ids, layer_idx=self.bounds[s])
            hidden = _layers(model, self.bounds[s], self.bounds[s + 1], hidden, mask, position_embeddings,
                             past_key_values, use_cache, kwargs)
        return BaseModelOutputWithPast(last_hidden_state=model.norm(hidden), **{OUTPUT_CACHE_FIELD: past_key_values})


@register
@dataclass
class SparseVLM(InLLMPruningMethod):
    """After each of layers 2, 6, 15 keep the image tokens the text raters attend to most (v1's schedule for
    T ∈ {192, 128, 96, 64}), and merge the top 30 % of the dropped ones into int(n/10) + 1 recycled tokens that
    stay with the image; positions renumbered. One image per sample (its crops, newlines included, as one span)."""

    name = "sparsevlm"

    layers: str = field(default="2,6,15", metadata={
        "flag": "--sparsevlm-layers", "help": "SparseVLM: layers after which tokens are dropped (default 2,6,15)"})
    keeps: str = field(default="", metadata={
        "flag": "--sparsevlm-keeps",
        "help": "SparseVLM: image tokens kept at each layer, comma-separated; default: the authors' schedule for "
                "--visual-token-num 192/128/96/64 (other budgets need this flag)"})

    def __post_init__(self):
        self.stage_layers = tuple(int(x) for x in self.layers.split(",") if x.strip())
        if not self.stage_layers or any(b <= a for a, b in zip(self.stage_layers, self.stage_layers[1:])) \
                or self.stage_layers[0] < 0:
            raise ValueError(f"--sparsevlm-layers must be increasing layers >= 0, comma-separated, got {self.layers!r}")
        self.stage_keeps = tuple(int(x) for x in self.keeps.split(",")) if self.keeps else None
        if self.stage_keeps is not None and len(self.stage_keeps) != len(self.stage_layers):
            raise ValueError(f"--sparsevlm-keeps needs one count per layer of --sparsevlm-layers {self.layers}")

    @property
    def llm_layer(self) -> int:
        return self.stage_layers[0] + 1

    def budget_note(self, budget: int | str) -> str:
        keeps = self.keeps or (f"the authors' schedule for {budget}" if isinstance(budget, str)
                               else ",".join(map(str, self.schedule(budget))))
        return f"after decoder layers {self.layers}, {keeps} image tokens per crop remain (recycled ones besides)"

    def schedule(self, budget: int) -> tuple[int, ...]:
        """Image tokens kept after each pruning layer (recycled ones not counted), for one crop."""
        if self.stage_keeps is not None:
            return self.stage_keeps
        if budget not in KEEPS:
            raise ValueError(f"SparseVLM defines budgets {sorted(KEEPS)} only; for {budget} pass --sparsevlm-keeps")
        return KEEPS[budget]

    @staticmethod
    def shrink(hidden, origin, raters, padding, scores, span: tuple[int, int], keep: int):
        """One row after a pruning layer: the image span [v0, v1) keeps its ``min(keep, n − 1)`` best-scored tokens
        (in order), then the recycled tokens; everything outside the span stays. Returns the new row tensors."""
        v0, v1 = span
        image = scores[v0:v1]  # (n,): rater attention of the span's tokens
        kept = torch.zeros(v1 - v0, dtype=torch.bool, device=hidden.device)
        kept[select_topk_raster(image[None], min(keep, v1 - v0 - 1))[0]] = True
        pruned = (~kept).nonzero().squeeze(1)  # in sequence order
        recycle = pruned[image[pruned].topk(int(pruned.numel() * 0.3) + 1).indices]  # top 30 %, by score
        merged = dpc_knn_merge(hidden[v0:v1][recycle], int(recycle.numel() / 10) + 1)  # (clusters, D)
        m = merged.shape[0]
        cat = lambda t, new: torch.cat([t[:v0], t[v0:v1][kept], new, t[v1:]])
        return (cat(hidden, merged), cat(origin, origin.new_full((m,), -1)), cat(raters, raters.new_zeros(m)),
                cat(padding, padding.new_ones(m)), (v0, v0 + int(kept.sum()) + m))

    def prefill(self, model, images: list[ImageTokens], budget: int, inputs_embeds, attention_mask, position_ids,
                past_key_values, use_cache, **kwargs) -> PrefillResult:
        config = model.config
        if self.stage_layers[-1] >= config.num_hidden_layers:
            raise ValueError(f"sparsevlm prunes after LLM layer {self.stage_layers[-1]}, "
                             f"but the LLM has {config.num_hidden_layers} layers (--sparsevlm-layers)")
        B, L, _ = inputs_embeds.shape
        images = sorted(images, key=lambda image: image.row)
        if [image.row for image in images] != list(range(B)):
            raise NotImplementedError("sparsevlm supports one image per sample")
        keeps = [k * images[0].crops for k in self.schedule(budget)]  # per crop, as every budget here
        device = inputs_embeds.device
        past_key_values, pos, padding = start_prefill(config, inputs_embeds, attention_mask, position_ids,
                                                      past_key_values, use_cache)
        spans = [(int(im.positions[0]), int(im.positions[-1]) + 1) for im in images]  # the image span of each row
        origin = torch.arange(L, device=device).expand(B, -1)  # prefill position of each token; -1: recycled
        raters = torch.zeros(B, L, dtype=torch.bool, device=device)
        for b, (v0, v1) in enumerate(spans):  # chosen once, on the embeddings entering the LLM
            raters[b, v1:] = select_raters(inputs_embeds[b, v0:v1], inputs_embeds[b, v1:])
        bounds = (0, *(layer + 1 for layer in self.stage_layers), config.num_hidden_layers)
        hidden, held = inputs_embeds, []
        for s, layer in enumerate(self.stage_layers):
            mask = _causal_mask(config, hidden, padding, past_key_values, pos, layer_idx=bounds[s])
            cos, sin = model.rotary_emb(hidden, pos)
            hidden = _layers(model, bounds[s], layer, hidden, mask, (cos, sin), past_key_values, use_cache, kwargs)
            with torch.no_grad():
                scores = rater_attention(model.layers[layer], hidden, cos, sin, padding, raters)  # (B, L_s)
            hidden = _layers(model, layer, layer + 1, hidden, mask, (cos, sin), past_key_values, use_cache, kwargs)
            held.append(padding)
            with torch.no_grad():
                rows = [self.shrink(hidden[b], origin[b], raters[b], padding[b], scores[b], spans[b], keeps[s])
                        for b in range(B)]
            if len({row[0].shape[0] for row in rows}) > 1:
                raise ValueError("sparsevlm keeps different token counts in the rows of this batch (use batch size 1)")
            hidden, origin, raters, padding = (torch.stack(t) for t in list(zip(*rows))[:4])
            spans = [row[4] for row in rows]
            pos = pos[:, :1] + torch.arange(hidden.shape[1], device=device)  # renumbered, as released v1
        mask = _causal_mask(config, hidden, padding, past_key_values, pos, layer_idx=bounds[-2])
        hidden = _layers(model, bounds[-2], None, hidden, mask, model.rotary_emb(hidden, pos), past_key_values,
                         use_cache, kwargs)
        held.append(padding)
        keep = torch.zeros((B, L), dtype=torch.bool, device=device)
        for b in range(B):
            keep[b, origin[b][origin[b] >= 0]] = True
        pruned = None if past_key_values is None else SparseCache(bounds, held, L)
        outputs = BaseModelOutputWithPast(last_hidden_state=model.norm(hidden), **{OUTPUT_CACHE_FIELD: past_key_values})
        # kept_positions serves labels only: a recycled token has none (-1 → 0); labels are not supported here.
        return PrefillResult(outputs, keep, origin.clamp(min=0), pruned)
