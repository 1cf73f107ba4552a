"""CLIP vision tower that also returns FasterVLM's [CLS] attention.

LLaVA reads the patch features of layer ``mm_vision_select_layer`` (the penultimate one). FasterVLM
additionally needs, from that same layer, the post-softmax attention of the [CLS] query over the patch
keys. Rather than asking HF CLIP for every attention map (eager attention, 24 full maps materialised,
and silently ``None`` under SDPA from transformers 4.57 on), the tower runs CLIP's layers itself:
SDPA everywhere, one extra ``(1 × N)`` query row in the selected layer, and no layer after it.
``tests/test_clip_encoder.py`` proves this equal to ``CLIPVisionModel(output_attentions=True)``.
Baseline pruning methods (``llava.pruning``) may instead request that layer's attention keys or its full
patch → patch attention; the tower computes only what the request names.

[FasterVLM] ``cls_attn_arithmetic`` (a config key, and the tower attribute) chooses the scores' arithmetic:
``"fp32"`` (default): SDPA in every layer, the [CLS] row's logits and softmax in fp32. ``"upstream"``: what
the released code ran, transformers 4.31/4.37's eager CLIP attention in every layer (query scaled first,
logits and softmax in the tower dtype, the [CLS] row read off the full map). In an fp32 tower (LLaVA-1.5)
the two differ only by rounding; in fp16 ones (LLaVA-1.6, Video-LLaVA) they can keep different patches.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.pruning.base import TowerOutputs, TowerRequest

try:  # transformers >= 5 splits the PIL processor out; the default one there needs torchvision.
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL one.
    from transformers import CLIPImageProcessor


def resolve_tower_path(name: str, base_dir: str | os.PathLike | None = None) -> str:
    """A local tower folder (absolute, or relative to the checkpoint folder) or else the hub id unchanged."""
    if os.path.isdir(name):
        return name
    if base_dir is not None and (Path(base_dir) / name).is_dir():
        return str(Path(base_dir) / name)
    return name


CLS_ATTN_ARITHMETICS = ("fp32", "upstream")


def check_cls_attn_arithmetic(arithmetic: str | None) -> str:
    """[FasterVLM] A valid ``cls_attn_arithmetic``; None (unset in the config) means ``"fp32"``."""
    arithmetic = arithmetic or "fp32"
    if arithmetic not in CLS_ATTN_ARITHMETICS:
        raise ValueError(f"unknown cls_attn_arithmetic {arithmetic!r} (expected one of {CLS_ATTN_ARITHMETICS})")
    return arithmetic


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[FasterVLM] Upstream's attention arithmetic: transformers 4.31/4.37's eager ``CLIPAttention``.

    The query is scaled before the product, and logits and softmax stay in the input dtype (later
    releases scale the logits and take the softmax in fp32). ``q``, ``k``, ``v``: (B, H, S, D) →
    output (B, H, S, D) and post-softmax weights (B, H, S, S).
    """
    weights = ((q * scale) @ k.transpose(-1, -2)).softmax(dim=-1)
    return weights @ v, weights


