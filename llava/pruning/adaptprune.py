"""AdaptPrune (Luan et al., arXiv 2503.08019): attention with a centre prior, then adaptive spatial/similarity soft-NMS.

``adaptprune`` is the method as its code runs it: inside the LLM before layer K, scored by the last token's
layer K−1 attention. ``adaptprune-cls`` runs the same soft-NMS on FasterVLM's [CLS] scores, before the LLM.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llava.pruning.base import (InLLMPruningMethod, LLMPruningContext, PruningMethod, TowerOutputs, TowerRequest,
                                check_budget, image_grid_side)
from llava.pruning.registry import register


def center_prior(side: int, sigma: float, device=None) -> torch.Tensor:
    """(side·side,) Gaussian centre prior on a raster grid with coordinates linspace(−side/2, side/2), max 1."""
    axis = torch.linspace(-side / 2, side / 2, side, device=device, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    prior = torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
    return (prior / prior.max()).flatten()


def soft_nms(scores: torch.Tensor, keys: torch.Tensor, side: int, k: int, radius: float, sigma_d: float,
             sigma_s: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """AdaptPrune's adaptive soft-NMS on one side×side grid; returns the ``k`` picked raster indices, ascending.

    ``scores``: (N,) non-negative; ``keys``: (N, D) L2-normalised; ``valid``: (N,) cells that may be picked (all
    by default). Each step picks the highest-scoring unpicked cell p and multiplies the score of every cell q
    within grid distance ``radius`` by 1 − exp(−d²/2σ_d²)·exp(−(1 − cos(k_q, k_p))²/2σ_s²). A picked cell is never
    picked again, even when decayed scores underflow to zero (the original code could re-pick it then).
    """
    n = scores.shape[0]
    valid = torch.ones(n, dtype=torch.bool, device=scores.device) if valid is None else valid
    k = min(k, int(valid.sum()))
    rows = torch.arange(n, device=scores.device) // side
    cols = torch.arange(n, device=scores.device) % side
    dist2 = ((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2).double()  # (N, N)
    spatial = torch.exp(-dist2 / (2 * sigma_d ** 2)) * (dist2 <= radius ** 2)
    cos = keys.double() @ keys.double().T
    decay = 1 - spatial * torch.exp(-((1 - cos) ** 2) / (2 * sigma_s ** 2))  # (N, N): row p decays the grid
    current, available = scores.double().clone(), valid.clone()
    picked = []
    for _ in range(k):  # p stays a (1,) tensor: no host sync per step on a GPU
        p = torch.where(available, current, -torch.inf).argmax().view(1)
        picked.append(p)
        current = current * decay.index_select(0, p)[0]
        available.index_fill_(0, p, False)
    if not picked:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    return torch.cat(picked).sort().values


# Both variants share the soft-NMS parameters and their CLI flags.
CENTER_SIGMA = {"flag": "--adaptprune-center-sigma",
                "help": "AdaptPrune: sigma of the Gaussian centre prior on the scores, in patches (0: no prior)"}
RADIUS = {"flag": "--adaptprune-radius", "help": "AdaptPrune: NMS neighbourhood, grid distance in patches"}
SIGMA_D = {"flag": "--adaptprune-sigma-d", "help": "AdaptPrune: sigma of the spatial-distance decay"}
SIGMA_S = {"flag": "--adaptprune-sigma-s", "help": "AdaptPrune: sigma of the key-similarity decay (on 1 - cosine)"}


class _SoftNMSParameters:
    """The prior and soft-NMS both variants run, on the parameters their dataclass fields give."""

    name: str
    center_sigma: float
    radius: float
    sigma_d: float
    sigma_s: float

    def __post_init__(self):
        if self.center_sigma < 0 or self.radius < 0 or self.sigma_d <= 0 or self.sigma_s <= 0:
            raise ValueError(f"{self.name}: center_sigma and radius must be >= 0, sigma_d and sigma_s > 0")

    def pick(self, scores: torch.Tensor, keys: torch.Tensor, k: int, valid: torch.Tensor | None = None):
        """Prior, then soft-NMS, on one crop: ``scores`` (N,), ``keys`` (N, D) → (min(k, valid),) raster indices."""
        side = image_grid_side(scores.shape[0])
        if self.center_sigma > 0:
            scores = scores.double() * center_prior(side, self.center_sigma, scores.device)
        return soft_nms(scores, F.normalize(keys.float(), dim=-1), side, k, self.radius, self.sigma_d, self.sigma_s,
                        valid)


@register
@dataclass
class AdaptPrune(_SoftNMSParameters, InLLMPruningMethod):
    """AdaptPrune inside the LLM, before layer ``k``, at prefill, one soft-NMS per 336-px crop.

    Scores: the last real token's layer k−1 attention (head mean) to the crop's tokens, times the centre prior
    (σ = 12 on the 24×24 grid). Keys: layer k's ``k_proj`` of its input hidden states, without RMSNorm or RoPE,
    full width. Each crop keeps ``budget`` tokens (the original fixed ratio 0.1, i.e. 57, becomes the budget);
    ``image_newline`` tokens are kept. Survivors keep their original positions.
    """

    name = "adaptprune"
    attention_rows = "last"

    layer: int = field(default=2, metadata={"flag": "--adaptprune-k",
                                            "help": "AdaptPrune: prune before this LLM layer, scoring with layer K-1"})
    center_sigma: float = field(default=12.0, metadata=CENTER_SIGMA)
    radius: float = field(default=5.0, metadata=RADIUS)
    sigma_d: float = field(default=1.5, metadata=SIGMA_D)
    sigma_s: float = field(default=0.05, metadata=SIGMA_S)

    def __post_init__(self):
        if self.layer < 1:
            raise ValueError(f"AdaptPrune needs layer K-1's attention: --adaptprune-k must be >= 1, got {self.layer}")
        super().__post_init__()

    @property
    def llm_layer(self) -> int:
        return self.layer

    def select_in_llm(self, ctx: LLMPruningContext) -> torch.Tensor:
        keep = torch.zeros(ctx.hidden.shape[:2], dtype=torch.bool, device=ctx.hidden.device)  # (B, L)
        k_proj = ctx.next_layer.self_attn.k_proj
        for image in ctx.images:
            keep[image.row, image.positions[image.sources < 0]] = True
            n = image.patches
            for crop in range(image.crops):
                in_crop = (image.sources >= crop * n) & (image.sources < (crop + 1) * n)
                positions, patches = image.positions[in_crop], image.sources[in_crop] - crop * n
                # A crop's grid, scattered by patch index: a patch missing from the sequence can never be picked.
                scores = ctx.attention.new_zeros(n).index_put_((patches,), ctx.attention[image.row, positions])
                keys = ctx.hidden.new_zeros(n, k_proj.out_features).index_put_(
                    (patches,), k_proj(ctx.hidden[image.row, positions]))
                valid = torch.zeros(n, dtype=torch.bool, device=keep.device).index_fill_(0, patches, True)
                at = torch.full((n,), -1, dtype=torch.long, device=keep.device).index_put_((patches,), positions)
                keep[image.row, at[self.pick(scores, keys, ctx.budget, valid)]] = True
        return keep


@register
@dataclass
class AdaptPruneCLS(_SoftNMSParameters, PruningMethod):
    """AdaptPrune's soft-NMS on FasterVLM's [CLS] scores, before the LLM, per crop; raster order.

    Keys: the selected CLIP layer's attention keys, full width (heads concatenated), as AdaptPrune uses full-width
    keys. No centre prior by default: it corrects the LLM's last-token attention, which [CLS] attention is not.
    """

    name = "adaptprune-cls"
    tower_request = TowerRequest(cls_attn=True, keys=True)

    center_sigma: float = field(default=0.0, metadata=CENTER_SIGMA)
    radius: float = field(default=5.0, metadata=RADIUS)
    sigma_d: float = field(default=1.5, metadata=SIGMA_D)
    sigma_s: float = field(default=0.05, metadata=SIGMA_S)

    def select_patches(self, tower: TowerOutputs, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        check_budget(budget, tower.features.shape[1])
        keys = tower.keys.transpose(1, 2).flatten(2)  # (B, H, N, D) → (B, N, H·D)
        keep = torch.stack([self.pick(scores, crop_keys, budget) for scores, crop_keys in zip(tower.cls_scores, keys)])
        return tower.features, keep
