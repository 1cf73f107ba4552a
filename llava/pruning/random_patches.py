"""Random pruning before the LLM: the paper's Table 5 (a)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llava.pruning.base import PruningMethod, TowerOutputs, select_topk_raster
from llava.pruning.registry import register


@register
@dataclass
class RandomPatches(PruningMethod):
    """I.i.d. uniform scores per patch, top-k in raster order, at FasterVLM's place.

    The draws come from one CPU ``torch.Generator`` seeded with ``seed`` (the CLI's ``--seed``) when the method is
    created, so a run is reproducible and independent of the device; like upstream's seeded eval scripts, each
    crop's draw depends on the crops drawn before it.
    """

    name = "random"

    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)

    def select_patches(self, tower: TowerOutputs, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.rand(tower.features.shape[:2], generator=self.generator)  # (B, N)
        return tower.features, select_topk_raster(scores, budget).to(tower.features.device)
