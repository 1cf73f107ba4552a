"""VisPruner (Zhang et al., *Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs*, ICCV 2025, arXiv 2412.01818 v2): important patches by [CLS] attention, then diverse ones by removing
near-duplicates among the rest, before the LLM. Details and the released code's choices: ``docs/methods.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llava.pruning.base import PruningMethod, TowerOutputs, TowerRequest, check_budget
from llava.pruning.registry import register


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting each row of ``scores`` (…, N) from high to low; ties → lower index first (stable sort).

    The released code's ``argsort(descending=True)`` leaves tie order to the backend.
    """
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def remove_duplicates(normed: torch.Tensor, residual: torch.Tensor, keep: int, step: int = 8) -> torch.Tensor:
    """VisPruner's diverse-token loop on one crop: (R,) candidate indices → (keep,) survivors, in the loop's order.

    ``normed``: (N, C) features divided by their L2 norm. Each round splits the current list alternately into A
    (even positions) and B (odd positions), scores every A token by its highest similarity to any B token, and drops
    the ``min(step, R − keep)`` highest-scoring A tokens; the survivors of A (in descending-score order) followed by
    all of B (in its old order) form the next list.
    """
    if keep == 0:  # upstream skips the loop (its fix d7da3a3); an empty B would have no maximum
        return residual[:0]
    while residual.shape[0] > keep:
        r = min(step, residual.shape[0] - keep)
        a, b = normed[residual[0::2]], normed[residual[1::2]]  # (⌈R/2⌉, C), (⌊R/2⌋, C)
        similarity = (a @ b.T).max(dim=-1).values  # (⌈R/2⌉,)
        distinct = descending_order(similarity)[r:]  # (⌈R/2⌉ − r,): A minus its r most redundant tokens
        residual = torch.cat([residual[0::2][distinct], residual[1::2]])
    return residual


@register
@dataclass
class VisPruner(PruningMethod):
    """T_imp = int(T × ratio) patches by head-mean [CLS] attention, the other T − T_imp by duplicate removal among
    the rest; the union in raster order, per crop/frame."""

    name = "vispruner"
    tower_request = TowerRequest(cls_attn=True)

    important_ratio: float = field(default=0.5, metadata={
        "flag": "--important-ratio",
        "help": "VisPruner: fraction of the budget taken by [CLS] attention (int(T × ratio)), the rest by "
                "diversity (default 0.5, as the authors' evaluation scripts)"})

    def __post_init__(self):
        if not 0.0 <= self.important_ratio <= 1.0:
            raise ValueError(f"--important-ratio must be in [0, 1], got {self.important_ratio}")

    def select_patches(self, tower: TowerOutputs, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        features = tower.features  # (B, N, C), the image dtype as upstream (fp16 on GPU)
        k = check_budget(budget, features.shape[1])
        important = int(k * self.important_ratio)  # truncates, as upstream
        order = descending_order(tower.cls_scores)  # (B, N): head-mean [CLS] attention, high to low
        # Upstream's arithmetic exactly: x / ‖x‖ then a matrix product (cosine_similarity or fp64 pick differently
        # on nearly parallel features).
        normed = features / features.norm(dim=-1, keepdim=True)  # (B, N, C)
        keep = [torch.cat([row[:important], remove_duplicates(f, row[important:], k - important)])
                for f, row in zip(normed, order)]
        return features, torch.stack(keep).sort(dim=-1).values  # (B, k) raster order, as upstream's mask
