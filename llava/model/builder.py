"""``load_pretrained_model``: LLaVA's loader, for the original liuhaotian checkpoint layout and [FasterVLM] transformers'
(llava-hf) layout, read as the original one by ``llava.model.hf_format``."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPVisionConfig, LlamaTokenizer

from llava.compat import note_untested_stack
from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.eval.utils import InputError
from llava.mm_utils import ANYRES_PROTOCOLS
from llava.model import hf_format
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.clip_encoder import check_cls_attn_arithmetic, resolve_tower_path
from llava.model.video_llava import is_video_llava, load_video_llava, patches_per_frame
from llava.pruning import check_installed, get_method

_LLAMA_MODEL_TYPES = ("llava", "llava_llama")


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


def check_weight_files(model_path: str | os.PathLike) -> None:
    """Name a missing, truncated or damaged weight file before ``from_pretrained`` fails on it somewhere inside.

    Checks what can be checked without reading the weights: every shard an ``*.index.json`` lists exists; a
    safetensors file holds its whole header and the data that header declares; a ``.bin`` file is a readable zip
    archive (torch's format) with its central directory present.
    """
    import struct
    import zipfile

    folder = Path(model_path)
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{index}: not a valid weight index ({e!r})") from None
        for shard in sorted(shards):
            if not (folder / shard).is_file():
                raise InputError(f"{folder / shard}: weight shard listed in {index.name} is missing")
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            header = f.read(header_len) if 0 <= header_len <= size - 8 else b""
        try:
            tensors = json.loads(header)
            end = max((t["data_offsets"][1] for k, t in tensors.items() if k != "__metadata__"), default=0)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
            raise InputError(f"{path}: not a complete safetensors file (damaged or truncated header)") from None
        if size < 8 + header_len + end:
            raise InputError(f"{path}: truncated: {size} bytes, its header declares {8 + header_len + end}")
    for path in sorted(folder.glob("*.bin")):
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"{path}: not a complete PyTorch weight file ({e})") from None


def check_visual_token_num(model_path: str | os.PathLike, visual_token_num: int | None) -> None:
    """[FasterVLM] Fail before loading any weights if the budget cannot be met."""
    if visual_token_num is None:
        return
    if visual_token_num < 0:
        raise ValueError(f"--visual-token-num must be >= 0, got {visual_token_num}")
    n = num_patches(model_path)
    if n is not None and visual_token_num > n:
        raise ValueError(f"--visual-token-num {visual_token_num} exceeds the {n} patches per image of {model_path}")


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

    fp16 on CUDA and fp32 on CPU unless ``torch_dtype``/``dtype`` says otherwise; SDPA unless
    ``attn_implementation`` or ``use_flash_attn`` (FlashAttention 2) says otherwise.
    """
    on_cuda = str(device).startswith("cuda")
    dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None) or (torch.float16 if on_cuda else torch.float32)
    attn_implementation = "flash_attention_2" if use_flash_attn else kwargs.pop("attn_implementation", "sdpa")
    load_kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    if on_cuda:
        load_kwargs["device_map"] = device_map if device_map != "auto" or torch.cuda.device_count() > 1 else {"": device}
    return dtype, load_kwargs


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
    ``llava.pruning.available_methods()`` (FasterVLM by default, or a baseline), with ``pruning_kwargs`` its parameters.
    [FasterVLM] Video-LLaVA checkpoints (``mm_video_tower``) go to ``llava.model.video_llava.load_video_llava``,
    whose third value is a ``{"image", "video"}`` processor dict.
    [FasterVLM] transformers-format (llava-hf) checkpoints of all three load the same way, onto the same classes
    (``llava.model.hf_format``).
    """
    method = get_method(pruning_method, **(pruning_kwargs or {}))  # [FasterVLM] fail before loading any weights
    check_installed(method)
    note_untested_stack()
    if is_video_llava(model_path):
        if method.name != "fastervlm":
            raise NotImplementedError(f"pruning method {method.name!r}: Video-LLaVA supports only fastervlm")
        return load_video_llava(model_path, model_base, load_8bit, load_4bit, device_map, device, use_flash_attn,
                                visual_token_num, **kwargs)
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

    on_cuda = str(device).startswith("cuda")
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
    model_device = device if on_cuda and load_kwargs.get("device_map") == {"": device} else next(model.parameters()).device
    if not on_cuda:
        model.to(device)
        model_device = torch.device(device)
    vision_tower.to(device=model_device)
    model.eval()

    context_len = getattr(config, "max_sequence_length", None) or 2048
    return tokenizer, model, vision_tower.image_processor, context_len
