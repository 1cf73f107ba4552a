"""DivPrune (Alvar et al., *DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models*, CVPR 2025,
arXiv 2503.02175), written from the paper: keep the visual tokens that solve a greedy max–min diversity problem
over the projected visual tokens at the LLM's input. Details: ``docs/methods.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.pruning.base import InLLMPruningMethod, LLMPruningContext
from llava.pruning.registry import register


def max_min_diverse(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy max–min diversity on (n, D) ``tokens`` with the cosine distance 1 − cos: (k,) indices in pick order.

    First the token whose nearest other token is farthest; then, repeatedly, the token whose distance to its
    nearest chosen token is largest. Ties → the lower index (``argmax`` returns the first maximum).
    """
    normed = tokens.float() / tokens.float().norm(dim=-1, keepdim=True)  # fp32 whatever the LLM's dtype
    distance = 1 - normed @ normed.T  # (n, n)
    own = torch.eye(len(tokens), dtype=torch.bool, device=tokens.device)
    first = distance.masked_fill(own, float("inf")).min(dim=1).values.argmax()
    picked = [int(first)]
    nearest = distance[first].clone()  # (n,): distance of every token to its nearest chosen token
    for _ in range(k - 1):
        nearest[picked] = -float("inf")  # never again
        nxt = int(nearest.argmax())
        picked.append(nxt)
        nearest = torch.minimum(nearest, distance[nxt])
    return torch.tensor(picked[:k], dtype=torch.long, device=tokens.device)


@register
@dataclass
class DivPrune(InLLMPruningMethod):
    """Per crop, the T projected visual tokens chosen by greedy max–min cosine diversity, pruned at the LLM's input
    (before decoder layer 0); survivors keep their original positions, ``image_newline`` tokens stay."""

    name = "divprune"

    @property
    def llm_layer(self) -> int:
        return 0

    def select_in_llm(self, ctx: LLMPruningContext) -> torch.Tensor:
        keep = torch.zeros(ctx.hidden.shape[:2], dtype=torch.bool, device=ctx.hidden.device)  # (B, L)
        for image in ctx.images:
            for crop in range(image.crops):
                at = ((image.sources >= crop * image.patches)
                      & (image.sources < (crop + 1) * image.patches)).nonzero().squeeze(1)  # the crop's tokens
                tokens = ctx.hidden[image.row, image.positions[at]]  # (N, D) projected visual tokens
                if ctx.budget > 0:
                    keep[image.row, image.positions[at[max_min_diverse(tokens, min(ctx.budget, len(at)))]]] = True
            keep[image.row, image.positions[image.sources < 0]] = True  # image_newline tokens
        return keep
