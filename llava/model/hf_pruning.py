"""[FasterVLM] Visual token pruning inside transformers' own ``LlavaForConditionalGeneration`` and
``LlavaNextForConditionalGeneration``, for users who stay in transformers::

    model = LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf")
    processor = AutoProcessor.from_pretrained("llava-hf/llava-1.5-7b-hf")
    apply_fastervlm(model, visual_token_num=58, processor=processor)
    out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"), max_new_tokens=32)

:func:`apply_fastervlm` replaces the model's ``get_image_features`` (the step from pixels to the projected visual
tokens that ``forward``, and so ``generate``, splices into the image placeholders) by this project's: the tower runs
up to the selected layer with [CLS] attention (``clip_tower_outputs``), the pruning method keeps ``visual_token_num``
patches per crop in raster order, and only those are projected. It sets the processor's image-token count to match.

LLaVA-NeXT runs the paper protocol (``llava.mm_utils.ANYRES_PROTOCOLS``): the fixed 2×2 grid (5 crops per image)
merged ``spatial`` without unpadding or ``image_newline``, 5 × ``visual_token_num`` tokens per image. LLaVA-NeXT's own
merge cannot be pruned this way: its token count would depend on which patches were kept, while the processor
must write it before the model runs. transformers' processors also differ from the original pipeline (LLaVA-1.5's
is not padded to a square unless its ``do_pad`` is set); for the original protocol load the checkpoint with
``load_pretrained_model``.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from llava.model.llava_arch import PruningInfo, anyres_token_sources
from llava.model.multimodal_encoder.clip_encoder import clip_tower_outputs
from llava.pruning import InLLMPruningMethod, PruningMethod, get_method

_GRID = (2, 2)  # the paper protocol's LLaVA-NeXT grid: rows × columns of crops
_SUPPORTED = ("llava", "llava_next")


@dataclass
class AppliedPruning:
    """What :func:`apply_fastervlm` changed, kept as ``model.fastervlm`` so that :func:`remove_fastervlm` can undo it.

    ``config``: the model config's values before (``image_grid_pinpoints`` for LLaVA-NeXT). ``processor`` and
    ``processor_attrs``: the processor changed in place, if any, with its attributes' values before (``None``: the
    attribute was the class's own).
    """

    method: PruningMethod
    visual_token_num: int
    crops: int
    config: dict[str, Any] = field(default_factory=dict)
    processor: Any = None
    processor_attrs: dict[tuple[str, ...], Any] = field(default_factory=dict)


def apply_fastervlm(model, visual_token_num: int, processor=None, pruning_method: str = "fastervlm", **params):
    """Make transformers' Llava / LlavaNext ``model`` keep ``visual_token_num`` patches per image (per 336-px crop for
    LLaVA-NeXT, 5 crops per image), chosen by ``pruning_method`` (FasterVLM by default, or another method of
    ``llava.pruning`` that prunes before the LLM, with ``params``), inside its own ``forward`` and ``generate``.

    ``processor``: the model's ``LlavaProcessor`` / ``LlavaNextProcessor``, changed in place to write the matching
    number of image tokens (and, for LLaVA-NeXT, to cut every image on the 2×2 grid); returned for convenience.
    After each forward with images, ``model.last_pruning`` holds a :class:`PruningInfo` with ``kept_indices`` (one
    (k,) tensor per crop), ``crops_per_image``, ``cls_attn`` (crops, N) and ``token_sources`` (per image).
    Without ``processor``, prompts must carry ``crops · visual_token_num`` image tokens per image themselves; a
    forward whose prompt has another count fails with an error that says so. :func:`remove_fastervlm` undoes it.
    """
    config = model.config
    model_type = config.model_type
    inner = getattr(model, "model", None)
    if model_type not in _SUPPORTED or not hasattr(inner, "vision_tower"):
        raise NotImplementedError(f"apply_fastervlm supports transformers' LlavaForConditionalGeneration and "
                                  f"LlavaNextForConditionalGeneration, not {type(model).__name__} ({model_type!r}); "
                                  "for Video-LLaVA load the checkpoint with llava.model.builder.load_pretrained_model")
    vision = config.vision_config
    if vision.model_type != "clip_vision_model" or not isinstance(config.vision_feature_layer, int):
        raise NotImplementedError("apply_fastervlm needs a CLIP tower and a single vision_feature_layer")
    if config.vision_feature_select_strategy != "default":
        raise NotImplementedError(f"vision_feature_select_strategy {config.vision_feature_select_strategy!r}: FasterVLM "
                                  "prunes patch tokens only ('default', which drops [CLS])")
    patches = (vision.image_size // vision.patch_size) ** 2
    if isinstance(visual_token_num, bool) or not isinstance(visual_token_num, int) or not 0 <= visual_token_num <= patches:
        raise ValueError(f"visual_token_num must be an integer in [0, {patches}] (patches per crop), got {visual_token_num!r}")
    method = get_method(pruning_method, **params)
    if isinstance(method, InLLMPruningMethod):
        raise NotImplementedError(f"pruning method {method.name!r} prunes inside the LLM; apply_fastervlm takes the "
                                  "methods that prune before it")
    if getattr(model, "fastervlm", None) is not None:
        remove_fastervlm(model)  # applying again replaces the earlier budget and method
    crops = 1 + _GRID[0] * _GRID[1] if model_type == "llava_next" else 1
    applied = AppliedPruning(method, visual_token_num, crops)
    if model_type == "llava_next":
        side = vision.image_size
        applied.config["image_grid_pinpoints"] = config.image_grid_pinpoints
        config.image_grid_pinpoints = [[_GRID[0] * side, _GRID[1] * side]]  # transformers' own crop count follows
    inner.get_image_features = types.MethodType(_pruned_image_features(model, method, visual_token_num, crops), inner)
    if hasattr(inner, "get_placeholder_mask"):
        inner.get_placeholder_mask = types.MethodType(_checked_placeholder_mask(visual_token_num, crops), inner)
    if processor is not None:
        applied.processor = processor
        applied.processor_attrs = _set_image_tokens(processor, model_type, visual_token_num, crops, vision.image_size)
    model.fastervlm = applied
    return processor


def remove_fastervlm(model) -> None:
    """Undo :func:`apply_fastervlm`: the model's own ``get_image_features``, config and processor come back."""
    applied = getattr(model, "fastervlm", None)
    if applied is None:
        raise ValueError("remove_fastervlm: apply_fastervlm was not applied to this model")
    inner = model.model
    for name in ("get_image_features", "get_placeholder_mask"):
        inner.__dict__.pop(name, None)  # the instance overrides; the class's methods show through again
    for key, value in applied.config.items():
        setattr(model.config, key, value)
    for path, value in applied.processor_attrs.items():
        owner = applied.processor
        for name in path[:-1]:
            owner = getattr(owner, name)
        if value is None:
            owner.__dict__.pop(path[-1], None)
        else:
            setattr(owner, path[-1], value)
    model.fastervlm = None
    model.last_pruning = None


