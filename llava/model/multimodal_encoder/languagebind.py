"""Video-LLaVA's LanguageBind towers: an image tower and a video tower with [FasterVLM] per-frame [CLS] attention.

Both are OpenCLIP ViT-L/14 vision transformers at 224 px (``LanguageBind/LanguageBind_Image`` and
``LanguageBind/LanguageBind_Video_merge``). The video tower's layers, when its config sets
``add_time_attn``, first run *temporal* attention (each patch position, [CLS] included, attends across
the ``num_frames`` frames, after a learned per-frame embedding is added) and then the usual *spatial*
CLIP block per frame. There is no temporal MLP.

FasterVLM scores video patches with the **spatial** attention of the selected layer (upstream
overwrites the temporal weights with the spatial ones): the [CLS] row of each frame over that frame's
patches, on hidden states already mixed across frames. As in ``clip_encoder.py``, by default only that
one query row is computed, everything else runs with SDPA, and layers after the selected one never run;
``cls_attn_arithmetic="upstream"`` runs upstream's eager fp16 arithmetic instead, temporal attention included.

Weights (``_LanguageBindTower.load_weights``), as upstream loads them: the ``vision_model.*`` tensors of the
LanguageBind repositories named by ``mm_image_tower`` / ``mm_video_tower`` (fp32), found as a folder (that
path, absolute or relative to the working directory, or relative to the checkpoint folder) or in the
Hugging Face cache (downloaded if missing). Only when neither has them does the copy Video-LLaVA-7B embeds
(``model.{image,video}_tower.{image,video}_tower.*``, bf16, never used upstream) stand in, with a warning.
The towers are therefore built after the LLM's ``from_pretrained``, which skips the embedded keys. The tower
folders' ``config.json`` (LanguageBind's format, with a ``vision_config``) is always needed for the architecture.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
from transformers.activations import ACT2FN

from llava.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from llava.model.multimodal_encoder.clip_encoder import (CLIPImageProcessor, check_cls_attn_arithmetic, cls_attention,
                                                         multi_head_attention, resolve_tower_path)
from llava.model.weights import checkpoint_files, read_prefixed, read_tower_state, weight_files



@dataclass(frozen=True)
class TowerConfig:
    """The ``vision_config`` fields of a LanguageBind ``config.json`` that shape the vision transformer."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    add_time_attn: bool = False
    num_frames: int = 8

    @classmethod
    def from_dict(cls, vision_config: dict) -> "TowerConfig":
        return cls(**{f.name: vision_config[f.name] for f in fields(cls) if f.name in vision_config})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def tower_folder(name: str, base_dir: str | os.PathLike | None) -> Path:
    """The local folder of a tower named in the LLaVA config: a path, a folder beside the checkpoint, or a hub id."""
    path = resolve_tower_path(name, base_dir)
    if os.path.isdir(path):
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        # Configs only: building the towers needs no weights (_LanguageBindTower.load_weights fetches them).
        return Path(snapshot_download(name, allow_patterns=["*.json"]))
    except Exception as e:  # offline, unknown repo, ...: say which tower and where it was looked for
        raise OSError(f"cannot find the LanguageBind tower {name!r}: no folder {name!r} or {Path(base_dir or '.') / name}, "
                      f"and the hub lookup failed ({e}); download it and point the checkpoint config at it") from None


def read_tower_config(folder: Path) -> dict:
    """LanguageBind's ``config.json`` (``{"vision_config": {...}, "text_config": ...}``) as a dict."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: a LanguageBind tower folder needs its config.json")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(cfg.get("vision_config"), dict):
        raise ValueError(f"{path}: not a LanguageBind config (no vision_config)")
    return cfg


class _Attention(nn.Module):
    """CLIP multi-head attention parameters (``q_proj``/``k_proj``/``v_proj``/``out_proj``, as the checkpoints name
    them); ``clip_encoder.multi_head_attention`` computes it."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(cfg.hidden_size, cfg.hidden_size)
                                                                for _ in range(4))


