"""[FasterVLM] Video-LLaVA (``LanguageBind/Video-LLaVA-7B``) on the LLaVA model class: loading and mixed image/video input.

A Video-LLaVA checkpoint is a LLaVA-LLaMA checkpoint whose config names ``mm_image_tower`` and
``mm_video_tower`` (LanguageBind towers, see ``multimodal_encoder/languagebind.py``) instead of
``mm_vision_tower``. ``LlavaMetaModel`` builds both towers from those keys; this module loads such a
checkpoint and turns Video-LLaVA's ``images`` argument (images and videos mixed) into one feature
tensor per ``<image>`` placeholder: one per image (all patches, never pruned) and one per video
frame (``encode_videos``: that frame's top-L patches by [CLS] attention). A video fills as many
consecutive placeholders as it has frames, so the prompt holds eight ``<image>`` per video.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from llava.model.llava_arch import PruningInfo
from llava.model.multimodal_encoder.clip_encoder import check_cls_attn_arithmetic


def load_video_llava(model_path, model_base=None, load_8bit=False, load_4bit=False, device_map="auto", device="cuda",
                     use_flash_attn=False, visual_token_num=None, **kwargs):
    """Load a Video-LLaVA checkpoint: ``(tokenizer, model, {"image": ..., "video": ...}, context_len)``.

    The processor dict mirrors upstream's: ``"image"`` a CLIP image processor, ``"video"`` a
    :class:`llava.video_utils.VideoProcessor` (path → (3, T, 224, 224)).
    ``visual_token_num`` [FasterVLM]: patches kept per video frame, 0..256 (None keeps all 256).
    ``torch_dtype``/``dtype``: the LLM's dtype (fp16 on CUDA, fp32 on CPU by default).
    ``vision_tower_dtype``: both towers' dtype; by default the LLM's, as upstream casts both towers to fp16.
    ``cls_attn_arithmetic`` [FasterVLM]: ``"fp32"`` (default) or ``"upstream"`` (upstream's eager fp16 attention
    arithmetic in both towers; ``clip_encoder``'s docstring), stored as ``model.config.cls_attn_arithmetic``.
    ``attn_implementation``: the LLM's attention (``sdpa`` by default; ``use_flash_attn`` picks FlashAttention 2).
    Tower weights: ``languagebind._LanguageBindTower.load_weights`` (the LanguageBind repositories, as upstream;
    the checkpoint's embedded copy only as a fallback, with a warning); ``weights_source`` on each tower says which.
    """
    from llava.model.builder import llm_load_kwargs, load_llava_llama
    from llava.video_utils import VideoProcessor

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
    n = patches_per_frame(model_path)
    if visual_token_num is not None and not 0 <= visual_token_num <= n:
        raise ValueError(f"--visual-token-num {visual_token_num} must lie in [0, {n}] (patches per video frame)")

    on_cuda = str(device).startswith("cuda")
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

    if not on_cuda:
        model.to(device)
    projector_device = next(inner.mm_projector.parameters()).device  # towers feed the projector
    for tower in towers:
        tower.to(device=projector_device, dtype=tower_dtype)
    model.eval()

    processor = {"image": inner.image_tower.image_processor if inner.image_tower is not None else None,
                 "video": VideoProcessor(size=inner.video_tower.cfg.image_size, num_frames=inner.video_tower.num_frames)}
    context_len = getattr(model.config, "max_sequence_length", None) or 2048
    return tokenizer, model, processor, context_len


def encode_video_llava_inputs(model, images) -> list[torch.Tensor]:
    """Video-LLaVA's ``images``: a list of (3, H, W) images and (3, T, H, W) videos, a (B, 3, H, W) image batch or a
    (B, 3, T, H, W) video batch. Returns one (k, D) tensor per ``<image>`` placeholder, in order (T per video).

    Sets ``model.last_pruning`` with one "crop" per placeholder: ``kept_indices`` (all patches for an
    image, the top-L for a video frame) and ``cls_attn`` (placeholders, N), the head-mean [CLS] attention.
    """
    items = list(images)  # a 4-D batch iterates (3, H, W) images, a 5-D one (3, T, H, W) videos
    if any(x.ndim not in (3, 4) for x in items):
        raise ValueError("Video-LLaVA takes (3, H, W) images and (3, T, H, W) videos")
    inner = model.get_model()
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
        frames = model.encode_videos(torch.stack([items[i] for i in video_pos]))  # B·T tensors (L, D)
        info, T = model.last_pruning, items[video_pos[0]].shape[1]
        for j, i in enumerate(video_pos):
            span = slice(j * T, (j + 1) * T)
            per_item[i] = (frames[span], info.kept_indices[span], list(info.cls_attn[span]))
    features, kept, scores = ([x for item in per_item for x in item[part]] for part in range(3))
    model.last_pruning = PruningInfo(kept_indices=kept, crops_per_image=[1] * len(kept), cls_attn=torch.stack(scores),
                                     token_sources=kept)
    return features
