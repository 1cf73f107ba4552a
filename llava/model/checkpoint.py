"""Reading a LLaVA checkpoint folder before and while its weights load: configs (both layouts, Video-LLaVA's
included), patch counts, the budget check, the tokenizer, and the LLM's ``from_pretrained`` arguments.

The loaders (``builder.load_pretrained_model``, ``video_llava.load_video_llava``) build on these; nothing here
imports a loader, so the model package's imports form a DAG.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPVisionConfig, LlamaTokenizer

from llava.devices import device_map_for, is_accelerator
from llava.errors import InputError
from llava.mm_utils import ANYRES_PROTOCOLS
from llava.model import hf_format
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.clip_encoder import resolve_tower_path
from llava.model.multimodal_encoder.languagebind import TowerConfig, read_tower_config, tower_folder
from llava.model.weights import check_weight_files
from llava.pruning.base import check_budget


def read_model_config(model_path: str | os.PathLike) -> dict:
    """A checkpoint's ``config.json`` as a dict; a missing, truncated or non-object file is an error naming it.

    [FasterVLM] A transformers-format checkpoint's config comes translated into the original layout's
    (``hf_format.original_config``), so every reader sees one layout.
    """
    path = Path(model_path) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; --model-path must be a LLaVA checkpoint folder")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); the checkpoint's config is damaged or incomplete") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: expected a JSON object")
    return hf_format.original_config(model_path, cfg) if hf_format.is_hf_config(cfg) else cfg


def read_llava_config(model_path: str | os.PathLike) -> dict:
    """The checkpoint's ``config.json`` as a dict; a missing or non-LLaVA config is a clear error."""
    cfg = read_model_config(model_path)
    if not cfg.get("mm_vision_tower") and not cfg.get("mm_video_tower"):
        raise InputError(f"{Path(model_path) / 'config.json'}: not a LLaVA checkpoint (no mm_vision_tower)")
    return cfg


def read_video_llava_config(model_path: str | os.PathLike) -> dict | None:
    """The checkpoint's ``config.json`` if it is a Video-LLaVA one (names ``mm_video_tower``), else None."""
    if not (Path(model_path) / "config.json").is_file():
        return None
    cfg = read_model_config(model_path)
    return cfg if cfg.get("mm_video_tower") and not cfg.get("mm_vision_tower") else None


def is_video_llava(model_path: str | os.PathLike) -> bool:
    return read_video_llava_config(model_path) is not None


def video_tower_config(model_path: str | os.PathLike):
    """The checkpoint's video tower shape (a ``languagebind.TowerConfig``), from configs only."""
    cfg = read_video_llava_config(model_path)
    if cfg is None:
        raise ValueError(f"{model_path}: not a Video-LLaVA checkpoint (no mm_video_tower)")
    if cfg.get("mm_vision_config"):  # [FasterVLM] a transformers-format checkpoint (llava.model.hf_format)
        return TowerConfig.from_dict(cfg["mm_vision_config"])
    folder = tower_folder(cfg["mm_video_tower"], model_path)
    return TowerConfig.from_dict(read_tower_config(folder)["vision_config"])


def patches_per_frame(model_path: str | os.PathLike) -> int:
    """Patches per video frame of the checkpoint's video tower (256 for Video-LLaVA-7B), from configs only."""
    return video_tower_config(model_path).num_patches


