"""What every pruning method shares: the vision-tower request, the two selection hooks, and the in-LLM context.

A method prunes either **before the LLM** (``llm_layer is None``: it picks each crop's patches from the
vision tower's outputs, as FasterVLM does) or **inside the LLM** (``llm_layer = K``: every patch enters the
LLM, and before decoder layer K the method picks which visual tokens the remaining layers keep).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn


def check_budget(budget, patches: int | None = None, unit: str = "image") -> int | None:
    """[FasterVLM] The per-crop budget (visual tokens kept per image, crop or frame) as an int, None keeping all.

    The one check of a budget: an integer in [0, ``patches``] (``patches`` None: not known yet, only >= 0).
    """
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"visual_token_num must be None or a non-negative integer, got {budget!r}")
    if patches is not None and budget > patches:
        raise ValueError(f"visual_token_num={budget} is out of range: it exceeds the {patches} patches per {unit}")
    return int(budget)


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[FasterVLM] Indices of the ``k`` highest ``scores`` along the last dim, highest first; equal scores go to
    the lower index.

    ``scores``: (..., N) → (..., k). Upstream's ``topk`` leaves ties unordered, and in fp16/bf16 head-mean scores
    often tie at the k boundary: CPU and CUDA (and CUDA at different batch sizes) then keep different patches.
    A stable descending sort keeps equal scores in index order, so the kept set is the same on every device,
    dtype path and batch size; without ties it equals ``topk``'s.
    """
    return scores.sort(dim=-1, descending=True, stable=True).indices[..., :k]


def select_topk_raster(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[FasterVLM] Indices of the ``k`` highest ``scores`` per row (``k``: the budget; ties: lower index, see
    :func:`topk_indices`), returned in ascending (raster) order.

    ``scores``: (B, N) → (B, k). Sorting restores the original spatial order of the kept patches.
    """
    check_budget(k, scores.shape[-1])
    return topk_indices(scores, k).sort(dim=-1).values


def group_sum(x: torch.Tensor, groups: torch.Tensor, count: int) -> torch.Tensor:
    """[FasterVLM] Row sums of ``x`` (n, C) per group: ``groups`` (n,) in [0, count) → (count, C), in ``x``'s dtype.

    A one-hot matrix product, not ``index_add``: on CUDA ``index_add`` sums with atomics in whatever order the
    threads arrive, so a merged token, and every answer after it, could change from run to run; a matrix product
    is reproducible on a given GPU and build.
    """
    one_hot = torch.zeros(count, x.shape[0], dtype=x.dtype, device=x.device)
    one_hot[groups, torch.arange(x.shape[0], device=x.device)] = 1
    return one_hot @ x


@dataclass(frozen=True)
class TowerRequest:
    """What a method needs from the vision tower's selected layer, besides the features.

    ``cls_attn``: the [CLS] query's attention over the patches (FasterVLM's score).
    ``keys``: the patches' attention keys.
    ``patch_attn``: the full patch → patch attention map (N × N per head and crop).
    The tower computes only what is asked for.
    """

    cls_attn: bool = False
    keys: bool = False
    patch_attn: bool = False


@dataclass
class TowerOutputs:
    """The vision tower's answer to a :class:`TowerRequest`, all from the selected layer, in the image dtype.

    ``features``: (B, N, C) patch features (``patch``) or (B, 1+N, C) (``cls_patch``).
    ``cls_attn``: (B, H, N) post-softmax [CLS] → patch attention (softmax over all 1+N keys, CLS column dropped).
    ``keys``: (B, H, N, D) the patches' attention keys (after the layer's pre-attention LayerNorm).
    ``patch_attn``: (B, H, N, N) post-softmax patch → patch attention (softmax over all 1+N keys, CLS row and
    column dropped, not renormalised).
    """

    features: torch.Tensor
    cls_attn: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    patch_attn: torch.Tensor | None = None

    @property
    def cls_scores(self) -> torch.Tensor:
        """(B, N) FasterVLM's score: the unweighted head mean of ``cls_attn``, in the image dtype as upstream."""
        return self.cls_attn.mean(dim=1)


@dataclass
class ImageTokens:
    """One image's visual tokens as the LLM sees them.

    ``row``: the batch row holding the image. ``positions``: (L_i,) its tokens' indices in that row, ascending.
    ``sources``: (L_i,) where each token comes from: ``crop * patches + patch``, or -1 for an ``image_newline``.
    ``cls_attn``: (crops, patches) head-mean [CLS] attention of its crops, when the method asked for it.
    """

    row: int
    positions: torch.Tensor
    sources: torch.Tensor
    crops: int
    patches: int
    cls_attn: torch.Tensor | None = None


@dataclass
class LLMPruningContext:
    """What an in-LLM method sees before decoder layer K, at prefill.

    ``hidden``: (B, L, D) the output of layer K−1 (the input of layer K), every token present.
    ``attention``: (B, L) head-mean attention each position received in layer K−1 from the method's
    ``attention_rows`` (``last``: the last real token's row; ``all``: the mean over all real rows;
    ``all-visible``: the mean over the real rows that can see the position), or None.
    ``images``: every image of the batch, in prompt order.
    ``budget``: visual tokens kept per crop (``visual_token_num``); an image keeps ``budget × crops``.
    ``next_layer``: decoder layer K (AdaptPrune reads its key projection).
    """

    hidden: torch.Tensor
    attention: torch.Tensor | None
    images: list[ImageTokens]
    budget: int
    next_layer: nn.Module


class PruningMethod:
    """Base of every method; subclasses are dataclasses whose fields are the method's parameters.

    A field whose metadata names a ``flag`` becomes an inference CLI option (``metadata={"flag": "--x", "help":
    ...}``, optionally ``"choices"``); a field named ``seed`` receives the CLI's ``--seed``.
    """

    name: ClassVar[str]
    tower_request: ClassVar[TowerRequest] = TowerRequest()

    @property
    def llm_layer(self) -> int | None:
        """None: prunes before the LLM. K: prunes inside the LLM, before decoder layer K."""
        return None

    def select_patches(self, tower: TowerOutputs, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick ``budget`` patches per crop: returns the features (B, N, C) to gather from and the raster indices
        (B, budget).

        The features are ``tower.features`` unless the method rewrites the kept rows (e.g. merging).
        """
        raise NotImplementedError


class InLLMPruningMethod(PruningMethod):
    """A method that prunes inside the LLM: every patch enters it, :meth:`select_in_llm` picks the survivors."""

    # Which query rows of layer K−1's attention the method scores with (see LLMPruningContext), or None.
    attention_rows: ClassVar[str | None] = None

    def select_patches(self, tower: TowerOutputs, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.arange(tower.features.shape[1], device=tower.features.device)
        return tower.features, keep.expand(tower.features.shape[0], -1)

    def select_in_llm(self, ctx: LLMPruningContext) -> torch.Tensor:
        """(B, L) bool: True at the visual tokens that layers ≥ K keep (non-visual tokens are always kept)."""
        raise NotImplementedError

    def budget_note(self, budget: int | str) -> str:
        """Where ``budget`` (visual tokens per crop) takes effect, for logs: every visual token enters the LLM, so
        counts of the tokens spliced into it (``PruningInfo.visual_tokens``) do not show the pruning."""
        return f"{budget} per image crop remain from decoder layer {self.llm_layer} on"


def image_grid_side(patches: int) -> int:
    """Side of a square patch grid; spatial methods need one."""
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"{patches} patches per crop do not form a square grid")
    return side
