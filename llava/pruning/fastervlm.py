"""FasterVLM (arXiv 2412.01818): keep each crop's top-k patches by [CLS] attention, before the LLM."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.pruning.base import PruningMethod, TowerOutputs, TowerRequest, select_topk_raster
from llava.pruning.registry import register


@register
@dataclass
class FasterVLM(PruningMethod):
    """Score = head mean of the selected layer's [CLS] → patch attention; top-k in raster order (Table 5 c)."""

    name = "fastervlm"
    tower_request = TowerRequest(cls_attn=True)

    def select_patches(self, tower: TowerOutputs, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tower.features, select_topk_raster(tower.cls_scores, budget)
