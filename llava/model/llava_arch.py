"""LLaVA's multimodal glue: vision tower → [FasterVLM] token selection → projector → spliced input embeddings."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import ANYRES_PROTOCOLS, anyres_resolution, check_image_aspect_ratio, get_anyres_protocol
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_encoder.languagebind import build_languagebind_towers
from llava.model.multimodal_projector.builder import build_vision_projector
from llava.pruning import PruningMethod, check_installed, get_method
from llava.pruning.base import TowerOutputs, check_budget


# How LLaVA-NeXT lays out the tokens of its crops (``mm_patch_merge_type``).
MM_PATCH_MERGE_TYPES = ("flat", "spatial", "spatial_unpad")


def get_mm_patch_merge_type(config) -> str:
    """The config's ``mm_patch_merge_type`` (LLaVA-1.5 configs predate it: ``flat``); unknown values are errors."""
    merge_type = getattr(config, "mm_patch_merge_type", None) or "flat"
    if merge_type not in MM_PATCH_MERGE_TYPES:
        raise ValueError(f"unsupported mm_patch_merge_type {merge_type!r} (expected one of {MM_PATCH_MERGE_TYPES})")
    return merge_type


class LlavaMetaModel:
    """Mixin for the LLM backbone (``model.*`` keys): owns ``vision_tower``, ``mm_projector`` and, for
    LLaVA-NeXT's ``spatial_unpad`` merge, ``image_newline``."""

    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "mm_vision_tower", None):
            check_image_aspect_ratio(config)
            self.vision_tower = build_vision_tower(config, delay_load=True,
                                                   base_dir=getattr(config, "_name_or_path", None) or None)
            self.mm_projector = build_vision_projector(config)
            if get_mm_patch_merge_type(config) == "spatial_unpad":
                # Learned embedding appended after every row of the unpadded crop grid (``model.image_newline``).
                self.image_newline = nn.Parameter(torch.empty(config.hidden_size))
        elif getattr(config, "mm_video_tower", None):  # [FasterVLM] Video-LLaVA: LanguageBind image + video towers
            self.image_tower, self.video_tower = build_languagebind_towers(
                config, base_dir=getattr(config, "_name_or_path", None) or None)
            self.mm_projector = build_vision_projector(config)

    def get_vision_tower(self):
        return getattr(self, "vision_tower", None)


@dataclass
class PruningInfo:
    """[FasterVLM] What the last multimodal forward kept, for scripts and analyses.

    Every image is one or more 336-px crops (LLaVA-1.5: one; LLaVA-NeXT: the base image, then the grid
    crops in raster order), and every crop gets its own top-k.

    ``kept_indices[j]``: raster indices (ascending) of the patches selected in crop ``j``, counting the crops
    of all images of the batch in order. For vanilla ``spatial_unpad`` this is before unpadding, which
    then drops the selected patches that lie on padding.
    ``crops_per_image``: how many crops of ``kept_indices`` / ``cls_attn`` belong to each image.
    ``cls_attn``: (total_crops, N) head-mean [CLS] attention before pruning; None for a pruning method that
    does not use it.
    ``token_sources[i]``: (L_i,) where each visual token of image ``i`` comes from, in sequence order:
    ``crop * N + patch`` within that image, or -1 for an ``image_newline`` token.
    ``visual_tokens``: visual tokens (newlines included) spliced into each sequence of the batch.
    ``visual_spans[i]``: ``(row, start, end)``: image ``i``'s tokens fill ``[start, end)`` of batch row ``row``
    of the padded sequence (how in-LLM pruning finds the image, whatever the prompt template).
    ``llm_layer``: for an in-LLM pruning method (``llava.pruning``), the decoder layer from which only
    ``kept_indices`` remain, set by the prefill that pruned; every patch of ``token_sources`` enters the LLM.

    Made by the encoders and completed by the splice (and, for an in-LLM method, by the prefill); never read to
    decide what the model does next.
    """

    kept_indices: list[torch.Tensor] = field(default_factory=list)
    crops_per_image: list[int] = field(default_factory=list)
    cls_attn: torch.Tensor | None = None
    token_sources: list[torch.Tensor] = field(default_factory=list)
    visual_tokens: list[int] = field(default_factory=list)
    visual_spans: list[tuple[int, int, int]] = field(default_factory=list)
    llm_layer: int | None = None

    def kept_indices_per_image(self) -> list[torch.Tensor]:
        """``kept_indices`` grouped per image: one (crops_i, k) tensor each."""
        groups, start = [], 0
        for n in self.crops_per_image:
            groups.append(torch.stack(self.kept_indices[start:start + n]))
            start += n
        return groups


