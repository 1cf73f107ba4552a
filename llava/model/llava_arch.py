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
from llava.pruning import InLLMPruningMethod, PruningMethod, get_method
from llava.pruning.base import select_topk_raster


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
    """Mixin for the causal LM: turns ``input_ids`` with ``IMAGE_TOKEN_INDEX`` placeholders into embeddings."""

    # [FasterVLM] None keeps every patch (vanilla LLaVA); an int keeps that many per image.
    visual_token_num: int | None = None
    last_pruning: PruningInfo | None = None
    # [FasterVLM] How the visual_token_num tokens are chosen (``llava.pruning``); FasterVLM unless set.
    pruning_method: PruningMethod = get_method("fastervlm")

    @abstractmethod
    def get_model(self):
        ...

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
        if visual_token_num is not None and (isinstance(visual_token_num, bool) or int(visual_token_num) != visual_token_num
                                             or visual_token_num < 0):
            raise ValueError(f"visual_token_num must be None or a non-negative integer, got {visual_token_num!r}")
        self.visual_token_num = None if visual_token_num is None else int(visual_token_num)

    def get_pruning_method(self) -> PruningMethod:
        return self.pruning_method

    def set_pruning_method(self, method: str | PruningMethod, **params) -> None:
        """[FasterVLM] Choose how visual tokens are pruned: a registered name (``llava.pruning.available_methods()``)
        with its parameters, or a method instance. ``set_visual_token_num`` still sets the budget."""
        if isinstance(method, str):
            method = get_method(method, **params)
        elif params:
            raise ValueError("parameters go with a method name, not with a method instance")
        if isinstance(method, InLLMPruningMethod):
            from llava.pruning.llm import check_supported

            check_supported()
        self.pruning_method = method

    def select_crop_tokens(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """[FasterVLM] Run the tower on (B, 3, H, W) crops and let the pruning method pick each crop's own top-k.

        Returns the features (B, N, C) to gather from (a merging method rewrites the kept rows), the kept raster
        indices (B, k) and the head-mean [CLS] scores (B, N), None if the method needs no [CLS] attention.
        An in-LLM method keeps every patch here: it prunes inside the LLM.
        """
        method = self.get_pruning_method()
        tower = self.get_vision_tower()(crops, request=method.tower_request)
        # (B, N): unweighted head mean, in the image dtype as upstream
        scores = tower.cls_scores if tower.cls_attn is not None else None
        k = self.visual_token_num
        if k is None or self.get_model().config.mm_vision_select_feature != "patch":
            keep = torch.arange(tower.features.shape[1], device=tower.features.device)
            return tower.features, keep.expand(tower.features.shape[0], -1), scores
        features, keep = method.select_patches(tower, k)
        return features, keep, scores

    def encode_images(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[FasterVLM] (B, 3, H, W) → one (k, D) tensor per image, kept patches in raster order."""
        features, keep, scores = self.select_crop_tokens(images)
        # The projector is per-token, so projecting only the kept patches equals upstream's project-then-mask.
        kept = features.gather(1, keep.unsqueeze(-1).expand(-1, -1, features.shape[-1]))  # (B, k, C)
        projected = self.get_model().mm_projector(kept)  # (B, k, D)
        self.last_pruning = PruningInfo(kept_indices=list(keep), crops_per_image=[1] * len(keep), cls_attn=scores,
                                        token_sources=list(keep))
        return list(projected)

    def encode_videos(self, videos: torch.Tensor) -> list[torch.Tensor]:
        """[FasterVLM] Video-LLaVA: (B, 3, T, H, W) → B·T tensors (L, D), video after video, frame after frame.

        Each frame keeps its own top-L patches (L = ``visual_token_num``, None: all) by the head mean of the
        video tower's spatial [CLS] attention, in raster order: 8·L tokens per 8-frame video, no cross-frame budget.
        """
        features, cls_attn = self.get_model().video_tower(videos)  # (B, T, N, C), (B, T, heads, N)
        features = features.flatten(0, 1)  # (B·T, N, C)
        scores = cls_attn.mean(dim=2).flatten(0, 1)  # (B·T, N): unweighted head mean, in the video dtype as upstream
        k = self.visual_token_num
        keep = (torch.arange(features.shape[1], device=features.device).expand(features.shape[0], -1) if k is None
                else select_topk_raster(scores, k))  # (B·T, L)
        kept = features.gather(1, keep.unsqueeze(-1).expand(-1, -1, features.shape[-1]))  # (B·T, L, C)
        self.last_pruning = PruningInfo(kept_indices=list(keep), crops_per_image=[1] * len(keep), cls_attn=scores,
                                        token_sources=list(keep))
        return list(self.get_model().mm_projector(kept))

    def encode_anyres_images(self, images, image_sizes=None) -> list[torch.Tensor]:
        """LLaVA-NeXT: (B, n, 3, H, W) or a list of (n_i, 3, H, W) crops → one (L_i, D) tensor per image.

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
            is_patch = src >= 0
            tokens = projected.new_empty((src.shape[0], projected.shape[-1]))  # (L_i, D)
            count = int(is_patch.sum())
            tokens[is_patch] = projected[used:used + count]
            used += count
            if not is_patch.all():
                tokens[~is_patch] = self.get_model().image_newline.to(tokens.dtype)
            out.append(tokens)
        self.last_pruning = PruningInfo(kept_indices=list(keep), crops_per_image=crops_per_image, cls_attn=scores,
                                        token_sources=sources)
        return out

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels,
                                             images, image_sizes=None):
        """Replace each ``IMAGE_TOKEN_INDEX`` by that image's (pruned) visual tokens.

        Returns LLaVA's 6-tuple ``(None, position_ids, attention_mask, past_key_values, inputs_embeds, labels)``.
        Kept tokens get contiguous positions 0..L-1, exactly as if the pruned patches had never existed.
        """
        vision_tower = self.get_vision_tower()
        video_llava = getattr(self.get_model(), "video_tower", None) is not None  # [FasterVLM] Video-LLaVA
        if (vision_tower is None and not video_llava) or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        if video_llava:
            from llava.model.video_llava import encode_video_llava_inputs  # a function-level import: it imports this module

            image_features = encode_video_llava_inputs(self, images)
        elif isinstance(images, list) or images.ndim == 5:
            image_features = self.encode_anyres_images(images, image_sizes)
        else:
            image_features = self.encode_images(images)

        _labels, _position_ids, _attention_mask = labels, position_ids, attention_mask
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            attention_mask = attention_mask.bool()
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
                    feats = image_features[image_idx].to(chunk.dtype)
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
        self.last_pruning.visual_tokens = visual_counts

        max_len = getattr(self.config, "tokenizer_model_max_length", None)
        if max_len is not None:
            new_embeds = [x[:max_len] for x in new_embeds]
            new_labels = [x[:max_len] for x in new_labels]

        # Re-pad on the side the tokenizer pads (left for batched generation).
        left = getattr(self.config, "tokenizer_padding_side", "right") == "left"
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
        self.last_pruning.visual_spans = [
            (row, min(start, lengths[row]) + shifts[row], min(end, lengths[row]) + shifts[row])
            for row, start, end in visual_spans]

        return (None,
                None if _position_ids is None else position_ids,
                None if _attention_mask is None else attention_mask.to(_attention_mask.dtype),
                past_key_values,
                embeds,
                None if _labels is None else out_labels)
