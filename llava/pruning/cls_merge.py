"""[CLS] top-k followed by merging the pruned patches into the kept ones: the paper's Table 5 (e)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llava.pruning.base import PruningMethod, TowerOutputs, TowerRequest, group_sum, select_topk_raster
from llava.pruning.registry import register


@register
@dataclass
class ClsMerge(PruningMethod):
    """Keep FasterVLM's top-k; each pruned patch joins the kept patch whose key is most cosine-similar.

    Keys are the selected layer's attention keys averaged over heads (as VisionZip and LLaVA-PruMerge do).
    Merging is a plain mean of the tower features (before the projector) of a kept patch and the patches
    assigned to it; the paper does not say how it weighted them (baselines.md §2 e).
    """

    name = "cls-merge"
    tower_request = TowerRequest(cls_attn=True, keys=True)

    def select_patches(self, tower: TowerOutputs, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        keep = select_topk_raster(tower.cls_scores, budget)  # (B, budget)
        keys = F.normalize(tower.keys.float().mean(dim=1), dim=-1)  # (B, H, N, D) → (B, N, D)
        features = tower.features.clone()
        dropped = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device).scatter_(1, keep, False)
        for b in range(features.shape[0]):
            pruned = dropped[b].nonzero().squeeze(1)  # (N−budget,)
            if budget == 0 or pruned.numel() == 0:
                continue
            target = (keys[b, pruned] @ keys[b, keep[b]].T).argmax(dim=-1)  # (N−budget,): index into keep[b]
            sums = tower.features[b, keep[b]].float() + group_sum(tower.features[b, pruned].float(), target, budget)
            counts = 1 + torch.bincount(target, minlength=budget)  # the kept patch itself, plus its assigned ones
            features[b, keep[b]] = (sums / counts[:, None]).to(features.dtype)
        return features, keep