@dataclass
class LLMPruningPlan:
    """[FasterVLM] What an in-LLM method prunes at the prefill after a splice; ``forward`` takes it as
    ``pruning_plan=`` and ``prepare_inputs_for_generation`` passes it to the prefill only.

    ``budget``: visual tokens kept per crop; ``patches``: patches per crop (or frame); ``pruning``: the splice's
    :class:`PruningInfo` (spans, token sources, crops, [CLS] scores).
    """

    method: PruningMethod
    budget: int
    patches: int
    pruning: PruningInfo


@dataclass
class Splice:
    """[FasterVLM] What the splice made: the padded batch the LLM runs on and what the encoders kept.

    ``inputs_embeds``: (B, L, D); ``attention_mask``/``position_ids``: (B, L); ``labels``: (B, L) or None;
    ``pruning``: the :class:`PruningInfo` of this batch (``visual_tokens`` and ``visual_spans`` filled in).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    pruning: PruningInfo


def check_video_method(method: PruningMethod) -> None:
    """[FasterVLM] Video-LLaVA's LanguageBind towers give features and [CLS] attention; a method asking for more fails."""
    if method.tower_request.keys or method.tower_request.patch_attn:
        raise NotImplementedError(f"pruning method {method.name!r} needs tower keys or patch attention, which "
                                  "Video-LLaVA's LanguageBind towers do not provide")


def padding_side(attention_mask: torch.Tensor | None) -> str:
    """``"left"`` when some row of ``attention_mask`` (B, L) starts with padding, else ``"right"``."""
    if attention_mask is None or attention_mask.shape[1] == 0:
        return "right"
    return "left" if not bool(attention_mask[:, 0].all()) else "right"


