"""Patch-attention pruning before the LLM: the paper's Table 5 (b)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.pruning.base import PruningMethod, TowerOutputs, TowerRequest, select_topk_raster
from llava.pruning.registry import register


@register
@dataclass
class PatchAttention(PruningMethod):
    """Score = the mean attention a patch receives from all patches, in FasterVLM's layer, head-averaged.

    The map is the 576 patch queries × 576 patch keys of the post-softmax attention (softmax over all 1+N keys,
    the [CLS] row and column left out, no renormalisation), as baselines.md recommends; top-k in raster order.
    """

    name = "patch-attn"
    tower_request = TowerRequest(patch_attn=True)

    def select_patches(self, tower: TowerOutputs, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = tower.patch_attn.float().mean(dim=1).mean(dim=1)  # (B, H, N, N) → (B, N): head mean, query mean
        return tower.features, select_topk_raster(scores, budget)
