"""LLaVA's multimodal glue: vision tower → [FasterVLM] token selection → projector → spliced input embeddings."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_projector.builder import build_vision_projector


class LlavaMetaModel:
    """Mixin for the LLM backbone (``model.*`` keys): owns ``vision_tower`` and ``mm_projector``."""

    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "mm_vision_tower", None):
            self.vision_tower = build_vision_tower(config, delay_load=True,
                                                   base_dir=getattr(config, "_name_or_path", None) or None)
            self.mm_projector = build_vision_projector(config)

    def get_vision_tower(self):
        return getattr(self, "vision_tower", None)


@dataclass
class PruningInfo:
    """[FasterVLM] What the last multimodal forward kept, for scripts and analyses.

    ``kept_indices[i]``: raster indices (ascending) of the patches kept for image ``i`` of the batch.
    ``cls_attn``: (num_images, N) head-mean [CLS] attention before pruning.
    ``visual_tokens``: visual tokens spliced into each sequence of the batch.
    """

    kept_indices: list[torch.Tensor] = field(default_factory=list)
    cls_attn: torch.Tensor | None = None
    visual_tokens: list[int] = field(default_factory=list)


def select_topk_raster(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[FasterVLM] Indices of the ``k`` highest ``scores`` per row, returned in ascending (raster) order.

    ``scores``: (B, N) → (B, k). Sorting restores the original spatial order of the kept patches.
    """
    n = scores.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"visual_token_num={k} is out of range: the vision tower yields {n} patches per image")
    return scores.topk(k, dim=-1).indices.sort(dim=-1).values


class LlavaMetaForCausalLM(ABC):
    """Mixin for the causal LM: turns ``input_ids`` with ``IMAGE_TOKEN_INDEX`` placeholders into embeddings."""

    # [FasterVLM] None keeps every patch (vanilla LLaVA); an int keeps that many per image.
    visual_token_num: int | None = None
    last_pruning: PruningInfo | None = None

    @abstractmethod
    def get_model(self):
        ...

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def get_visual_token_num(self) -> int | None:
        return self.visual_token_num

    def set_visual_token_num(self, visual_token_num: int | None) -> None:
        """[FasterVLM] Set the per-image budget; checked against the patch count at the next forward."""
        if visual_token_num is not None and (isinstance(visual_token_num, bool) or int(visual_token_num) != visual_token_num
                                             or visual_token_num < 0):
            raise ValueError(f"visual_token_num must be None or a non-negative integer, got {visual_token_num!r}")
        self.visual_token_num = None if visual_token_num is None else int(visual_token_num)

    def encode_images(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[FasterVLM] (B, 3, H, W) → one (k, D) tensor per image, kept patches in raster order."""
        features, cls_attn = self.get_vision_tower()(images)  # (B, N, C), (B, heads, N)
        scores = cls_attn.mean(dim=1)  # (B, N): unweighted head mean, in the image dtype as upstream
        k = self.visual_token_num
        if k is None or self.get_model().config.mm_vision_select_feature != "patch":
            keep = torch.arange(features.shape[1], device=features.device).expand(features.shape[0], -1)
        else:
            keep = select_topk_raster(scores, k)
        # The projector is per-token, so projecting only the kept patches equals upstream's project-then-mask.
        kept = features.gather(1, keep.unsqueeze(-1).expand(-1, -1, features.shape[-1]))  # (B, k, C)
        projected = self.get_model().mm_projector(kept)  # (B, k, D)
        self.last_pruning = PruningInfo(kept_indices=list(keep), cls_attn=scores)
        return list(projected)

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels,
                                             images, image_sizes=None):
        """Replace each ``IMAGE_TOKEN_INDEX`` by that image's (pruned) visual tokens.

        Returns LLaVA's 6-tuple ``(None, position_ids, attention_mask, past_key_values, inputs_embeds, labels)``.
        Kept tokens get contiguous positions 0..L-1, exactly as if the pruned patches had never existed.
        """
        vision_tower = self.get_vision_tower()
        if vision_tower is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        if isinstance(images, list) or images.ndim == 5:
            raise NotImplementedError("multi-crop (anyres) images need the LLaVA-NeXT path")
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

        return (None,
                None if _position_ids is None else position_ids,
                None if _attention_mask is None else attention_mask.to(_attention_mask.dtype),
                past_key_values,
                embeds,
                None if _labels is None else out_labels)
