"""``load_pretrained_model``: LLaVA's loader, for the original liuhaotian checkpoint layout and [FasterVLM] transformers'
(llava-hf) layout, read as the original one by ``llava.model.hf_format``.

[FasterVLM] The checkpoint readers it builds on live in ``llava.model.checkpoint`` (re-exported here under their old
names), the weight-file helpers in ``llava.model.weights``, the device rules in ``llava.devices``.
"""
from __future__ import annotations

import warnings

import torch

from llava.compat import note_untested_stack
from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.devices import check_device
from llava.model import hf_format
from llava.model.checkpoint import (check_visual_token_num, is_video_llava, llm_load_kwargs, load_llava_llama,
                                    load_tokenizer, num_patches, place_model, read_llava_config, read_model_config,
                                    resolve_anyres_protocol)
from llava.model.multimodal_encoder.clip_encoder import check_cls_attn_arithmetic
from llava.model.video_llava import load_video_llava
from llava.pruning import check_installed, get_method
from llava.pruning.base import PruningMethod

_LLAMA_MODEL_TYPES = ("llava", "llava_llama")

__all__ = ["check_device", "check_visual_token_num", "load_pretrained_model", "load_tokenizer", "num_patches",
           "read_llava_config", "read_model_config", "resolve_anyres_protocol"]


