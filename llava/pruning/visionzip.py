"""VisionZip (Yang et al., *VisionZip: Longer is Better but Not Necessary in Vision Language Models*, CVPR 2025,
arXiv 2412.04467): dominant patches by [CLS] attention, the rest merged into a few contextual tokens by key
similarity, before the LLM. Details and where this differs from the released code: ``docs/methods.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llava.pruning.base import PruningMethod, TowerOutputs, TowerRequest, group_sum, select_topk_raster
from llava.pruning.registry import register

# The authors' LLaVA-1.5 setting: 54 dominant + 10 contextual = 64 tokens (README); their 128/192 settings keep the
# same share (108 + 20, 162 + 30), so other budgets take round(T × 10 / 64) contextual tokens.
CONTEXTUAL_SHARE = 10 / 64


@register
@dataclass
class VisionZip(PruningMethod):
    """Per crop: T − C dominant patches by head-summed [CLS] attention; the other patches grouped around C evenly
    spaced targets by key cosine similarity, each target's feature becoming target + mean of its group. The C
    contextual tokens sit at their targets' raster positions."""

    name = "visionzip"
    tower_request = TowerRequest(cls_attn=True, keys=True)

    contextual: int = field(default=-1, metadata={
        "flag": "--visionzip-contextual",
        "help": "VisionZip: contextual (merged) tokens per crop; -1 = round(T × 10/64), the authors' 54 + 10 at 64"})

    def __post_init__(self):
        if self.contextual < -1:
            raise ValueError(f"--visionzip-contextual must be >= 0 (or -1 for the authors' share), "
                             f"got {self.contextual}")

    def split(self, k: int) -> tuple[int, int]:
        """(dominant, contextual) token counts for a budget of ``k`` per crop."""
        contextual = round(k * CONTEXTUAL_SHARE) if self.contextual == -1 else self.contextual
        if contextual > k:
            raise ValueError(f"--visionzip-contextual {contextual} exceeds the budget of {k} tokens per crop")
        return k - contextual, contextual

    def select_patches(self, tower: TowerOutputs, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        dominant, contextual = self.split(budget)
        features = tower.features.clone()  # (B, N, C)
        B, N, _ = features.shape
        # Summed over heads, as upstream (a sum, not FasterVLM's mean: the same order up to rounding).
        dom = select_topk_raster(tower.cls_attn.sum(dim=1), dominant)  # (B, dominant)
        if contextual == 0:
            return features, dom
        metric = tower.keys.mean(dim=1)  # (B, N, D): keys averaged over heads
        metric = metric / metric.norm(dim=-1, keepdim=True)  # upstream's arithmetic: x / ‖x‖
        rest_mask = torch.ones(B, N, dtype=torch.bool, device=features.device).scatter_(1, dom, False)
        keep = []
        for b in range(B):
            rest = rest_mask[b].nonzero().squeeze(1)  # (R,) remaining patches, raster order
            step = max(1, rest.shape[0] // contextual)
            is_target = torch.zeros_like(rest, dtype=torch.bool)
            is_target[torch.arange(0, rest.shape[0], step, device=rest.device)[:contextual]] = True
            targets, others = rest[is_target], rest[~is_target]  # (C,), (R − C,)
            assign = (metric[b, others] @ metric[b, targets].T).argmax(dim=-1)  # (R − C,): first maximum on ties
            sums = group_sum(tower.features[b, others], assign, contextual)  # (contextual, D)
            counts = torch.bincount(assign, minlength=contextual).clamp(min=1)  # an empty group adds nothing
            features[b, targets] = tower.features[b, targets] + sums / counts[:, None].to(sums.dtype)
            keep.append(torch.cat([dom[b], targets]).sort().values)
        return features, torch.stack(keep)  # (B, k) raster order