def num_patches(model_path: str | os.PathLike) -> int | None:
    """Patches per image (per crop, per video frame) of the checkpoint's vision tower, from configs only; None if
    unknown (a tower that is neither local nor cached)."""
    cfg = read_llava_config(model_path)
    if is_video_llava(model_path):
        return patches_per_frame(model_path)
    if cfg.get("mm_vision_config"):  # [FasterVLM] a transformers-format checkpoint describes its tower itself
        return (cfg["mm_vision_config"]["image_size"] // cfg["mm_vision_config"]["patch_size"]) ** 2
    tower = resolve_tower_path(cfg["mm_vision_tower"], model_path)
    try:
        vision = CLIPVisionConfig.from_pretrained(tower, local_files_only=True)
    except OSError:
        return None
    except ValueError as e:  # a damaged config.json
        raise InputError(f"{tower}: cannot read the vision tower's config ({e})") from None
    return (vision.image_size // vision.patch_size) ** 2


def check_visual_token_num(model_path: str | os.PathLike, visual_token_num: int | None) -> None:
    """[FasterVLM] Fail before loading any weights if the budget cannot be met (``pruning.base.check_budget``)."""
    check_budget(visual_token_num, None if visual_token_num is None else num_patches(model_path))


def resolve_anyres_protocol(cfg: dict, visual_token_num: int | None, anyres_protocol: str | None) -> str | None:
    """[FasterVLM] The anyres protocol to load an anyres (LLaVA-NeXT) checkpoint with; None for other checkpoints.

    Unset, it is ``paper`` when pruning (the protocol the paper's LLaVA-NeXT numbers come from) and
    ``vanilla`` (LLaVA-NeXT as released) when not; ``released`` (the released FasterVLM code's grid choice)
    only when asked for.
    """
    if anyres_protocol is not None and anyres_protocol not in ANYRES_PROTOCOLS:
        raise ValueError(f"unsupported anyres_protocol {anyres_protocol!r} (expected one of {ANYRES_PROTOCOLS})")
    if cfg.get("image_aspect_ratio") != "anyres":
        return anyres_protocol
    if anyres_protocol is None:
        return "paper" if visual_token_num is not None else "vanilla"
    return anyres_protocol


def make_sentencepiece_exact(tokenizer) -> None:
    """Make a tokenizers-backed LLaMA tokenizer encode text exactly as sentencepiece does.

    LLaVA was trained with sentencepiece semantics: a dummy "▁" before the text, spaces as "▁".
    transformers 5 departs from it in two ways: LLaMA tokenizers use ``Metaspace(prepend_scheme="first")``,
    which drops the dummy piece when a text starts with a space (" a" → ["▁a"], not ["▁", "▁a"]), and a
    checkpoint whose config says ``model_type: llava`` gets a generic backend with no dummy prefix at
    all. A prepend-and-replace normaliser with no pre-tokeniser is sentencepiece's own behaviour.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow sentencepiece tokenizer (transformers 4.x) is exact already
        return
    from tokenizers import normalizers

    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None


def check_sentencepiece_protobuf() -> None:
    """Fail with the fix when sentencepiece's generated protobuf code cannot load under the installed protobuf.

    transformers reads ``tokenizer.model`` through ``sentencepiece.sentencepiece_model_pb2``; sentencepiece 0.2.3's
    copy needs protobuf >= 7.36.1. With an older protobuf (tools such as wandb pin protobuf < 7) transformers
    falls back to a tiktoken reader and fails far from the cause.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401
    except Exception as e:  # protobuf raises its own VersionError subclasses here
        import google.protobuf
        import sentencepiece

        raise ImportError(
            f"sentencepiece {sentencepiece.__version__} cannot read tokenizer.model with protobuf "
            f"{google.protobuf.__version__} ({e}); install a pair that fits: pip install -U 'protobuf>=7.36.1', "
            "or, where protobuf must stay below 7, pip install 'sentencepiece<0.2.3'") from None


def load_tokenizer(model_path: str | os.PathLike):
    """The checkpoint's LLaMA tokenizer with sentencepiece-exact encoding."""
    if not (Path(model_path) / "tokenizer.model").is_file():
        return AutoTokenizer.from_pretrained(model_path, use_fast=False)
    check_sentencepiece_protobuf()
    # Name the class: AutoTokenizer would follow config.json's model_type ("llava") to a generic backend.
    tokenizer = LlamaTokenizer.from_pretrained(model_path)
    make_sentencepiece_exact(tokenizer)
    return tokenizer


def llm_load_kwargs(device, device_map, use_flash_attn: bool, kwargs: dict) -> tuple[torch.dtype, dict]:
    """The LLM's dtype and ``from_pretrained`` arguments, shared by every LLaVA loader (pops what it uses from ``kwargs``).

    fp16 on GPUs and fp32 elsewhere unless ``torch_dtype``/``dtype`` says otherwise; SDPA unless
    ``attn_implementation`` or ``use_flash_attn`` (FlashAttention 2) says otherwise. On GPUs the device map is
    ``llava.devices.device_map_for(device, device_map)``: one GPU unless ``device="auto"``.
    """
    on_gpu = is_accelerator(device)
    dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None) or (torch.float16 if on_gpu else torch.float32)
    attn_implementation = "flash_attention_2" if use_flash_attn else kwargs.pop("attn_implementation", "sdpa")
    load_kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    if on_gpu:
        load_kwargs["device_map"] = device_map_for(device, device_map)
    return dtype, load_kwargs


def place_model(model, device, load_kwargs: dict) -> torch.device:
    """Move a loaded model to ``device`` unless ``from_pretrained`` placed it (a GPU device map); returns the device
    its towers go to: the one GPU, or under a multi-device map the device of its first weights (the embeddings).
    Each module's outputs then follow that module's device (``LlavaMetaForCausalLM.splice``)."""
    if not is_accelerator(device):
        model.to(device)
        return torch.device(device)
    if load_kwargs.get("device_map") == {"": str(device)}:
        return torch.device(device)
    return next(model.parameters()).device


def load_llava_llama(model_path, cfg_dict: dict, load_kwargs: dict, **config_overrides):
    """Tokenizer and ``LlavaLlamaForCausalLM`` from a checkpoint folder; also the weight keys it lacked."""
    check_weight_files(model_path)
    tokenizer = load_tokenizer(model_path)
    # The overrides win over a saved config's values (a checkpoint written by save_pretrained records anyres_protocol)
    config = LlavaConfig(**{**{k: v for k, v in cfg_dict.items() if k != "model_type"}, **config_overrides})
    config._name_or_path = str(model_path)
    if hf_format.is_hf_checkpoint(model_path):  # [FasterVLM] llava-hf weights, renamed onto ours as they load
        return tokenizer, hf_format.load_llava_hf(model_path, config, load_kwargs), []
    model, loading_info = LlavaLlamaForCausalLM.from_pretrained(model_path, config=config, output_loading_info=True,
                                                                **load_kwargs)
    return tokenizer, model, loading_info["missing_keys"]
