"""[FasterVLM] Transformers-format checkpoints (llava-hf) loaded onto this project's LLaVA modules.

transformers' ``LlavaForConditionalGeneration`` (LLaVA-1.5), ``LlavaNextForConditionalGeneration`` (LLaVA-NeXT) and
``VideoLlavaForConditionalGeneration`` (Video-LLaVA) hold the same weights as the original liuhaotian /
LanguageBind checkpoints under other names, with the tower and preprocessing described in the checkpoint's own
``config.json`` (``text_config``, ``vision_config``) and image processor config. This module

- translates such a config into the original layout's (:func:`original_config`): what ``read_model_config``
  returns for these folders, so the loader, the CLIs' run manifests and Video-LLaVA detection see one layout;
- renames the weights onto ``LlavaLlamaForCausalLM``'s modules while ``from_pretrained`` reads them
  (:data:`KEY_MAPPING`, :func:`load_llava_hf`): no second copy on disk.

Preprocessing follows the original pipeline, not transformers' processors: LLaVA-1.5 pads to a square
(``image_aspect_ratio: pad``, which llava-hf's own processor skips by default), LLaVA-NeXT uses this project's
anyres protocols, Video-LLaVA the LanguageBind transforms; only sizes and normalisation come from the checkpoint.
LLaVA-1.5's tower runs in fp32, as the original layout loads it (``load_pretrained_model``).
The other direction, FasterVLM inside transformers' own models, is ``llava.model.hf_pruning.apply_fastervlm``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from llava.errors import InputError
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.model.weights import checkpoint_files, read_prefixed

# transformers' model_type → the class that writes such a checkpoint.
HF_ARCHITECTURES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
                    "video_llava": "VideoLlavaForConditionalGeneration"}

# Checkpoint key (as transformers 4.x and 5.x save them, and as llava-hf on the hub stores them) → this project's
# key. The patterns exclude each other and no output matches any of them, so transformers 4.x (first match wins)
# and 5.x (every match applies, in turn) rename alike. The tower keys are nested (``vision_model.``) as 4.x's
# CLIPVisionModel names them; 5.x, whose CLIPVisionModel is flat, strips that level itself.
KEY_MAPPING = {
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^multi_modal_projector\.linear_1\.": "model.mm_projector.0.",
    r"^multi_modal_projector\.linear_2\.": "model.mm_projector.2.",
    r"^image_newline$": "model.image_newline",
    r"^vision_tower\.(vision_model\.)?": "model.vision_tower.vision_tower.vision_model.",
    r"^image_tower\.(vision_model\.)?": "model.image_tower.image_tower.",
    r"^video_tower\.(vision_model\.)?": "model.video_tower.video_tower.",
}

# The image processor fields the original pipeline reads (``llava.mm_utils.process_images``); the rest of a
# LlavaImageProcessor / LlavaNextImageProcessor config (do_pad, image_grid_pinpoints, ...) is transformers' own
# preprocessing, which ours replaces.
_PROCESSOR_FIELDS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                     "do_normalize", "image_mean", "image_std", "do_convert_rgb")
# The released original-layout configs truncate the spliced sequence at these lengths (tokenizer_model_max_length).
_MAX_LENGTH = {"llava": 2048, "llava_next": 4096}


def is_hf_config(cfg: dict) -> bool:
    """True for a config.json written by transformers' Llava / LlavaNext / VideoLlava classes."""
    return (cfg.get("model_type") in HF_ARCHITECTURES and ("text_config" in cfg or "vision_config" in cfg)
            and not cfg.get("mm_vision_tower") and not cfg.get("mm_video_tower"))


def stored_tower_state(model_path: str | os.PathLike, prefix: str) -> dict:
    """[FasterVLM] A llava-hf LLaVA-1.5 checkpoint's CLIP tower as stored, its keys under ``prefix`` (the module's
    own: ``vision_model.`` or none, by transformers release).

    ``from_pretrained`` loads every weight in the LLM's dtype; the tower runs in fp32 (as the original layout loads
    it), and upcasting the loaded copy would keep the rounding: in bf16, fp16-stored weights lose 3 mantissa bits.
    """
    state = read_prefixed(checkpoint_files(model_path, "vision_tower."), "vision_tower.")
    return {prefix + k.removeprefix("vision_model."): v for k, v in state.items() if not k.endswith("position_ids")}


def is_hf_checkpoint(model_path: str | os.PathLike) -> bool:
    """True for a checkpoint folder whose ``config.json`` is transformers' (:func:`is_hf_config`)."""
    path = Path(model_path) / "config.json"
    return path.is_file() and is_hf_config(json.loads(path.read_text(encoding="utf-8")))


def read_image_processor_config(model_path: str | os.PathLike) -> dict:
    """The checkpoint's image processor settings: ``preprocessor_config.json`` (transformers 4.x) or the
    ``image_processor`` entry of ``processor_config.json`` (transformers 5)."""
    folder = Path(model_path)
    pre, proc = folder / "preprocessor_config.json", folder / "processor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text(encoding="utf-8"))
    elif proc.is_file() and "image_processor" in json.loads(proc.read_text(encoding="utf-8")):
        cfg = json.loads(proc.read_text(encoding="utf-8"))["image_processor"]
    else:
        raise InputError(f"{folder}: no preprocessor_config.json (nor processor_config.json with an image_processor); "
                         "a transformers-format checkpoint needs its processor: processor.save_pretrained(folder)")
    return {k: v for k, v in cfg.items() if k in _PROCESSOR_FIELDS}


