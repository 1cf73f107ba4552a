"""[FasterVLM] Video-LLaVA (``LanguageBind/Video-LLaVA-7B``) on the LLaVA model class: loading and mixed image/video input.

A Video-LLaVA checkpoint is a LLaVA-LLaMA checkpoint whose config names ``mm_image_tower`` and
``mm_video_tower`` (LanguageBind towers, see ``multimodal_encoder/languagebind.py``) instead of
``mm_vision_tower``. ``LlavaMetaModel`` builds both towers from those keys; this module loads such a
checkpoint and turns Video-LLaVA's ``images`` argument (images and videos mixed) into one feature
tensor per ``<image>`` placeholder: one per image (all patches, never pruned) and one per video
frame (``encode_videos``: the pruning method's L patches of that frame, FasterVLM's by [CLS] attention). A video
fills as many consecutive placeholders as it has frames, so the prompt holds eight ``<image>`` per video.

The encoder itself is ``LlavaMetaForCausalLM.encode_video_llava_inputs`` (beside the image encoders); the config
readers live in ``llava.model.checkpoint`` and are re-exported here under their old names.
"""
from __future__ import annotations

import warnings

from llava.model.checkpoint import (is_video_llava, llm_load_kwargs, load_llava_llama, patches_per_frame,
                                    place_model, read_video_llava_config, video_tower_config)
from llava.model.llava_arch import check_video_method
from llava.model.multimodal_encoder.clip_encoder import check_cls_attn_arithmetic
from llava.pruning import get_method
from llava.pruning.base import PruningMethod, check_budget
from llava.video_utils import VideoProcessor

__all__ = ["is_video_llava", "load_video_llava", "patches_per_frame",
           "read_video_llava_config", "video_tower_config"]


def load_video_llava(model_path, model_base=None, load_8bit=False, load_4bit=False, device_map="auto", device="cuda",
                     use_flash_attn=False, visual_token_num=None, pruning_method: str | PruningMethod = "fastervlm",
                     **kwargs):
    """Load a Video-LLaVA checkpoint: ``(tokenizer, model, {"image": ..., "video": ...}, context_len)``.

    The processor dict mirrors upstream's: ``"image"`` a CLIP image processor, ``"video"`` a
    :class:`llava.video_utils.VideoProcessor` (path → (3, T, 224, 224)).
    ``visual_token_num`` [FasterVLM]: patches kept per video frame, 0..256 (None keeps all 256), chosen by
    ``pruning_method`` (a name or an instance; the towers give [CLS] attention, not keys or patch attention).
    ``torch_dtype``/``dtype``: the LLM's dtype (fp16 on CUDA, fp32 on CPU by default).
    ``vision_tower_dtype``: both towers' dtype; by default the LLM's, as upstream casts both towers to fp16.
    ``cls_attn_arithmetic`` [FasterVLM]: ``"fp32"`` (default) or ``"upstream"`` (upstream's eager fp16 attention
    arithmetic in both towers; ``clip_encoder``'s docstring), stored as ``model.config.cls_attn_arithmetic``.
    ``attn_implementation``: the LLM's attention (``sdpa`` by default; ``use_flash_attn`` picks FlashAttention 2).
    Tower weights: ``languagebind._LanguageBindTower.load_weights`` (the LanguageBind repositories, as upstream;
    the checkpoint's embedded copy only as a fallback, with a warning); ``weights_source`` on each tower says which.
    """
    if model_base is not None:
        raise NotImplementedError(f"--model-base {model_base}: LoRA / projector-only Video-LLaVA checkpoints are not supported")
    if load_8bit or load_4bit:
        raise NotImplementedError("quantised loading is not supported for Video-LLaVA")
    cfg_dict = read_video_llava_config(model_path)
    if cfg_dict is None:
        raise ValueError(f"{model_path}: not a Video-LLaVA checkpoint (no mm_video_tower)")
    if cfg_dict.get("mm_use_im_start_end") or cfg_dict.get("mm_use_im_patch_token"):
        raise NotImplementedError(f"{model_path}: mm_use_im_start_end / mm_use_im_patch_token are not supported "
                                  "(Video-LLaVA-7B sets both false)")
    check_budget(visual_token_num, patches_per_frame(model_path), unit="video frame")
    method = pruning_method if isinstance(pruning_method, PruningMethod) else get_method(pruning_method)
    check_video_method(method)

    dtype, load_kwargs = llm_load_kwargs(device, device_map, use_flash_attn, kwargs)
    tower_dtype = kwargs.pop("vision_tower_dtype", None) or dtype
    arithmetic = check_cls_attn_arithmetic(kwargs.pop("cls_attn_arithmetic", None))
    if kwargs:
        warnings.warn(f"load_video_llava ignores unknown arguments: {sorted(kwargs)}")

    tokenizer, model, missing = load_llava_llama(model_path, cfg_dict, load_kwargs, cls_attn_arithmetic=arithmetic)
    if any(k.startswith("model.mm_projector.") for k in missing):
        raise ValueError(f"{model_path}: the checkpoint lacks the mm_projector weights")
    inner = model.get_model()
    towers = [tower for tower in (inner.image_tower, inner.video_tower) if tower is not None]
    for tower in towers:
        tower.load_weights(model_path)
    model.set_visual_token_num(visual_token_num)
    model.set_pruning_method(method)

    # [FasterVLM] The towers go where the image path's tower goes; their features follow the projector's device.
    tower_device = place_model(model, device, load_kwargs)
    for tower in towers:
        tower.to(device=tower_device, dtype=tower_dtype)
    model.eval()

    processor = {"image": inner.image_tower.image_processor if inner.image_tower is not None else None,
                 "video": VideoProcessor(size=inner.video_tower.cfg.image_size, num_frames=inner.video_tower.num_frames)}
    context_len = getattr(model.config, "max_sequence_length", None) or 2048
    return tokenizer, model, processor, context_len

