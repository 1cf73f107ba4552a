"""The vision→language projector named by ``mm_projector_type`` (LLaVA's naming, so checkpoint keys match)."""
from __future__ import annotations

import re

import torch.nn as nn


class IdentityMap(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self):
        return {"mm_projector_type": "identity"}


def build_vision_projector(config) -> nn.Module:
    """``linear``, ``mlp{N}x_gelu`` (LLaVA-1.5/1.6 use ``mlp2x_gelu``) or ``identity``.

    Keys follow LLaVA's ``nn.Sequential`` indices (``mm_projector.0``, ``.2``, …) so checkpoints load unchanged.
    """
    projector_type = getattr(config, "mm_projector_type", "linear")
    if projector_type == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    mlp = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if mlp:
        layers: list[nn.Module] = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
        for _ in range(int(mlp.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        return nn.Sequential(*layers)
    if projector_type == "identity":
        return IdentityMap()
    raise ValueError(f"unknown mm_projector_type {projector_type!r} (expected linear, mlpNx_gelu or identity)")
