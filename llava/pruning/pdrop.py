"""PyramidDrop (Xing et al., *PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction*, CVPR 2025, arXiv 2410.17247): the LLM runs in stages; at the start of each stage the image
tokens are ranked by the last instruction token's attention and only a shrinking share of them goes on.
Details and the released code's choices: ``docs/methods.md``.

Its decoder loop is its own (several pruning layers, positions renumbered after each drop, as the released code);
``llava.pruning.llm`` hands prefill and decode to :meth:`PyramidDrop.prefill` and :meth:`StageCache.decode`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

from llava.compat import OUTPUT_CACHE_FIELD
from llava.pruning.base import ImageTokens, InLLMPruningMethod, select_topk_raster
from llava.pruning.llm import PrefillResult, _causal_mask, _layers, _padding, start_prefill
from llava.pruning.registry import register


def parse_layers(text: str) -> tuple[int, ...]:
    layers = tuple(int(x) for x in text.split(",") if x.strip())
    if not layers or any(b <= a for a, b in zip(layers, layers[1:])) or layers[0] < 1:
        raise ValueError(f"--pdrop-layers must be increasing layers >= 1, comma-separated, got {text!r}")
    return layers


def schedule_average(ratio: float, layers: tuple[int, ...], num_layers: int) -> float:
    """Average share of the image tokens a layer sees when stage s keeps ``ratio ** s`` of them."""
    bounds = (0, *layers, num_layers)
    return sum((bounds[s + 1] - bounds[s]) * ratio ** s for s in range(len(bounds) - 1)) / num_layers


def ratio_for_average(share: float, layers: tuple[int, ...], num_layers: int) -> float:
    """The λ whose schedule averages ``share`` of the image tokens over the layers (bisection; increasing in λ)."""
    floor = layers[0] / num_layers  # λ = 0: only the first stage sees image tokens
    if not floor < share <= 1:
        raise ValueError(f"PyramidDrop with stages at layers {list(layers)} of {num_layers} keeps on average more than "
                         f"{floor:.1%} of the image tokens; a budget of {share:.1%} is out of reach "
                         "(pass --pdrop-lambda)")
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if schedule_average(mid, layers, num_layers) < share else (lo, mid)
    return hi


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def last_token_attention(layer, hidden: torch.Tensor, cos, sin, padding: torch.Tensor) -> torch.Tensor:
    """(B, L) head-mean attention of the last token over every token, as decoder ``layer`` would compute it on its
    input ``hidden`` (B, L, D): input norm, q/k projections, RoPE at the current positions, softmax in fp32."""
    attn = layer.self_attn
    B, L, _ = hidden.shape
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x[:, -1:]).view(B, 1, -1, attn.head_dim).transpose(1, 2)  # (B, H, 1, d)
    k = attn.k_proj(x).view(B, L, -1, attn.head_dim).transpose(1, 2)  # (B, KVH, L, d)
    q, k = _rope(q, cos[:, -1:], sin[:, -1:]), repeat_kv(_rope(k, cos, sin), attn.num_key_value_groups)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(attn.head_dim)  # (B, H, 1, L); the last row sees every key
    logits = logits.masked_fill(~padding[:, None, None, :], torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)
    return probs.mean(dim=1)[:, 0]  # (B, L)


@dataclass
class StageCache:
    """What a PyramidDrop prefill leaves for decoding: per stage, its first layer and the prefill positions kept."""

    bounds: tuple[int, ...]  # (0, layers..., num_layers)
    kept: list[torch.Tensor]  # per stage, (B, L_s) ascending prefill positions its layers hold
    prefill_length: int

    def decode(self, model, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache,
               **kwargs) -> BaseModelOutputWithPast:
        """A decode step: stage s's layers hold its kept prefill tokens, then every decoded token; positions are
        renumbered as the released code does (the original position minus the image tokens dropped so far)."""
        B, q, _ = inputs_embeds.shape
        past = past_key_values.get_seq_length() - self.kept[0].shape[1] + self.prefill_length  # decoded so far + L
        if position_ids is None:
            position_ids = (torch.arange(q, device=inputs_embeds.device) + past)[None]
        position_ids = position_ids.expand(B, -1)
        padding = _padding(attention_mask, B, past + q, inputs_embeds.device)
        hidden = inputs_embeds
        for s, kept in enumerate(self.kept):
            held = torch.cat([padding.gather(1, kept), padding[:, self.prefill_length:]], dim=1)
            pos = position_ids - (self.prefill_length - kept.shape[1])
            mask = _causal_mask(model.config, hidden, held, past_key_values, pos, layer_idx=self.bounds[s])
            hidden = _layers(model, self.bounds[s], self.bounds[s + 1], hidden, mask, model.rotary_emb(hidden, pos),
                             past_key_values, use_cache, kwargs)
        return BaseModelOutputWithPast(last_hidden_state=model.norm(hidden), **{OUTPUT_CACHE_FIELD: past_key_values})


@register
@dataclass
class PyramidDrop(InLLMPruningMethod):
    """Stage s (s = 1, 2, …, starting before layer ``layers[s−1]``) keeps int(n × λ^s) of each sample's n image
    tokens (all its crops and newlines, one span), ranked by the last instruction token's head-mean attention in the
    stage's first layer; positions are renumbered after each drop. ``--visual-token-num T`` is the target average of
    image tokens per layer (per crop): λ is solved from it unless ``--pdrop-lambda`` fixes it."""

    name = "pdrop"

    layers: str = field(default="8,16,24", metadata={
        "flag": "--pdrop-layers", "help": "PyramidDrop: layers that start a stage, comma-separated (default 8,16,24)"})
    ratio: float = field(default=-1.0, metadata={
        "flag": "--pdrop-lambda",
        "help": "PyramidDrop: share λ each stage keeps of the previous one (the authors' 0.5 = 0.5/0.25/0.125); "
                "-1 (default) solves it from --visual-token-num as the average image tokens per layer"})

    def __post_init__(self):
        self.stage_layers = parse_layers(self.layers)
        if not (self.ratio == -1.0 or 0.0 <= self.ratio <= 1.0):
            raise ValueError(f"--pdrop-lambda must be in [0, 1] (or -1), got {self.ratio}")

    @property
    def llm_layer(self) -> int:
        return self.stage_layers[0]

    def budget_note(self, budget: int | str) -> str:
        share = f"λ = {self.ratio} of the previous stage's" if self.ratio != -1.0 else f"on average {budget} per layer of"
        return f"the stages from decoder layers {self.layers} keep {share} image tokens per crop"

    def schedule_ratio(self, budget: int, patches: int, num_layers: int) -> float:
        if self.ratio != -1.0:
            return self.ratio
        return ratio_for_average(budget / patches, self.stage_layers, num_layers)

    def prefill(self, model, images: list[ImageTokens], budget: int, inputs_embeds, attention_mask, position_ids,
                past_key_values, use_cache, **kwargs) -> PrefillResult:
        config = model.config
        if self.stage_layers[-1] >= config.num_hidden_layers:
            raise ValueError(f"pdrop starts a stage at LLM layer {self.stage_layers[-1]}, "
                             f"but the LLM has {config.num_hidden_layers} layers (--pdrop-layers)")
        ratio = self.schedule_ratio(budget, images[0].patches, config.num_hidden_layers)
        B, L, _ = inputs_embeds.shape
        device = inputs_embeds.device
        past_key_values, pos, padding = start_prefill(config, inputs_embeds, attention_mask, position_ids,
                                                      past_key_values, use_cache)
        alive = torch.arange(L, device=device).expand(B, -1)  # (B, L_s) prefill positions still in the sequence
        visual = torch.zeros((B, L), dtype=torch.bool, device=device)
        for image in images:
            visual[image.row, image.positions] = True
        bounds = (0, *self.stage_layers, config.num_hidden_layers)
        hidden, kept = inputs_embeds, [alive]
        for s in range(len(bounds) - 1):
            if s > 0:  # stage s starts: rank by the attention layer bounds[s] would pay, keep int(n × λ^s)
                cos, sin = model.rotary_emb(hidden, pos)
                with torch.no_grad():
                    scores = last_token_attention(model.layers[bounds[s]], hidden, cos, sin, padding)  # (B, L_s)
                keep = ~visual.gather(1, alive)
                for image in images:
                    at = torch.isin(alive[image.row], image.positions).nonzero().squeeze(1)  # its current tokens
                    count = int(image.positions.numel() * ratio ** s)  # of the original count, as released
                    keep[image.row, at[select_topk_raster(scores[image.row, at][None], count)[0]]] = True
                counts = keep.sum(dim=1)
                if not (counts == counts[0]).all():
                    raise ValueError("pdrop keeps different token counts in the rows of this batch (use batch size 1)")
                rows = keep.nonzero()[:, 1].view(B, -1)  # (B, L') survivors' indices in the current sequence
                hidden = hidden.gather(1, rows[..., None].expand(-1, -1, hidden.shape[-1]))
                alive, padding = alive.gather(1, rows), padding.gather(1, rows)
                pos = pos[:, :1] + torch.arange(alive.shape[1], device=device)  # renumbered, as released
                kept.append(alive)
            mask = _causal_mask(config, hidden, padding, past_key_values, pos, layer_idx=bounds[s])
            hidden = _layers(model, bounds[s], bounds[s + 1], hidden, mask, model.rotary_emb(hidden, pos),
                             past_key_values, use_cache, kwargs)
        final = torch.zeros((B, L), dtype=torch.bool, device=device).scatter_(1, alive, True)
        pruned = None if past_key_values is None else StageCache(bounds, kept, L)
        outputs = BaseModelOutputWithPast(last_hidden_state=model.norm(hidden), **{OUTPUT_CACHE_FIELD: past_key_values})
        return PrefillResult(outputs, final, alive, pruned)