def load_pretrained_model(model_path, model_base=None, model_name=None, load_8bit=False, load_4bit=False,
                          device_map="auto", device="cuda", use_flash_attn=False, visual_token_num=None,
                          anyres_protocol=None, pruning_method="fastervlm", pruning_kwargs=None, **kwargs):
    """Load a LLaVA checkpoint: ``(tokenizer, model, image_processor, context_len)``.

    ``visual_token_num`` [FasterVLM]: visual tokens kept per image (per crop for LLaVA-NeXT); None keeps all.
    ``anyres_protocol`` [FasterVLM], LLaVA-NeXT only: ``"paper"`` (fixed 2×2 grid, ``spatial`` merge without
    unpadding or newlines: 5 × ``visual_token_num`` tokens per image), ``"released"`` (the released FasterVLM
    code: its fill-ratio grid choice, 3–5 crops, and the same ``spatial`` merge) or ``"vanilla"`` (LLaVA-NeXT's own
    grid choice and merge). Default: ``"paper"`` when ``visual_token_num`` is set, else ``"vanilla"``.
    Stored as ``model.config.anyres_protocol``, which ``process_images`` reads as well.
    ``torch_dtype``/``dtype``: the LLM's dtype (fp16 on CUDA, fp32 on CPU by default).
    ``vision_tower_dtype``: the tower's dtype; by default fp32 when the tower is loaded from
    ``mm_vision_tower`` (as upstream's ``device_map='auto'`` loads it) and the LLM's dtype when its
    weights live in the checkpoint.
    ``attn_implementation``: the LLM's attention (``sdpa`` by default; ``use_flash_attn`` picks FlashAttention 2).
    ``cls_attn_arithmetic`` [FasterVLM]: ``"fp32"`` (default) or ``"upstream"`` (the released code's eager attention
    arithmetic in the tower dtype; see ``clip_encoder``), stored as ``model.config.cls_attn_arithmetic``.
    ``pruning_method`` [FasterVLM]: how the ``visual_token_num`` tokens are chosen, a name from
    ``llava.pruning.available_methods()`` (FasterVLM by default, or a baseline), with ``pruning_kwargs`` its parameters,
    or a method instance.
    ``device`` [FasterVLM]: ``cpu``, ``cuda``/``cuda:N`` (the whole model on that GPU), ``auto`` (accelerate's
    ``device_map="auto"`` over all visible GPUs, for a model too big for one) or ``mps``
    (``llava.devices.check_device``); ``device_map``: a caller's own map (a dict) on GPUs.
    [FasterVLM] Video-LLaVA checkpoints (``mm_video_tower``) go to ``llava.model.video_llava.load_video_llava``,
    whose third value is a ``{"image", "video"}`` processor dict.
    [FasterVLM] transformers-format (llava-hf) checkpoints of all three load the same way, onto the same classes
    (``llava.model.hf_format``).
    """
    # [FasterVLM] fail before loading any weights
    method = pruning_method if isinstance(pruning_method, PruningMethod) else get_method(pruning_method,
                                                                                        **(pruning_kwargs or {}))
    check_installed(method)
    check_device(device, "device")
    note_untested_stack()
    if is_video_llava(model_path):
        return load_video_llava(model_path, model_base, load_8bit, load_4bit, device_map, device, use_flash_attn,
                                visual_token_num, pruning_method=method, **kwargs)
    if model_base is not None:
        raise NotImplementedError(
            f"--model-base {model_base}: LoRA / projector-only checkpoints are not supported; "
            "merge the LoRA weights into a full checkpoint first")
    cfg_dict = read_llava_config(model_path)
    model_type = cfg_dict.get("model_type")
    if model_type not in _LLAMA_MODEL_TYPES:
        raise NotImplementedError(f"{model_path}: model_type {model_type!r} is not supported (LLaMA-based LLaVA only: "
                                  "llava-v1.5-*, llava-v1.6-vicuna-*; not llava-v1.6-mistral-7b or -34b)")
    check_visual_token_num(model_path, visual_token_num)
    anyres_protocol = resolve_anyres_protocol(cfg_dict, visual_token_num, anyres_protocol)

    dtype, load_kwargs = llm_load_kwargs(device, device_map, use_flash_attn, kwargs)
    vision_tower_dtype = kwargs.pop("vision_tower_dtype", None)
    cls_attn_arithmetic = check_cls_attn_arithmetic(kwargs.pop("cls_attn_arithmetic", None))  # [FasterVLM]
    if vision_tower_dtype is None and cfg_dict.get("hf_model_type") == "llava":
        # [FasterVLM] llava-hf's LLaVA-1.5 stores the frozen CLIP tower, which the original layout loads in fp32
        vision_tower_dtype = torch.float32
    if load_8bit or load_4bit:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=load_8bit, load_in_4bit=load_4bit, bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")
    if kwargs:
        warnings.warn(f"load_pretrained_model ignores unknown arguments: {sorted(kwargs)}")

    extra = {"anyres_protocol": anyres_protocol} if anyres_protocol is not None else {}
    extra["cls_attn_arithmetic"] = cls_attn_arithmetic
    tokenizer, model, missing = load_llava_llama(model_path, cfg_dict, load_kwargs, **extra)
    # LLaVA-NeXT's tower (unfreeze_mm_vision_tower) and image_newline live in the checkpoint: missing ones
    # would be silently random.
    missing = [k for k in missing
               if k.startswith(("model.vision_tower.", "model.image_newline", "model.mm_projector."))]
    if missing:
        raise ValueError(f"{model_path}: the checkpoint lacks {len(missing)} multimodal weights, e.g. {missing[:3]}")
    model.set_visual_token_num(visual_token_num)
    model.set_pruning_method(method)

    config = model.config
    if getattr(config, "mm_use_im_patch_token", False):
        tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    if getattr(config, "mm_use_im_start_end", False):
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))

    vision_tower = model.get_vision_tower()
    if not vision_tower.is_loaded:
        vision_tower.load_model(torch_dtype=vision_tower_dtype or torch.float32)
    elif vision_tower_dtype is not None:
        vision_tower.to(dtype=vision_tower_dtype)
    if (cfg_dict.get("hf_model_type") == "llava" and vision_tower.dtype == torch.float32 and dtype != torch.float32
            and "quantization_config" not in load_kwargs):
        # [FasterVLM] from_pretrained rounded the tower to the LLM's dtype before the upcast: its stored weights again
        clip = vision_tower.vision_tower
        prefix = "vision_model." if next(iter(clip.state_dict())).startswith("vision_model.") else ""
        clip.load_state_dict(hf_format.stored_tower_state(model_path, prefix))
    vision_tower.to(device=place_model(model, device, load_kwargs))
    model.eval()

    context_len = getattr(config, "max_sequence_length", None) or 2048
    return tokenizer, model, vision_tower.image_processor, context_len