def _checked_placeholder_mask(k: int, crops: int):
    """transformers' ``get_placeholder_mask`` after a check that names the cause of a token/feature mismatch (its
    own message counts features times their width)."""

    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features):
        if input_ids is not None:
            tokens = int((input_ids == self.config.image_token_id).sum())
            features = image_features.numel() // inputs_embeds.shape[-1]
            if tokens != features:
                raise ValueError(f"the prompt holds {tokens} image tokens, but apply_fastervlm keeps {features} visual "
                                 f"tokens ({crops} × {k} per image): pass processor= to apply_fastervlm, which then "
                                 f"writes {crops * k} image tokens per image, or build input_ids with that many")
        return type(self).get_placeholder_mask(self, input_ids, inputs_embeds, image_features)

    return get_placeholder_mask


def _pruned_image_features(model, method: PruningMethod, k: int, crops: int):
    """The replacement of ``LlavaModel.get_image_features`` / ``LlavaNextModel.get_image_features``."""

    def get_image_features(self, pixel_values: torch.Tensor, image_sizes=None, vision_feature_layer=None,
                           vision_feature_select_strategy=None, **kwargs):
        """``pixel_values``: (B, 3, H, W), or for LLaVA-NeXT (B, 5, 3, H, W) / (B·5, 3, H, W). Returns one (L_i, D)
        tensor per image (L_i = k, or 5k for LLaVA-NeXT), as transformers' own method returns them: wrapped in
        ``pooler_output`` when the caller asks for ``return_dict`` (transformers 5), a plain list before."""
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        images = pixel_values.flatten(0, 1) if pixel_values.ndim == 5 else pixel_values  # (B·crops, 3, H, W)
        if images.shape[0] % crops or (pixel_values.ndim == 5 and pixel_values.shape[1] != crops):
            raise ValueError(f"LLaVA-NeXT under apply_fastervlm takes {crops} crops per image (the 2×2 grid), got "
                             f"pixel_values of shape {tuple(pixel_values.shape)}; use the processor apply_fastervlm set up")
        tower_model = self.vision_tower
        tower = clip_tower_outputs(tower_model, images.to(tower_model.dtype), layer, "patch", method.tower_request)
        features, keep = method.select_patches(tower, k)  # (B·crops, N, C), (B·crops, k)
        n = features.shape[1]
        keep_mask = torch.zeros(features.shape[:2], dtype=torch.bool, device=features.device).scatter_(1, keep, True)
        # Per image, the sequence order of its kept patches among its crops · N: raster order, and for LLaVA-NeXT
        # the base crop, then the 2×2 grid stitched into one raster (``spatial``).
        sources = [anyres_token_sources(mask, "spatial", _GRID) for mask in keep_mask.view(-1, crops, n)]
        flat = features.reshape(-1, crops * n, features.shape[-1])  # (B, crops·N, C)
        # The LLM's compute dtype (that of its input embeddings), not the projector's weights: under bitsandbytes
        # those are int8/uint8, and a cast to them would truncate the features to integers.
        dtype = self.get_input_embeddings().weight.dtype
        image_features = [self.multi_modal_projector(f[src].to(dtype)) for f, src in zip(flat, sources)]
        model.last_pruning = PruningInfo(kept_indices=list(keep), crops_per_image=[crops] * len(sources),
                                         cls_attn=tower.cls_scores if tower.cls_attn is not None else None,
                                         token_sources=sources)
        if kwargs.get("return_dict"):
            return BaseModelOutputWithPooling(pooler_output=image_features)
        return image_features

    return get_image_features


