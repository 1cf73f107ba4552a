"""FastV (Chen et al., ECCV 2024, arXiv 2403.06764): prune image tokens inside the LLM by the attention they receive."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llava.pruning.base import InLLMPruningMethod, LLMPruningContext, topk_indices
from llava.pruning.registry import register

SCORES = ("last", "all", "all-visible")


@register
@dataclass
class FastV(InLLMPruningMethod):
    """Layers 0..K−1 see every token; before layer K the image tokens are ranked by layer K−1's head-mean
    attention and only the top ``budget × crops`` per sample remain (all of a sample's image tokens, every crop,
    newline and image, form one span; non-image tokens always stay), at their original positions.

    ``score``: ``last`` ranks by the last prompt token's attention (what FastV's code does); ``all`` by the mean
    over all real query rows, causally masked zeros included (the paper's wording, baselines.md §1's recommended
    normalisation: it favours early tokens); ``all-visible`` by the mean over the rows that can see the token.
    """

    name = "fastv"

    layer: int = field(default=2, metadata={"flag": "--fastv-k",
                                            "help": "FastV: prune before this LLM layer, ranking by layer K-1's attention"})
    score: str = field(default="last", metadata={"flag": "--fastv-score", "choices": SCORES,
                                                 "help": "FastV: rank image tokens by the attention of the last token, "
                                                         "the mean over all tokens (masked zeros counted), or the mean "
                                                         "over the tokens that can see them"})

    def __post_init__(self):
        if self.layer < 1:
            raise ValueError(f"FastV needs layer K-1's attention: --fastv-k must be >= 1, got {self.layer}")
        if self.score not in SCORES:
            raise ValueError(f"FastV score must be one of {SCORES}, got {self.score!r}")

    @property
    def llm_layer(self) -> int:
        return self.layer

    @property
    def attention_rows(self) -> str:
        return self.score

    def select_in_llm(self, ctx: LLMPruningContext) -> torch.Tensor:
        keep = torch.zeros(ctx.hidden.shape[:2], dtype=torch.bool, device=ctx.hidden.device)  # (B, L)
        for row in sorted({image.row for image in ctx.images}):
            images = [image for image in ctx.images if image.row == row]
            positions = torch.cat([image.positions for image in images])  # the sample's one span
            budget = min(ctx.budget * sum(image.crops for image in images), positions.numel())
            top = topk_indices(ctx.attention[row, positions], budget)
            keep[row, positions[top]] = True
        return keep
