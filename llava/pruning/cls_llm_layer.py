"""[CLS] ranking applied inside the LLM: the paper's Table 5 (d)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.pruning.base import InLLMPruningMethod, LLMPruningContext, TowerRequest, select_topk_raster
from llava.pruning.registry import register


@register
@dataclass
class ClsAtLLMLayer(InLLMPruningMethod):
    """FasterVLM's choice of patches (each crop's top-k by [CLS] attention), but pruned before LLM layer ``layer``.

    Every patch passes through layers 0..layer−1; from ``layer`` on only the patches FasterVLM would keep remain,
    at their original positions (FastV's mechanism and position convention). ``image_newline`` tokens are kept,
    as FasterVLM keeps them.
    """

    name = "cls-llm-layer2"
    tower_request = TowerRequest(cls_attn=True)

    layer: int = 2

    def __post_init__(self):
        if self.layer < 0:
            raise ValueError(f"cls-llm-layer2 prunes before a decoder layer >= 0, got layer={self.layer}")

    @property
    def llm_layer(self) -> int:
        return self.layer

    def select_in_llm(self, ctx: LLMPruningContext) -> torch.Tensor:
        keep = torch.zeros(ctx.hidden.shape[:2], dtype=torch.bool, device=ctx.hidden.device)  # (B, L)
        for image in ctx.images:
            top = select_topk_raster(image.cls_attn, ctx.budget)  # (crops, k), FasterVLM's exact selection
            chosen = torch.zeros(image.crops * image.patches, dtype=torch.bool, device=keep.device)
            offsets = torch.arange(image.crops, device=keep.device)[:, None] * image.patches
            chosen[(top + offsets).flatten()] = True
            kept = (image.sources < 0) | chosen[image.sources.clamp(min=0)]  # (L_i,)
            keep[image.row, image.positions[kept]] = True
        return keep