def unpadded_bounds(height: int, width: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the part of a ``height``×``width`` patch grid covered by the image.

    ``image_size`` is the original ``(width, height)``; anyres letterboxed it onto the grid's canvas, and
    LLaVA-NeXT's ``unpad_image`` drops the padding rows or columns, truncating the scaled side with ``int()``.
    That rule is kept, float error included: it is the one LLaVA-1.6 was trained and evaluated with
    (haotian-liu/LLaVA's ``unpad_image``, as in LLaVA-VL/LLaVA-NeXT). transformers' LlavaNext rounds the
    scaled side to 7 decimals first (added so that its processor's token count matches its model), which
    keeps one more row or column on each side when the product lands just below a whole number. For widths
    and heights 1..2000 on LLaVA-1.6's 5 grids that is 264 of 20 M (size, grid) pairs, 58 sizes on the grid
    LLaVA-NeXT picks for them (e.g. 704×396 on 2×2: rows [11, 37) of 48, transformers [10, 38)); only
    there do the unpruned vanilla logits differ from transformers'.
    """
    original_width, original_height = image_size
    if original_width / original_height > width / height:
        new_height = int(original_height * (width / original_width))
        pad = (height - new_height) // 2
        return pad, height - pad, 0, width
    new_width = int(original_width * (height / original_height))
    pad = (width - new_width) // 2
    return 0, height, pad, width - pad


def anyres_token_sources(keep_mask: torch.Tensor, merge_type: str, grid_shape: tuple[int, int] | None = None,
                         image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Sequence order of one LLaVA-NeXT image's visual tokens.

    ``keep_mask``: (n, N) crops × patches, True where a patch is kept; crop 0 is the base image, crops 1..n-1
    the ``grid_shape = (rows, cols)`` grid in raster order, each crop a ``side``×``side`` patch grid.
    Returns (L,) indices into the image's flattened (n·N) patches, with -1 marking an ``image_newline``.

    - ``flat``: crop after crop, each in raster order.
    - ``spatial``: base crop, then the grid crops stitched into one (rows·side)×(cols·side) raster.
    - ``spatial_unpad``: as ``spatial``, but the stitched grid is cut back to the image's aspect ratio
      (``image_size``) and a newline ends every remaining row; a single crop gets one trailing newline.

    [FasterVLM] Selection is a mask applied to this layout: dropped patches simply leave the sequence,
    kept ones keep their raster place. A newline is structural, not a patch: it is kept for every row of
    the unpadded grid, even a row whose patches were all pruned, so the row count the LLM sees is the
    same as without pruning.
    """
    n, N = keep_mask.shape
    index = torch.arange(n * N, device=keep_mask.device).view(n, N)
    if merge_type == "flat":
        return index[keep_mask]
    base = index[0][keep_mask[0]]
    newline = torch.full((1,), -1, dtype=index.dtype, device=index.device)
    if n == 1:
        return torch.cat([base, newline]) if merge_type == "spatial_unpad" else base
    rows, cols = grid_shape
    if n != 1 + rows * cols:
        raise ValueError(f"an anyres image has {n} crops but its {rows}×{cols} grid needs {1 + rows * cols}; "
                         "preprocess with process_images under the model's config (anyres_protocol included)")
    side = math.isqrt(N)
    # (rows, cols, side, side) → (rows, side, cols, side) → (rows·side, cols·side): the stitched raster.
    grid = index[1:].view(rows, cols, side, side).permute(0, 2, 1, 3).reshape(rows * side, cols * side)
    mask = keep_mask[1:].view(rows, cols, side, side).permute(0, 2, 1, 3).reshape(rows * side, cols * side)
    if merge_type == "spatial_unpad":
        top, bottom, left, right = unpadded_bounds(rows * side, cols * side, image_size)
        grid, mask = grid[top:bottom, left:right], mask[top:bottom, left:right]  # (H', W')
        grid = torch.cat([grid, newline.expand(grid.shape[0], 1)], dim=1)  # (H', W'+1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return torch.cat([base, grid[mask]])


class LlavaMetaForCausalLM(ABC):
    """Mixin for the causal LM: turns ``input_ids`` with ``IMAGE_TOKEN_INDEX`` placeholders into embeddings.

    [FasterVLM] Per instance (set in ``__init__``): ``visual_token_num``, the budget (None keeps every patch, as
    vanilla LLaVA; an int keeps that many per image, crop or frame); ``pruning_method``, how the budget's tokens
    are chosen (``llava.pruning``; FasterVLM unless set); ``last_pruning``, the report of the last multimodal
    ``generate`` or ``forward``, written once by the call that finished the pruning.
    """

    visual_token_num: int | None
    pruning_method: PruningMethod
    last_pruning: PruningInfo | None

    @abstractmethod
    def get_model(self):
        ...

    def init_pruning(self, visual_token_num: int | None = None) -> None:
        """[FasterVLM] The per-instance pruning state: FasterVLM with ``visual_token_num``, no report yet."""
        self.set_visual_token_num(visual_token_num)
        self.pruning_method = get_method("fastervlm")
        self.last_pruning = None

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def get_visual_token_num(self) -> int | None:
        return self.visual_token_num

    def get_anyres_protocol(self) -> str:
        """[FasterVLM] ``paper``, ``vanilla`` or ``released``: how LLaVA-NeXT images are cut and merged
        (``mm_utils.ANYRES_PROTOCOLS``)."""
        return get_anyres_protocol(self.config)

    def set_anyres_protocol(self, protocol: str) -> None:
        """[FasterVLM] Select the anyres protocol; ``process_images(..., model.config)`` follows it too."""
        if protocol not in ANYRES_PROTOCOLS:
            raise ValueError(f"unsupported anyres_protocol {protocol!r} (expected one of {ANYRES_PROTOCOLS})")
        self.config.anyres_protocol = protocol

    def set_visual_token_num(self, visual_token_num: int | None) -> None:
        """[FasterVLM] Set the per-image budget; checked against the patch count at the next forward."""
        self.visual_token_num = check_budget(visual_token_num)

    def get_pruning_method(self) -> PruningMethod:
        return self.pruning_method

    def set_pruning_method(self, method: str | PruningMethod, **params) -> None:
        """[FasterVLM] Choose how visual tokens are pruned: a registered name (``llava.pruning.available_methods()``)
        with its parameters, or a method instance. ``set_visual_token_num`` still sets the budget."""
        if isinstance(method, str):
            method = get_method(method, **params)
        elif params:
            raise ValueError("parameters go with a method name, not with a method instance")
        check_installed(method)
        self.pruning_method = method

    def select_crop_tokens(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """[FasterVLM] Run the vision tower on (B, 3, H, W) crops and let the pruning method pick each crop's own
        top-k.

        Returns the features (B, N, C) to gather from (a merging method rewrites the kept rows), the kept raster
        indices (B, k) and the head-mean [CLS] scores (B, N), None if the method needs no [CLS] attention.
        An in-LLM method keeps every patch here: it prunes inside the LLM.
        """
        method = self.get_pruning_method()
        outputs = self.get_vision_tower()(crops, request=method.tower_request)
        return self.select_tokens(outputs, self.get_model().config.mm_vision_select_feature == "patch")

    def select_tokens(self, tower, prunable: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """[FasterVLM] The pruning method's choice on a tower's outputs (``TowerOutputs``): features (B, N, C),
        kept raster indices (B, k) and head-mean [CLS] scores (B, N) or None. Keeps every patch without a budget
        or when the features are not patches only (``prunable`` False)."""
        # (B, N): unweighted head mean, in the image dtype as upstream
        scores = tower.cls_scores if tower.cls_attn is not None else None
        budget = self.visual_token_num
        if budget is None or not prunable:
            keep = torch.arange(tower.features.shape[1], device=tower.features.device)
            return tower.features, keep.expand(tower.features.shape[0], -1), scores
        features, keep = self.get_pruning_method().select_patches(tower, budget)
        return features, keep, scores

    def project_kept(self, features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, N, C) features, (B, k) kept indices → (B, k, D) projected tokens, on the projector's device."""
        # The projector is per-token, so projecting only the kept patches equals upstream's project-then-mask.
        kept = features.gather(1, keep.unsqueeze(-1).expand(-1, -1, features.shape[-1]))  # (B, k, C)
        return self.get_model().mm_projector(kept)  # (B, k, D)

    def encode_images(self, images: torch.Tensor) -> tuple[list[torch.Tensor], PruningInfo]:
        """[FasterVLM] (B, 3, H, W) → one (k, D) tensor per image, kept patches in raster order, and what was kept."""
        features, keep, scores = self.select_crop_tokens(images)
        info = PruningInfo(kept_indices=list(keep), crops_per_image=[1] * len(keep), cls_attn=scores,
                           token_sources=list(keep))
        return list(self.project_kept(features, keep)), info

    def encode_videos(self, videos: torch.Tensor) -> tuple[list[torch.Tensor], PruningInfo]:
        """[FasterVLM] Video-LLaVA: (B, 3, T, H, W) → B·T tensors (L, D), video after video, frame after frame.

        Each frame is a crop for the pruning method: it keeps its own L patches (L = ``visual_token_num``, None:
        all), FasterVLM's by the head mean of the video tower's spatial [CLS] attention, in raster order: 8·L
        tokens per 8-frame video, no cross-frame budget.
        """
        features, cls_attn = self.get_model().video_tower(videos)  # (B, T, N, C), (B, T, heads, N)
        check_video_method(self.get_pruning_method())
        # Every frame is a crop: (B·T, N, C) features, (B·T, heads, N) [CLS] attention.
        tower = TowerOutputs(features.flatten(0, 1), cls_attn.flatten(0, 1))
        features, keep, scores = self.select_tokens(tower)
        info = PruningInfo(kept_indices=list(keep), crops_per_image=[1] * len(keep), cls_attn=scores,
                           token_sources=list(keep))
        return list(self.project_kept(features, keep)), info

    def encode_video_llava_inputs(self, images) -> tuple[list[torch.Tensor], PruningInfo]:
        """[FasterVLM] Video-LLaVA's ``images``: a list of (3, H, W) images and (3, T, H, W) videos, a (B, 3, H, W)
        image batch or a (B, 3, T, H, W) video batch. Returns one (k, D) tensor per ``<image>`` placeholder, in
        order (T per video), and a :class:`PruningInfo` with one "crop" per placeholder: ``kept_indices`` (all
        patches for an image, the method's choice for a video frame) and ``cls_attn`` (placeholders, N), the
        head-mean [CLS] attention.
        """
        items = list(images)  # a 4-D batch iterates (3, H, W) images, a 5-D one (3, T, H, W) videos
        if any(x.ndim not in (3, 4) for x in items):
            raise ValueError("Video-LLaVA takes (3, H, W) images and (3, T, H, W) videos")
        inner = self.get_model()
        # Per item: its placeholders' projected features, kept indices and scores.
        per_item: list[tuple[list, list, list]] = [([], [], []) for _ in items]
        image_pos = [i for i, x in enumerate(items) if x.ndim == 3]
        video_pos = [i for i, x in enumerate(items) if x.ndim == 4]
        if image_pos:
            if inner.image_tower is None:
                raise ValueError("this checkpoint has no image tower (mm_image_tower)")
            features, cls_attn = inner.image_tower(torch.stack([items[i] for i in image_pos]))  # (B, N, C), (B, heads, N)
            all_patches = torch.arange(cls_attn.shape[-1], device=features.device)
            for i, projected, scores in zip(image_pos, inner.mm_projector(features), cls_attn.mean(dim=1)):
                per_item[i] = ([projected], [all_patches], [scores])
        if video_pos:
            frames, info = self.encode_videos(torch.stack([items[i] for i in video_pos]))  # B·T tensors (L, D)
            T = items[video_pos[0]].shape[1]
            for j, i in enumerate(video_pos):
                span = slice(j * T, (j + 1) * T)
                per_item[i] = (frames[span], info.kept_indices[span], list(info.cls_attn[span]))
        features, kept, scores = ([x for item in per_item for x in item[part]] for part in range(3))
        # Images and frames may sit on different devices (towers vs projector under device_map="auto").
        scores = [x.to(scores[0].device) for x in scores]
        return features, PruningInfo(kept_indices=kept, crops_per_image=[1] * len(kept), cls_attn=torch.stack(scores),
                                     token_sources=kept)

    def encode_anyres_images(self, images, image_sizes=None) -> tuple[list[torch.Tensor], PruningInfo]:
        """LLaVA-NeXT: (B, n, 3, H, W) or a list of (n_i, 3, H, W) crops → one (L_i, D) tensor per image, and what
        was kept.

        ``image_sizes``: the original ``(width, height)`` of each image, as ``PIL.Image.size`` gives it;
        the vanilla and released protocols need it for the grid shape, vanilla also for the unpadding.

        [FasterVLM] All crops go through the tower in one batch and each gets its own top-k
        (``visual_token_num`` per 336-px crop, base crop included). The ``paper`` protocol then merges
        them as FasterVLM was evaluated: always ``spatial`` (base tokens, then the stitched grid raster),
        whatever the config's ``mm_patch_merge_type``, on the fixed 2×2 grid. ``released`` merges the same
        way on the grid of the released code's fill-ratio rule. ``vanilla`` follows the config's merge type
        and LLaVA-NeXT's grid choice, pruning inside it (see ``anyres_token_sources``).
        """
        config = self.get_model().config
        images = [x.unsqueeze(0) if x.ndim == 3 else x for x in images]
        crops_per_image = [x.shape[0] for x in images]
        if config.mm_vision_select_feature != "patch" and max(crops_per_image) > 1:
            raise NotImplementedError("multi-crop (anyres) images need mm_vision_select_feature 'patch'")
        protocol = self.get_anyres_protocol()
        # [FasterVLM] upstream hard-coded 'spatial' here; paper and released keep that, vanilla honours the config.
        merge_type = get_mm_patch_merge_type(config) if protocol == "vanilla" else "spatial"
        if max(crops_per_image) > 1 and merge_type != "flat" and check_image_aspect_ratio(config) != "anyres":
            raise ValueError(f"multi-crop images need image_aspect_ratio 'anyres', "
                             f"not {getattr(config, 'image_aspect_ratio', None)!r}")
        if protocol != "paper" and merge_type != "flat" and image_sizes is None:
            raise ValueError("LLaVA-NeXT images need image_sizes (the original (width, height) of each image)")

        features, keep, scores = self.select_crop_tokens(torch.cat(images))  # (ΣN_i crops, N, C), (Σ, k), (Σ, N)
        tower = self.get_vision_tower()
        crop_px, N = tower.config.image_size, features.shape[1]
        keep_mask = torch.zeros(features.shape[:2], dtype=torch.bool, device=features.device).scatter_(1, keep, True)

        sources, start = [], 0
        for i, n in enumerate(crops_per_image):
            grid_shape = image_size = None
            if n > 1 and merge_type != "flat":
                # The paper protocol's single canvas needs no image size.
                image_size = tuple(int(v) for v in image_sizes[i]) if image_sizes is not None else None
                width, height = anyres_resolution(config, image_size, crop_px)
                grid_shape = (height // crop_px, width // crop_px)
            sources.append(anyres_token_sources(keep_mask[start:start + n], merge_type, grid_shape, image_size))
            start += n

        # Project only the tokens that enter the sequence (the projector is per-token), in one call.
        offsets = torch.tensor([0] + crops_per_image[:-1], device=features.device).cumsum(0) * N
        flat_features = features.flatten(0, 1)  # (Σ crops · N, C)
        patch_ids = torch.cat([src[src >= 0] + off for src, off in zip(sources, offsets)])
        projected = self.get_model().mm_projector(flat_features[patch_ids])  # (Σ kept, D)
        out, used = [], 0
        for src in sources:
            # On the projector's device: under device_map="auto" it may differ from the tower's and image_newline's.
            is_patch = (src >= 0).to(projected.device)
            tokens = projected.new_empty((src.shape[0], projected.shape[-1]))  # (L_i, D)
            count = int(is_patch.sum())
            tokens[is_patch] = projected[used:used + count]
            used += count
            if not is_patch.all():
                tokens[~is_patch] = self.get_model().image_newline.to(tokens.device, tokens.dtype)
            out.append(tokens)
        return out, PruningInfo(kept_indices=list(keep), crops_per_image=crops_per_image, cls_attn=scores,
                                token_sources=sources)

    def encode_multimodal(self, images, image_sizes=None) -> tuple[list[torch.Tensor], PruningInfo]:
        """The visual tokens of ``images`` (one (L_i, D) tensor per ``<image>`` placeholder) and what was kept."""
        if getattr(self.get_model(), "video_tower", None) is not None:  # [FasterVLM] Video-LLaVA
            return self.encode_video_llava_inputs(images)
        if isinstance(images, list) or images.ndim == 5:
            return self.encode_anyres_images(images, image_sizes)
        return self.encode_images(images)

    def has_visual_input(self, input_ids, images) -> bool:
        """Whether this call splices images: a multimodal model, images given, and a prompt (not a decode step)."""
        inner = self.get_model()
        multimodal = self.get_vision_tower() is not None or getattr(inner, "video_tower", None) is not None
        return multimodal and images is not None and input_ids.shape[1] != 1

    def splice(self, input_ids, attention_mask, labels, images, image_sizes=None, side: str | None = None) -> Splice:
        """Replace each ``IMAGE_TOKEN_INDEX`` by that image's (pruned) visual tokens.

        ``side``: where to pad the spliced batch, ``"left"`` (generation) or ``"right"``; by default the side the
        attention mask pads (:func:`padding_side`). Kept tokens get contiguous positions 0..L-1, exactly as if the
        pruned patches had never existed.
        """
        image_features, info = self.encode_multimodal(images, image_sizes)
        left = (side or padding_side(attention_mask)) == "left"
        attention_mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                          else attention_mask.bool())
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)

        embed_tokens = self.get_model().embed_tokens
        new_embeds, new_labels, visual_counts = [], [], []
        visual_spans = []  # [FasterVLM] (row, start, end) of each image in its unpadded sequence
        image_idx = 0
        for cur_ids, cur_labels, cur_mask in zip(input_ids, labels, attention_mask):
            cur_ids, cur_labels = cur_ids[cur_mask], cur_labels[cur_mask]  # drop padding
            image_pos = (cur_ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            bounds = [-1] + image_pos + [cur_ids.shape[0]]
            text_ids = torch.cat([cur_ids[bounds[i] + 1:bounds[i + 1]] for i in range(len(bounds) - 1)])
            text_embeds = embed_tokens(text_ids).split([bounds[i + 1] - bounds[i] - 1 for i in range(len(bounds) - 1)])
            pieces, piece_labels, count = [], [], 0
            for i, chunk in enumerate(text_embeds):
                pieces.append(chunk)
                piece_labels.append(cur_labels[bounds[i] + 1:bounds[i + 1]])
                if i < len(image_pos):
                    if image_idx >= len(image_features):
                        raise ValueError(f"the prompts hold more <image> placeholders than the {len(image_features)} images given")
                    # [FasterVLM] device too: under device_map="auto" the projector may sit on another GPU.
                    feats = image_features[image_idx].to(chunk.device, chunk.dtype)
                    image_idx += 1
                    start = sum(piece.shape[0] for piece in pieces)
                    visual_spans.append((len(new_embeds), start, start + feats.shape[0]))
                    pieces.append(feats)
                    piece_labels.append(torch.full((feats.shape[0],), IGNORE_INDEX, device=cur_labels.device,
                                                   dtype=cur_labels.dtype))
                    count += feats.shape[0]
            new_embeds.append(torch.cat(pieces))
            new_labels.append(torch.cat(piece_labels))
            visual_counts.append(count)
        if image_idx != len(image_features):
            raise ValueError(f"{len(image_features)} images were given but the prompts hold {image_idx} <image> placeholders")

        max_len = getattr(self.config, "tokenizer_model_max_length", None)
        if max_len is not None:
            new_embeds = [x[:max_len] for x in new_embeds]
            new_labels = [x[:max_len] for x in new_labels]

        batch, longest = len(new_embeds), max(x.shape[0] for x in new_embeds)
        hidden = new_embeds[0].shape[-1]
        embeds = new_embeds[0].new_zeros((batch, longest, hidden))
        out_labels = torch.full((batch, longest), IGNORE_INDEX, dtype=new_labels[0].dtype, device=new_labels[0].device)
        attention_mask = torch.zeros((batch, longest), dtype=attention_mask.dtype, device=attention_mask.device)
        position_ids = torch.zeros((batch, longest), dtype=torch.long, device=attention_mask.device)
        for i, (x, y) in enumerate(zip(new_embeds, new_labels)):
            n = x.shape[0]
            span = slice(longest - n, longest) if left else slice(0, n)
            embeds[i, span], out_labels[i, span], attention_mask[i, span] = x, y, True
            position_ids[i, span] = torch.arange(n, device=position_ids.device)
        # [FasterVLM] The spans in the padded batch: shifted by left padding, cut by the truncation above.
        lengths = [x.shape[0] for x in new_embeds]
        shifts = [longest - n if left else 0 for n in lengths]
        info.visual_tokens = visual_counts
        info.visual_spans = [(row, min(start, lengths[row]) + shifts[row], min(end, lengths[row]) + shifts[row])
                             for row, start, end in visual_spans]
        return Splice(embeds, attention_mask, position_ids, out_labels, info)

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels,
                                             images, image_sizes=None):
        """LLaVA's splice API: the 6-tuple ``(None, position_ids, attention_mask, past_key_values, inputs_embeds,
        labels)``, inputs unchanged when there is nothing to splice. [FasterVLM] Records ``last_pruning``; the
        model's own ``forward`` and ``generate`` call :meth:`splice`, which returns it instead."""
        if not self.has_visual_input(input_ids, images):
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        spliced = self.splice(input_ids, attention_mask, labels, images, image_sizes)
        self.last_pruning = spliced.pruning
        return (None,
                None if position_ids is None else spliced.position_ids,
                None if attention_mask is None else spliced.attention_mask.to(attention_mask.dtype),
                past_key_values,
                spliced.inputs_embeds,
                None if labels is None else spliced.labels)