def multi_head_attention(attn: nn.Module, h: torch.Tensor, arithmetic: str = "fp32"
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CLIP self-attention of ``attn`` (``q/k/v/out_proj``, ``num_heads``, ``head_dim``, ``scale``) on ``h`` (B, S, C).

    Returns the output (B, S, C) and, with ``upstream`` arithmetic, the weights (B, H, S, S); SDPA computes
    no weights, so ``fp32`` returns None for them.
    """
    B, S, C = h.shape
    q, k, v = (proj(h).view(B, S, attn.num_heads, attn.head_dim).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))  # (B, H, S, D) each
    if arithmetic == "upstream":
        o, weights = eager_attention(q, k, v, attn.scale)
    else:
        o, weights = F.scaled_dot_product_attention(q, k, v, scale=attn.scale), None
    return attn.out_proj(o.transpose(1, 2).reshape(B, S, C)), weights


def _clip_layer(layer: nn.Module, x: torch.Tensor, arithmetic: str = "fp32") -> tuple[torch.Tensor, torch.Tensor | None]:
    """One CLIP encoder layer (pre-LN attention + MLP). ``x``: (B, 1+N, C) → (B, 1+N, C), and the attention
    weights (B, H, 1+N, 1+N) with ``upstream`` arithmetic (None with ``fp32``, whose SDPA computes none)."""
    out, weights = multi_head_attention(layer.self_attn, layer.layer_norm1(x), arithmetic)
    x = x + out
    return x + layer.mlp(layer.layer_norm2(x)), weights


def cls_attention(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[FasterVLM] Post-softmax attention of the [CLS] query over all keys in ``layer``, per head.

    ``x`` is the layer's input (B, 1+N, C); returns (B, H, 1+N). The softmax runs in fp32 over all
    1+N keys, including [CLS] itself; FasterVLM drops that column afterwards without renormalising.
    """
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    B, T, _ = h.shape
    q = attn.q_proj(h[:, :1]).view(B, 1, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, 1, D)
    k = attn.k_proj(h).view(B, T, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, T, D)
    logits = (q.float() @ k.float().transpose(-1, -2)) * attn.scale  # (B, H, 1, T)
    return logits.softmax(dim=-1).squeeze(2).to(x.dtype)


def attention_keys(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[FasterVLM] The attention keys of ``layer`` for its input ``x`` (B, 1+N, C), per head: (B, H, 1+N, D)."""
    attn = layer.self_attn
    B, T, _ = x.shape
    return attn.k_proj(layer.layer_norm1(x)).view(B, T, attn.num_heads, attn.head_dim).transpose(1, 2)


def patch_attention(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[FasterVLM] Post-softmax attention of every patch query over the patch keys in ``layer``, per head.

    ``x`` is the layer's input (B, 1+N, C); returns (B, H, N, N). As in :func:`cls_attention`, the fp32
    softmax runs over all 1+N keys and the [CLS] column is dropped afterwards without renormalising.
    """
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    B, T, _ = h.shape
    q = attn.q_proj(h[:, 1:]).view(B, T - 1, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, N, D)
    k = attn.k_proj(h).view(B, T, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, 1+N, D)
    logits = (q.float() @ k.float().transpose(-1, -2)) * attn.scale  # (B, H, N, 1+N)
    return logits.softmax(dim=-1)[..., 1:].to(x.dtype)


def selected_layer_index(num_layers: int, select_layer: int) -> int:
    """0-based index of the encoder layer whose output is ``hidden_states[select_layer]``."""
    index = num_layers + select_layer if select_layer < 0 else select_layer - 1
    if not 0 <= index < num_layers:
        raise ValueError(f"mm_vision_select_layer={select_layer} selects no encoder layer of a {num_layers}-layer tower")
    return index


def clip_tower_outputs(model: CLIPVisionModel, pixels: torch.Tensor, select_layer: int, select_feature: str,
                       request: TowerRequest, arithmetic: str = "fp32") -> TowerOutputs:
    """Run a transformers ``CLIPVisionModel`` up to layer ``select_layer`` (``hidden_states`` indexing).

    ``pixels``: (B, 3, H, W) in the model's dtype. Returns that layer's features, (B, N, C) for ``patch`` or
    (B, 1+N, C) for ``cls_patch``, and [FasterVLM] the attention maps ``request`` names, in the model's dtype,
    computed with ``arithmetic`` (module docstring). Layers after the selected one never reach LLaVA, so they
    never run. Shared by :class:`CLIPVisionTower` and ``llava.model.hf_pruning`` (FasterVLM inside transformers'
    own Llava models).
    """
    arithmetic = check_cls_attn_arithmetic(arithmetic)
    # transformers 5 flattened CLIPVisionModel; 4.x nests the same modules under .vision_model.
    vm = getattr(model, "vision_model", model)
    x = vm.pre_layrnorm(vm.embeddings(pixels))  # (B, 1+N, C)
    index = selected_layer_index(len(vm.encoder.layers), select_layer)
    for layer in vm.encoder.layers[:index]:
        x = _clip_layer(layer, x, arithmetic)[0]
    selected = vm.encoder.layers[index]
    out, weights = _clip_layer(selected, x, arithmetic)
    maps = {}
    if request.cls_attn:
        # [FasterVLM] (B, H, N): the [CLS] row, CLS→CLS column dropped; "upstream" reads it off the full map.
        maps["cls_attn"] = (weights[:, :, 0] if weights is not None else cls_attention(selected, x))[:, :, 1:]
    if request.keys:
        maps["keys"] = attention_keys(selected, x)[:, :, 1:]  # (B, H, N, D)
    if request.patch_attn:
        maps["patch_attn"] = patch_attention(selected, x)  # (B, H, N, N)
    return TowerOutputs(out[:, 1:] if select_feature == "patch" else out, **maps)


class CLIPVisionTower(nn.Module):
    """LLaVA's ``CLIPVisionTower``; ``forward`` returns ``(features, cls_attn)`` (or, asked by a pruning method,
    a ``TowerOutputs``).

    ``features``: (B, N, C) patch features of the selected layer (``patch``) or (B, 1+N, C) (``cls_patch``).
    ``cls_attn``: [FasterVLM] (B, H, N) [CLS]→patch attention of that same layer, per head.
    """

    def __init__(self, vision_tower: str, args, delay_load: bool = False, base_dir: str | None = None):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = resolve_tower_path(vision_tower, base_dir)
        # [FasterVLM] how the [CLS] scores are computed (module docstring); may be reassigned after loading
        self.cls_attn_arithmetic = check_cls_attn_arithmetic(getattr(args, "cls_attn_arithmetic", None))
        self.select_layer = args.mm_vision_select_layer
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        # [FasterVLM] A transformers-format (llava-hf) checkpoint gives the tower's config and image processor in its
        # own files (read by llava.model.hf_format into these two keys); its weights are in the checkpoint.
        self.vision_config = getattr(args, "mm_vision_config", None)
        self.processor_config = getattr(args, "mm_image_processor", None)
        if self.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"unexpected mm_vision_select_feature {self.select_feature!r} (patch or cls_patch)")
        if not delay_load:
            self.load_model()
        elif getattr(args, "unfreeze_mm_vision_tower", False):
            self.build_for_checkpoint_weights()
        else:
            self.cfg_only = None

    def load_model(self, device_map=None, torch_dtype: torch.dtype | None = None) -> None:
        if self.is_loaded:
            return
        try:
            self.image_processor = CLIPImageProcessor.from_pretrained(self.vision_tower_name)
            self.vision_tower, info = CLIPVisionModel.from_pretrained(
                self.vision_tower_name, device_map=device_map, output_loading_info=True,
                **({"dtype": torch_dtype} if torch_dtype else {}))
        except OSError as e:
            raise OSError(f"cannot load the vision tower {self.vision_tower_name!r} named by mm_vision_tower: {e}") from None
        # transformers only warns about missing weights and starts them at random; every answer would be noise.
        # (transformers 4.x does not read the flat keys transformers 5 writes for a CLIPVisionModel, for one.)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise OSError(f"the vision tower {self.vision_tower_name!r} named by mm_vision_tower lacks {len(missing)} "
                          f"weights (e.g. {', '.join(missing[:3])}), which transformers would start at random; "
                          "store them under the keys CLIPVisionModel expects (vision_model.*)")
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def build_for_checkpoint_weights(self) -> None:
        """An uninitialised tower of ``mm_vision_tower``'s architecture, for checkpoints that store its weights.

        LLaVA-1.6 fine-tuned the tower (``unfreeze_mm_vision_tower``), so its weights are the checkpoint's
        ``model.vision_tower.vision_tower.*``, not those of ``mm_vision_tower``, which only supplies the
        config and the image processor. Upstream loaded the pretrained tower first and overwrote it.
        The checkpoint nests them as ``….vision_model.*`` (transformers 4.x's CLIPVisionModel); transformers 5,
        whose CLIPVisionModel is flat, strips that level itself when loading a nested CLIPVisionModel.
        """
        if self.vision_config is not None:  # [FasterVLM] a transformers-format checkpoint
            self.image_processor = CLIPImageProcessor(**self.processor_config)
            config = CLIPVisionConfig.from_dict(self.vision_config)
        else:
            try:
                self.image_processor = CLIPImageProcessor.from_pretrained(self.vision_tower_name)
                config = CLIPVisionConfig.from_pretrained(self.vision_tower_name)
            except OSError as e:
                raise OSError(f"cannot load the vision tower {self.vision_tower_name!r} named by mm_vision_tower: {e}") from None
        self.vision_tower = CLIPVisionModel(config)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    @torch.no_grad()
    def forward(self, images: torch.Tensor, request: TowerRequest | None = None):
        """``images``: (B, 3, H, W) → features (B, N, C) and [CLS] attention (B, H, N), in ``images.dtype``.

        [FasterVLM] With a pruning method's ``request``, returns a :class:`TowerOutputs` instead, holding the
        features and only the requested maps of the selected layer (``llava.pruning``).
        """
        pixels = images.to(device=self.device, dtype=self.dtype)
        out = clip_tower_outputs(self.vision_tower, pixels, self.select_layer, self.select_feature,
                                 request or TowerRequest(cls_attn=True), self.cls_attn_arithmetic)
        out = TowerOutputs(**{name: None if t is None else t.to(images.dtype) for name, t in vars(out).items()})
        if request is None:
            return out.features, out.cls_attn
        return out

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self) -> CLIPVisionConfig:
        if self.is_loaded:
            return self.vision_tower.config
        if self.cfg_only is None:
            self.cfg_only = CLIPVisionConfig.from_pretrained(self.vision_tower_name)
        return self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side ** 2