def _set_image_tokens(processor, model_type: str, k: int, crops: int, crop_size: int) -> dict[tuple[str, ...], Any]:
    """Make ``processor`` write ``crops · k`` image tokens per image (and cut LLaVA-NeXT images on the 2×2 grid).
    Returns the changed attributes' paths and values before (``None``: the class's own).

    Both processors add ``num_additional_image_tokens`` and drop one token for the ``default`` strategy, in their
    own arithmetic: LlavaProcessor's count is (H/p)·(W/p) + num_additional_image_tokens − 1, so that attribute
    absorbs the difference; LlavaNextProcessor's comes from ``_get_number_of_features``, replaced here.
    """
    cls_token = 1 if processor.vision_feature_select_strategy == "default" else 0
    if model_type == "llava":
        size = processor.image_processor.crop_size
        patches = (size["height"] // processor.patch_size) * (size["width"] // processor.patch_size)
        before = {("num_additional_image_tokens",): processor.num_additional_image_tokens}
        processor.num_additional_image_tokens = k - patches + cls_token
        return before
    before = {("image_processor", "image_grid_pinpoints"): processor.image_processor.image_grid_pinpoints,
              ("_get_number_of_features",): vars(processor).get("_get_number_of_features")}
    processor.image_processor.image_grid_pinpoints = [[_GRID[0] * crop_size, _GRID[1] * crop_size]]
    processor._get_number_of_features = lambda *sizes: crops * k + cls_token
    return before