class _MLP(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.act = ACT2FN[cfg.hidden_act]  # LanguageBind is OpenCLIP-trained: exact GELU, not quick_gelu
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LanguageBindEncoderLayer(nn.Module):
    """One LanguageBind layer: optional temporal attention, then a pre-LN CLIP block per frame."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.self_attn = _Attention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _MLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.add_time_attn = cfg.add_time_attn
        if cfg.add_time_attn:
            self.temporal_embedding = nn.Parameter(torch.randn(1, cfg.num_frames, cfg.hidden_size) * cfg.hidden_size ** -0.5)
            self.temporal_attn = _Attention(cfg)
            self.temporal_layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def temporal(self, x: torch.Tensor, frames: int, arithmetic: str = "fp32") -> torch.Tensor:
        """Temporal attention across ``frames``. ``x``: (B·T, 1+N, C), frames of a video consecutive."""
        if not self.add_time_attn:
            return x
        bt, n, c = x.shape
        x = x.view(bt // frames, frames, n, c)  # (B, T, 1+N, C)
        if frames != 1:
            x = x + self.temporal_embedding[:, :frames, None, :]
        h = self.temporal_layer_norm1(x).transpose(1, 2).reshape(-1, frames, c)  # (B·(1+N), T, C)
        out = multi_head_attention(self.temporal_attn, h, arithmetic)[0]
        x = x + out.view(bt // frames, n, frames, c).transpose(1, 2)
        return x.reshape(bt, n, c)

    def spatial(self, x: torch.Tensor, arithmetic: str = "fp32") -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP's block within each frame. ``x``: (B·T, 1+N, C) → (B·T, 1+N, C), and the spatial attention
        weights (B·T, heads, 1+N, 1+N) with ``upstream`` arithmetic (None with ``fp32``)."""
        out, weights = multi_head_attention(self.self_attn, self.layer_norm1(x), arithmetic)
        x = x + out
        return x + self.mlp(self.layer_norm2(x)), weights

    def forward(self, x: torch.Tensor, frames: int, arithmetic: str = "fp32") -> torch.Tensor:
        return self.spatial(self.temporal(x, frames, arithmetic), arithmetic)[0]


class _Embeddings(nn.Module):
    """CLIP patch + [CLS] + position embeddings (parameter names as in the checkpoints)."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.image_size = cfg.image_size
        self.class_embedding = nn.Parameter(torch.randn(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.num_patches + 1, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 1+N, C)."""
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"the tower takes {self.image_size}×{self.image_size} frames, got {tuple(pixels.shape[-2:])}")
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class _Encoder(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.layers = nn.ModuleList(LanguageBindEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class LanguageBindVisionTransformer(nn.Module):
    """LanguageBind's ``vision_model``: the module whose ``state_dict`` keys both checkpoint layouts use."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = _Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # unused by LLaVA, kept for the keys

    def layer_index(self, select_layer: int) -> int:
        """0-based index of the layer whose output is ``hidden_states[select_layer]``."""
        n = self.config.num_hidden_layers
        index = n + select_layer if select_layer < 0 else select_layer - 1
        if not 0 <= index < n:
            raise ValueError(f"mm_vision_select_layer={select_layer} selects no encoder layer of a {n}-layer tower")
        return index


def load_tower_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The ``vision_model.*`` tensors of a LanguageBind folder, prefix stripped (text model and projections ignored)."""
    files = weight_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no tower weights (*.safetensors or *.bin)")
    state = read_prefixed(files, "vision_model.")
    if not state:
        raise ValueError(f"{folder}: no vision_model.* weights in {[f.name for f in files]}")
    return state


class _LanguageBindTower(nn.Module):
    """Shared plumbing of the two towers; the transformer is registered under ``attr`` to match the checkpoint keys.

    As upstream's ``delay_load``, the transformer exists only once :meth:`load_weights` has run, so the
    LLM's ``from_pretrained`` neither loads nor expects the checkpoint's embedded tower keys.
    """

    attr: str

    def __init__(self, name: str, args, base_dir: str | os.PathLike | None):
        super().__init__()
        self.tower_name = name
        self.folder_is_local = os.path.isdir(resolve_tower_path(name, base_dir))
        # [FasterVLM] A transformers-format (llava-hf) checkpoint gives the towers' shape in its own config
        # (mm_vision_config, see llava.model.hf_format) and their weights in its state dict: no tower folders.
        vision_config = getattr(args, "mm_vision_config", None)
        self.folder = None if vision_config else tower_folder(name, base_dir)
        self.cfg = TowerConfig.from_dict(vision_config or read_tower_config(self.folder)["vision_config"])
        self.select_layer = args.mm_vision_select_layer
        select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if select_feature != "patch":  # Video-LLaVA-7B's value; FasterVLM scores patches only
            raise ValueError(f"LanguageBind towers support mm_vision_select_feature 'patch' only, got {select_feature!r}")
        # [FasterVLM] how the [CLS] scores are computed (clip_encoder's docstring); may be reassigned after loading
        self.cls_attn_arithmetic = check_cls_attn_arithmetic(getattr(args, "cls_attn_arithmetic", None))
        self.weights_source: str | None = None  # set by load_weights: the folder read, or "checkpoint"

    @property
    def is_loaded(self) -> bool:
        return hasattr(self, self.attr)  # registered by set_weights

    @property
    def transformer(self) -> LanguageBindVisionTransformer:
        if not self.is_loaded:
            raise RuntimeError(f"{self.tower_name}: the tower's weights are not loaded (call load_weights)")
        return getattr(self, self.attr)

    def set_weights(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Build the transformer holding ``state`` (its ``vision_model`` tensors, in their stored dtype)."""
        with torch.device("meta"):  # no random init: every tensor comes from ``state``
            transformer = LanguageBindVisionTransformer(self.cfg)
        transformer.load_state_dict(state, strict=True, assign=True)
        transformer.requires_grad_(False)
        setattr(self, self.attr, transformer)
        self.weights_source = source

    def _upstream_folder(self) -> tuple[Path | None, str]:
        """The folder holding the LanguageBind weights upstream loads, or None and why there is none."""
        if weight_files(self.folder):
            return self.folder, ""
        if self.folder_is_local:
            return None, f"no *.safetensors or *.bin in {self.folder}"
        try:  # tower_folder fetched a hub tower's configs only; upstream downloads the whole repository
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(self.tower_name, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
        except Exception as e:  # offline, gated, ...: the embedded copy may still serve
            return None, f"the hub download of {self.tower_name} failed ({e})"
        return (folder, "") if weight_files(folder) else (None, f"no *.safetensors or *.bin in {folder}")

    def load_weights(self, model_path: str | os.PathLike) -> None:
        """Load the weights upstream uses (module docstring), else the copy embedded in the checkpoint at
        ``model_path``, with a warning; record which in ``weights_source``.

        [FasterVLM] A transformers-format (llava-hf) checkpoint names no tower folder: its own copy is the only one.
        """
        if self.folder is None:
            state = read_tower_state(model_path, self.attr)
            if not state:
                raise ValueError(f"{model_path}: the checkpoint lacks the {self.attr} weights")
            self.set_weights(state, "checkpoint")
            return
        folder, missing = self._upstream_folder()
        if folder is not None:
            self.set_weights(load_tower_weights(folder), str(folder))
            return
        prefix = f"model.{self.attr}.{self.attr}."
        embedded = read_prefixed(checkpoint_files(model_path, prefix), prefix)
        if not embedded:
            raise FileNotFoundError(f"{self.tower_name}: no tower weights: {missing}, and {model_path} embeds none "
                                    f"({prefix}*); download the LanguageBind tower and point the checkpoint config at it")
        dtype = next(iter(embedded.values())).dtype
        warnings.warn(f"{self.tower_name}: {missing}; using the copy embedded in {model_path} ({prefix}*, stored in "
                      f"{dtype}), which upstream never loads (it runs the fp32 LanguageBind weights): scores and "
                      "answers may differ slightly from upstream's", stacklevel=2)
        self.set_weights(embedded, "checkpoint")

    def _run(self, pixels: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers up to the selected one. Returns its output (B·T, 1+N, C) and its spatial [CLS] row (B·T, heads, N)."""
        vt = self.transformer
        arithmetic = check_cls_attn_arithmetic(self.cls_attn_arithmetic)
        x = vt.pre_layrnorm(vt.embeddings(pixels.to(device=self.device, dtype=self.dtype)))  # (B·T, 1+N, C)
        index = vt.layer_index(self.select_layer)
        for layer in vt.encoder.layers[:index]:
            x = layer(x, frames, arithmetic)
        selected = vt.encoder.layers[index]
        x = selected.temporal(x, frames, arithmetic)
        out, weights = selected.spatial(x, arithmetic)
        # [FasterVLM] spatial [CLS]→patch row, CLS→CLS column dropped; "upstream" reads it off the full map.
        attn = (weights[:, :, 0] if weights is not None else cls_attention(selected, x))[:, :, 1:]
        return out, attn

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.embeddings.class_embedding.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.embeddings.class_embedding.device

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    @property
    def num_patches(self) -> int:
        return self.cfg.num_patches


class LanguageBindImageTower(_LanguageBindTower):
    """Video-LLaVA's image tower (images are never pruned). ``forward``: (B, 3, H, W) → patch features (B, N, C)
    and the [CLS] attention (B, heads, N), reported but unused."""

    attr = "image_tower"

    def __init__(self, name: str, args, base_dir: str | os.PathLike | None = None):
        super().__init__(name, args, base_dir)
        if self.cfg.add_time_attn:
            raise ValueError(f"{name}: an image tower with add_time_attn is not supported")
        side = self.cfg.image_size
        # LanguageBind's image transform: resize the short side (bicubic), centre crop, OpenAI-CLIP normalisation.
        self.image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                                  image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, attn = self._run(images, frames=1)
        return x[:, 1:].to(images.dtype), attn.to(images.dtype)


class LanguageBindVideoTower(_LanguageBindTower):
    """[FasterVLM] Video-LLaVA's video tower. ``forward``: (B, 3, T, H, W) → features (B, T, N, C), [CLS] attention (B, T, heads, N).

    Features are the selected layer's patch tokens per frame ([CLS] dropped, so 256 per frame where vanilla
    Video-LLaVA fed all 257); the attention is that layer's spatial [CLS] row per frame and head.
    """

    attr = "video_tower"

    def __init__(self, name: str, args, base_dir: str | os.PathLike | None = None):
        super().__init__(name, args, base_dir)

    @property
    def num_frames(self) -> int:
        return self.cfg.num_frames

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, T, H, W = videos.shape
        if self.cfg.add_time_attn and T != self.cfg.num_frames:
            raise ValueError(f"the video tower's temporal attention is built for {self.cfg.num_frames} frames, got {T}")
        frames = videos.transpose(1, 2).reshape(B * T, -1, H, W)  # (B·T, 3, H, W), each video's frames consecutive
        x, attn = self._run(frames, frames=T)
        features = x[:, 1:].reshape(B, T, -1, x.shape[-1])  # (B, T, N, C)
        return features.to(videos.dtype), attn.reshape(B, T, *attn.shape[1:]).to(videos.dtype)


def build_languagebind_towers(config, base_dir: str | os.PathLike | None = None
                              ) -> tuple[LanguageBindImageTower | None, LanguageBindVideoTower | None]:
    """The towers named by ``mm_image_tower`` / ``mm_video_tower`` (either may be absent), weights not loaded
    (``load_weights``)."""
    image = getattr(config, "mm_image_tower", None)
    video = getattr(config, "mm_video_tower", None)
    return (LanguageBindImageTower(image, config, base_dir) if image else None,
            LanguageBindVideoTower(video, config, base_dir) if video else None)