def original_config(model_path: str | os.PathLike, cfg: dict, image_processor: bool = True) -> dict:
    """The original-layout ``config.json`` of a transformers-format checkpoint (``cfg``: its own ``config.json``).

    The LLM's fields come from ``text_config``; the tower is described by ``mm_vision_config`` (the full
    ``vision_config``) and, for LLaVA-1.5 / NeXT, ``mm_image_processor`` (read from the folder unless
    ``image_processor`` is False, for readers of the shapes only); ``hf_model_type`` records the source.
    Unsupported variants (non-LLaMA LLMs, non-CLIP towers, other projectors, multi-layer features) are errors
    naming the file.
    """
    from transformers import LlavaConfig, LlavaNextConfig, VideoLlavaConfig

    path = Path(model_path) / "config.json"
    model_type = cfg.get("model_type")
    if model_type not in HF_ARCHITECTURES:
        raise InputError(f"{path}: model_type {model_type!r} is not one of transformers' LLaVA models ({', '.join(HF_ARCHITECTURES)})")
    hf = {"llava": LlavaConfig, "llava_next": LlavaNextConfig, "video_llava": VideoLlavaConfig}[model_type].from_dict(cfg)
    text, vision = hf.text_config, hf.vision_config
    if text.model_type != "llama":
        raise NotImplementedError(f"{path}: text_config.model_type {text.model_type!r} is not supported (LLaMA-based "
                                  "checkpoints only: llava-1.5-*-hf, llava-v1.6-vicuna-*-hf, Video-LLaVA-7B-hf)")
    if vision.model_type != "clip_vision_model":
        raise NotImplementedError(f"{path}: vision_config.model_type {vision.model_type!r} is not supported (CLIP only)")
    if not isinstance(hf.vision_feature_layer, int):
        raise NotImplementedError(f"{path}: vision_feature_layer {hf.vision_feature_layer!r}: features of several "
                                  "layers are not supported")
    if hf.projector_hidden_act != "gelu" or not getattr(hf, "multimodal_projector_bias", True):
        raise NotImplementedError(f"{path}: only LLaVA's projector (two biased linear layers around a GELU) is supported")
    strategy = hf.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise InputError(f"{path}: unknown vision_feature_select_strategy {strategy!r}")
    vision_dict = vision.to_dict()
    llm = {k: v for k, v in text.to_dict().items()
           if k not in ("architectures", "model_type", "_name_or_path", "transformers_version", "dtype", "torch_dtype")}
    out = {
        **llm, "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hf_model_type": model_type,
        "tie_word_embeddings": cfg.get("tie_word_embeddings", text.tie_word_embeddings),
        "mm_vision_config": vision_dict, "mm_hidden_size": vision.hidden_size, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": hf.vision_feature_layer,
        "mm_vision_select_feature": "patch" if strategy == "default" else "cls_patch",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": "pad",
        "mm_patch_merge_type": "flat", "unfreeze_mm_vision_tower": True, "tokenizer_padding_side": "right",
    }
    if model_type in _MAX_LENGTH:
        out["tokenizer_model_max_length"] = _MAX_LENGTH[model_type]
    if model_type == "video_llava":  # both LanguageBind towers take their shape from mm_vision_config
        out.update(mm_image_tower=str(model_path), mm_video_tower=str(model_path))
    else:
        out["mm_vision_tower"] = str(model_path)
        if image_processor:
            out["mm_image_processor"] = read_image_processor_config(model_path)
    if model_type == "llava_next":
        # transformers' pinpoints are (height, width), LLaVA's (width, height); transformers always unpads and
        # appends image_newline, LLaVA-NeXT's spatial_unpad.
        out.update(image_aspect_ratio="anyres", image_grid_pinpoints=[[w, h] for h, w in hf.image_grid_pinpoints],
                   mm_patch_merge_type="spatial_unpad")
    return out


class _LoadingLlavaLlama(LlavaLlamaForCausalLM):
    """``LlavaLlamaForCausalLM`` as :func:`load_llava_hf` loads it. No key of a llava-hf checkpoint starts with the
    base-model prefix ``model``, so transformers 4.x would prepend ``model.`` to every renamed key; an empty prefix
    turns that guess off."""

    base_model_prefix = ""


def load_llava_hf(model_path, config, load_kwargs: dict) -> LlavaLlamaForCausalLM:
    """``LlavaLlamaForCausalLM`` with a transformers-format checkpoint's weights renamed as they load
    (:data:`KEY_MAPPING`). ``config``: a ``LlavaConfig`` from :func:`original_config`. A weight that has no
    place, or a place left empty, is an error naming the checkpoint."""
    model, info = _LoadingLlavaLlama.from_pretrained(model_path, config=config, key_mapping=KEY_MAPPING,
                                                     output_loading_info=True, **load_kwargs)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(info["missing_keys"]) - tied)
    unexpected = [k for k in info["unexpected_keys"] if not k.endswith("position_ids")]
    if missing or unexpected:
        raise InputError(f"{model_path}: not a complete {config.hf_model_type} checkpoint: {len(missing)} weights "
                         f"missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    model.__class__ = LlavaLlamaForCausalLM  # the loading subclass differs only in its base_model_prefix
    # transformers 5 records the renamings to undo them in save_pretrained; a saved model keeps this layout instead.
    conversions = getattr(model, "_weight_conversions", None)
    if conversions is not None:
        model._weight_conversions = [c for c in conversions if not set(c.source_patterns) <= set(KEY_MAPPING)]
    return model
