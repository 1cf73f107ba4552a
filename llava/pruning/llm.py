"""The LLaMA decoder loop behind in-LLM pruning methods (FastV, [CLS] at layer 2, AdaptPrune).

**Prefill.** Layers 0..K−1 see every token. The method then picks which visual tokens survive, from the output
of layer K−1 and, if it asks, the attention layer K−1 paid to each token: that layer runs once, as itself (the
model's attention kernel, SDPA by default), while hooks keep its q/k projections, from which the probabilities of
the needed query rows are recomputed with RoPE. Layers K..L−1 then see the non-visual tokens and the kept visual
ones, at their **original positions** (FastV's convention: RoPE positions keep the gaps), under a fresh causal mask.

**KV cache** (lmms-eval's FastV KV-cache semantics). Layers < K cache every prefill token, layers ≥ K only the
kept ones. Decode steps are not pruned: their positions continue from the full prefill length (the cache of
layer 0), and a new token sees every prompt token in layers < K but only the kept visual tokens in layers ≥ K.

Every layer is the model's own ``LlamaDecoderLayer``; masks come from transformers' ``create_causal_mask`` sized
against the cache of the layer group they serve.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from llava.compat import LAYER_CACHE_KWARG, OUTPUT_CACHE_FIELD, mask_cache_kwarg, output_cache, require_transformers
from llava.pruning.base import ImageTokens, InLLMPruningMethod, LLMPruningContext

# create_causal_mask(layer_idx=...) sizes a mask against one layer's cache: layers ≥ K hold fewer tokens.
IN_LLM_MIN_TRANSFORMERS = "5.14"


def check_supported() -> None:
    """In-LLM pruning needs ``create_causal_mask(layer_idx=...)``, which transformers has from 5.14 on."""
    require_transformers(IN_LLM_MIN_TRANSFORMERS, "in-LLM pruning (fastv, cls-llm-layer2, adaptprune)")


def _causal_mask(config, hidden: torch.Tensor, padding: torch.Tensor, cache, position_ids: torch.Tensor,
                 layer_idx: int | None = None):
    """transformers' mask for ``hidden`` (B, q, D) over ``padding`` (B, kv) real tokens, sized against the cache of
    ``layer_idx`` (layer 0 when None)."""
    from transformers.masking_utils import create_causal_mask

    extra = {} if layer_idx is None else {"layer_idx": layer_idx}
    return create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=padding, position_ids=position_ids,
                              **{mask_cache_kwarg(): cache}, **extra)


@dataclass
class PrunedCache:
    """What a pruned prefill leaves for the decode steps that continue its cache. The prefill stores it on that
    cache (:func:`pruned_cache`), so the cache the caller passes back says itself how its layers were filled."""

    layer: int  # K: layers ≥ K hold only the kept tokens
    kept_positions: torch.Tensor  # (B, L') prefill positions held by layers ≥ K
    prefill_length: int  # L: prefill tokens held by layers < K


_CACHE_ATTR = "llm_pruning"  # the attribute of a KV cache that holds its PrunedCache


def pruned_cache(cache) -> PrunedCache | None:
    """The :class:`PrunedCache` a pruned prefill stored on ``cache``; None for a cache no pruned prefill filled."""
    return getattr(cache, _CACHE_ATTR, None)


@dataclass
class PrefillResult:
    outputs: BaseModelOutputWithPast  # last_hidden_state (B, L', D): the kept positions only
    keep: torch.Tensor  # (B, L) bool: the prefill positions that layers ≥ K kept
    kept_positions: torch.Tensor  # (B, L') the same, as ascending indices
    pruned_cache: PrunedCache | None  # None without a cache


def image_tokens(spans, token_sources, crops_per_image, cls_attn, patches: int, batch: int,
                 prompts: int) -> list[ImageTokens]:
    """Every image of the batch as :class:`ImageTokens`, from the splice's ``PruningInfo`` fields.

    ``spans``: (row, start, end) per image in the padded sequence; ``token_sources``: (L_i,) per image;
    ``cls_attn``: (Σ crops, N) or None. ``generate`` repeats each prompt's row ``batch // prompts`` times for beam
    search (``repeat_interleave``), so an image of prompt row r sits in all of those rows.
    """
    repeats = batch // prompts
    images, crop = [], 0
    for (row, start, end), sources, crops in zip(spans, token_sources, crops_per_image):
        scores = None if cls_attn is None else cls_attn[crop:crop + crops]
        crop += crops
        positions = torch.arange(start, end, device=sources.device)
        for copy in range(repeats):
            images.append(ImageTokens(row * repeats + copy, positions, sources[:end - start], crops, patches, scores))
    return images


def kept_patches(images: list[ImageTokens], keep: torch.Tensor) -> list[torch.Tensor]:
    """Per crop (all images in order), the raster indices of its patches that ``keep`` (B, L) retains."""
    out = []
    for image in images:
        sources = image.sources[keep[image.row, image.positions] & (image.sources >= 0)]
        out += [(sources[(sources >= c * image.patches) & (sources < (c + 1) * image.patches)] - c * image.patches)
                .sort().values for c in range(image.crops)]
    return out


@contextmanager
def _capture_outputs(*modules: nn.Module):
    """Keep the output of each module's next call: ``captured[i]`` is ``modules[i]``'s."""
    captured: list[torch.Tensor | None] = [None] * len(modules)

    def hook(index):
        def store(module, args, output):
            captured[index] = output
        return store

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def received_attention(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       padding: torch.Tensor, rows: str) -> torch.Tensor:
    """(B, L) head-mean attention probability each key position received from the ``rows`` query rows.

    ``q``/``k``: the layer's q_proj/k_proj outputs (B, L, H·D) before RoPE; ``padding``: (B, L) real tokens.
    ``last``: the last real token's row; ``all``: the mean over every real query row, causally masked zeros
    counted; ``all-visible``: the mean over the real rows that can see the position (those at or after it).
    The softmax is fp32 over the keys each row may see (causal and not padding), as eager attention.
    """
    B, L, _ = q.shape
    q = q.view(B, L, -1, attn.head_dim).transpose(1, 2)  # (B, H, L, D)
    k = k.view(B, L, -1, attn.head_dim).transpose(1, 2)  # (B, H_kv, L, D)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, attn.num_key_value_groups)  # (B, H, L, D)
    positions = torch.arange(L, device=q.device)
    if rows == "last":  # the index of the last real token, whatever the padding side
        query_rows = (L - 1 - padding.flip(-1).long().argmax(-1))[:, None]  # (B, 1)
    else:
        query_rows = positions.expand(B, L)  # (B, L)
    real_rows = padding.gather(1, query_rows)  # (B, R)
    visible = (positions <= query_rows[..., None]) & padding[:, None, :]  # (B, R, L)
    total = q.new_zeros((B, L), dtype=torch.float32)
    # One head at a time: the "all" rows of a long LLaVA-NeXT prompt would not fit as one (B, H, L, L) tensor.
    for q_head, k_head in zip(q.unbind(1), k.unbind(1)):  # (B, L, D) each
        q_rows = q_head.gather(1, query_rows[..., None].expand(-1, -1, q_head.shape[-1]))  # (B, R, D)
        logits = (q_rows.float() @ k_head.float().transpose(1, 2)) * attn.scaling  # (B, R, L)
        # finfo.min, not -inf: a padded query row sees no key, and must not turn into NaN.
        probs = logits.masked_fill(~visible, torch.finfo(torch.float32).min).softmax(dim=-1)
        total += (probs * real_rows[..., None]).sum(dim=1)
    if rows == "all-visible":
        rows_per_key = (visible & real_rows[..., None]).sum(dim=1).clamp(min=1)  # (B, L)
    else:
        rows_per_key = real_rows.sum(dim=1, keepdim=True)  # (B, 1)
    return total / (q.shape[1] * rows_per_key)


def _layers(model, start, stop, hidden, mask, position_embeddings, cache, use_cache, kwargs):
    # No position_ids: RoPE comes from position_embeddings, and in a layer call they would only feed
    # FlashAttention's packed-sequence detection, which takes FastV's gapped positions for several sequences.
    for layer in model.layers[start:stop]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings, use_cache=use_cache,
                       **{LAYER_CACHE_KWARG: cache}, **kwargs)
    return hidden


def _padding(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    # Always explicit: with position gaps, no 2-D mask and no cache, create_causal_mask would take the sequence
    # for several packed ones.
    if attention_mask is None:
        return torch.ones((batch, length), dtype=torch.bool, device=device)
    return attention_mask.bool()


def start_prefill(config, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                  position_ids: torch.Tensor | None, past_key_values, use_cache: bool):
    """What every pruning prefill starts from: the cache it fills (a new one when ``use_cache``; a non-empty one is
    refused), the (B, L) positions and the (B, L) bool padding mask of ``inputs_embeds`` (B, L, D)."""
    B, L, _ = inputs_embeds.shape
    if use_cache and past_key_values is None:
        past_key_values = DynamicCache(config=config)
    if past_key_values is not None and past_key_values.get_seq_length() > 0:
        raise NotImplementedError("in-LLM pruning prunes a prefill: it cannot continue a non-empty cache")
    if position_ids is None:
        position_ids = torch.arange(L, device=inputs_embeds.device)[None]
    return past_key_values, position_ids.expand(B, -1), _padding(attention_mask, B, L, inputs_embeds.device)


def prefill(model, method: InLLMPruningMethod, images: list[ImageTokens], budget: int, inputs_embeds: torch.Tensor,
            attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, past_key_values, use_cache: bool,
            **kwargs) -> PrefillResult:
    """Prefill ``model`` (a ``LlamaModel``) on ``inputs_embeds`` (B, L, D), pruning visual tokens before layer K."""
    if hasattr(method, "prefill"):  # a multi-stage method runs its own loop (PyramidDrop, SparseVLM)
        result = method.prefill(model, images, budget, inputs_embeds, attention_mask, position_ids, past_key_values,
                                use_cache, **kwargs)
        if result.pruned_cache is not None:  # its decode steps find their state on the cache, as below
            setattr(output_cache(result.outputs), _CACHE_ATTR, result.pruned_cache)
        return result
    config, K = model.config, method.llm_layer
    if not K < config.num_hidden_layers:
        raise ValueError(f"{method.name} prunes before LLM layer {K}, "
                         f"but the LLM has {config.num_hidden_layers} layers")
    B, L, _ = inputs_embeds.shape
    device = inputs_embeds.device
    past_key_values, position_ids, padding = start_prefill(config, inputs_embeds, attention_mask, position_ids,
                                                           past_key_values, use_cache)

    hidden = inputs_embeds
    mask = _causal_mask(config, hidden, padding, past_key_values, position_ids)
    cos, sin = model.rotary_emb(hidden, position_ids)
    rows = method.attention_rows
    hidden = _layers(model, 0, K - 1 if rows else K, hidden, mask, (cos, sin), past_key_values, use_cache, kwargs)
    attention = None
    if rows:  # layer K−1, once, keeping its q/k projections
        attn = model.layers[K - 1].self_attn
        with _capture_outputs(attn.q_proj, attn.k_proj) as captured:
            hidden = _layers(model, K - 1, K, hidden, mask, (cos, sin), past_key_values, use_cache, kwargs)
        attention = received_attention(attn, *captured, cos, sin, padding, rows)

    visual = torch.zeros((B, L), dtype=torch.bool, device=device)
    for image in images:
        visual[image.row, image.positions] = True
    with torch.no_grad():  # a choice, not a differentiable function of the hidden states
        chosen = method.select_in_llm(LLMPruningContext(hidden, attention, images, budget, model.layers[K]))
    keep = ~visual | chosen  # (B, L): non-visual tokens always stay
    counts = keep.sum(dim=1)
    if not (counts == counts[0]).all():
        raise ValueError(f"in-LLM pruning keeps {counts.tolist()} tokens in the rows of this batch; batched samples "
                         "need the same number of visual tokens (use batch size 1)")
    kept_positions = keep.nonzero()[:, 1].view(B, -1)  # (B, L'), ascending

    hidden = hidden.gather(1, kept_positions[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, L', D)
    position_ids = position_ids.gather(1, kept_positions)  # original positions, with gaps
    padding = padding.gather(1, kept_positions)
    mask = _causal_mask(config, hidden, padding, past_key_values, position_ids, layer_idx=K)
    hidden = _layers(model, K, None, hidden, mask, model.rotary_emb(hidden, position_ids), past_key_values,
                     use_cache, kwargs)
    pruned = None
    if past_key_values is not None:
        pruned = PrunedCache(K, kept_positions, L)
        setattr(past_key_values, _CACHE_ATTR, pruned)
    return PrefillResult(BaseModelOutputWithPast(last_hidden_state=model.norm(hidden), **{OUTPUT_CACHE_FIELD: past_key_values}),
                         keep, kept_positions, pruned)


def decode(model, pruned: PrunedCache, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
           position_ids: torch.Tensor | None, past_key_values, use_cache: bool, **kwargs) -> BaseModelOutputWithPast:
    """A decode step (B, q, D) on the caches a pruned prefill left: layers < K see all, layers ≥ K the kept tokens."""
    if hasattr(pruned, "decode"):  # left by a method's own prefill
        return pruned.decode(model, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache, **kwargs)
    config, K = model.config, pruned.layer
    B, q, _ = inputs_embeds.shape
    device = inputs_embeds.device
    past = past_key_values.get_seq_length()  # layer 0: every token so far, the position bookkeeping
    if K == 0:  # pruned at the LLM's input (DivPrune): layer 0 too holds only the kept prefill tokens
        past += pruned.prefill_length - pruned.kept_positions.shape[1]
    if position_ids is None:
        position_ids = (torch.arange(q, device=device) + past)[None]
    position_ids = position_ids.expand(B, -1)
    padding = _padding(attention_mask, B, past + q, device)
    # Layers ≥ K hold the kept prefill tokens, then every token decoded since.
    kept = torch.cat([padding.gather(1, pruned.kept_positions), padding[:, pruned.prefill_length:]], dim=1)

    full_mask = _causal_mask(config, inputs_embeds, padding, past_key_values, position_ids)
    kept_mask = _causal_mask(config, inputs_embeds, kept, past_key_values, position_ids, layer_idx=K)
    position_embeddings = model.rotary_emb(inputs_embeds, position_ids)
    hidden = _layers(model, 0, K, inputs_embeds, full_mask, position_embeddings, past_key_values, use_cache, kwargs)
    hidden = _layers(model, K, None, hidden, kept_mask, position_embeddings, past_key_values, use_cache, kwargs)
    return BaseModelOutputWithPast(last_hidden_state=model.norm(hidden), **{OUTPUT_CACHE_FIELD: past_key_values})
