"""Independent references for the Video-LLaVA tests, written from upstream's description, not from the code under test.

- ``eager_languagebind``: LanguageBind's vision transformer in plain torch with eager (materialised)
  attention, laid out as upstream's ``modeling_video.py``: ``(b t) n d -> (b n) t d`` for the temporal
  attention, every layer's hidden states and spatial attention maps returned. Its arithmetic is
  transformers 4.31's ``CLIPAttention`` (the release upstream pins): query scaled first, softmax in the
  dtype of the weights given, so fed fp16 weights it is upstream's fp16 tower.
- ``reference_frame_tokens``: FasterVLM's ``encode_videos`` on those outputs.
- ``reference_llama`` / ``hf_video_llava``: the language side as stock transformers models, through APIs that
  transformers 4.56 and 5.x share (``get_video_features``' return type changed between them).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, VideoLlavaConfig,
                          VideoLlavaForConditionalGeneration)

VIDEO = "model.video_tower.video_tower."


def checkpoint_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's shards (LLM, projector and the embedded towers) in fp32."""
    state = {}
    for shard in sorted(ckpt.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, map_location="cpu", weights_only=True))
    return {k: v.float() for k, v in state.items()}


def tower_state(ckpt: Path, folder: str, prefix: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The LanguageBind folder's ``vision_model.*`` weights (what upstream loads), renamed to ``prefix*``, in ``dtype``."""
    state = torch.load(ckpt / folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return {prefix + k[len("vision_model."):]: v.to(dtype) for k, v in state.items() if k.startswith("vision_model.")}


def _attention(state: dict, p: str, h: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager multi-head self-attention. ``h``: (B, S, C) → output (B, S, C), weights (B, heads, S, S)."""
    B, S, C = h.shape
    q, k, v = (F.linear(h, state[f"{p}{n}_proj.weight"], state[f"{p}{n}_proj.bias"]).view(B, S, heads, -1).transpose(1, 2)
               for n in "qkv")
    weights = ((q * (C // heads) ** -0.5) @ k.transpose(-1, -2)).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(B, S, C)
    return F.linear(out, state[f"{p}out_proj.weight"], state[f"{p}out_proj.bias"]), weights


def _ln(state: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[f"{p}weight"], state[f"{p}bias"], eps=1e-5)


def eager_languagebind(state: dict, prefix: str, tower_cfg: dict, videos: torch.Tensor):
    """(B, 3, T, H, W) → hidden states [(B, T, 1+N, C)] × (layers + 1) and spatial attentions [(B, T, heads, 1+N, 1+N)]."""
    B, _, T, H, W = videos.shape
    heads, time_attn = tower_cfg["num_attention_heads"], tower_cfg["add_time_attn"]
    frames = videos.permute(0, 2, 1, 3, 4).reshape(B * T, 3, H, W)
    patches = F.conv2d(frames, state[f"{prefix}embeddings.patch_embedding.weight"], stride=tower_cfg["patch_size"])
    patches = patches.flatten(2).transpose(1, 2)
    cls = state[f"{prefix}embeddings.class_embedding"].expand(B * T, 1, -1)
    x = torch.cat([cls, patches], 1) + state[f"{prefix}embeddings.position_embedding.weight"]
    x = _ln(state, f"{prefix}pre_layrnorm.", x)
    hidden, attentions = [x], []
    for i in range(tower_cfg["num_hidden_layers"]):
        p = f"{prefix}encoder.layers.{i}."
        n, c = x.shape[1:]
        if time_attn:
            x = x.view(B, T, n, c).transpose(1, 2).reshape(B * n, T, c) + state[f"{p}temporal_embedding"][:, :T]
            x = x + _attention(state, f"{p}temporal_attn.", _ln(state, f"{p}temporal_layer_norm1.", x), heads)[0]
            x = x.view(B, n, T, c).transpose(1, 2).reshape(B * T, n, c)
        out, weights = _attention(state, f"{p}self_attn.", _ln(state, f"{p}layer_norm1.", x), heads)
        x = x + out
        h = F.linear(_ln(state, f"{p}layer_norm2.", x), state[f"{p}mlp.fc1.weight"], state[f"{p}mlp.fc1.bias"])
        x = x + F.linear(F.gelu(h), state[f"{p}mlp.fc2.weight"], state[f"{p}mlp.fc2.bias"])
        hidden.append(x)
        attentions.append(weights)
    return ([h.view(B, T, *h.shape[1:]) for h in hidden], [a.view(B, T, *a.shape[1:]) for a in attentions])


def project(state: dict, x: torch.Tensor) -> torch.Tensor:
    h = F.linear(x, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"])
    return F.linear(F.gelu(h), state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])


def tower_config(ckpt: Path, folder: str) -> dict:
    return json.loads((ckpt / folder / "config.json").read_text())["vision_config"]


def reference_video_tower(ckpt: Path, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer -2 of the eager video tower (``videos.dtype``, weights from LanguageBind_Video_merge/): patch features
    (B, T, N, C) and spatial [CLS]→patch attention (B, T, heads, N)."""
    state = tower_state(ckpt, "LanguageBind_Video_merge", VIDEO, videos.dtype)
    hidden, attentions = eager_languagebind(state, VIDEO, tower_config(ckpt, "LanguageBind_Video_merge"), videos)
    return hidden[-2][:, :, 1:], attentions[-2][:, :, :, 0, 1:]


def reference_frame_tokens(ckpt: Path, features: torch.Tensor, cls_attn: torch.Tensor, k: int | None):
    """FasterVLM on Video-LLaVA from ``reference_video_tower``'s outputs: head mean, independent top-k per frame,
    sorted, projected. Returns tokens (B, T, k, D), kept indices (B, T, k) and scores (B, T, N)."""
    scores = cls_attn.mean(dim=2)  # (B, T, N)
    if k is None:
        keep = torch.arange(scores.shape[-1]).expand(*scores.shape[:2], -1)
    else:
        keep = scores.topk(k, dim=-1).indices.sort(dim=-1).values
    kept = features.gather(2, keep.unsqueeze(-1).expand(-1, -1, -1, features.shape[-1]))
    return project(checkpoint_state(ckpt), kept), keep, scores


def reference_llama(ckpt: Path) -> LlamaForCausalLM:
    cfg = json.loads((ckpt / "config.json").read_text())
    keys = set(LlamaConfig().to_dict()) | {"vocab_size"}
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k in keys and k != "model_type"}))
    state = {k: v for k, v in checkpoint_state(ckpt).items() if not k.startswith(("model.mm_projector", "model.image_tower",
                                                                                   "model.video_tower"))}
    llama.load_state_dict(state, strict=True)
    return llama.eval()


def hf_video_llava(ckpt: Path, video_token_id: int) -> tuple[VideoLlavaForConditionalGeneration, list[str]]:
    """transformers' Video-LLaVA from the checkpoint, keys renamed as its conversion script does.

    Its towers are plain CLIP ViTs, so LanguageBind's temporal-attention weights have nowhere to go; the
    conversion loads with ``strict=False`` and drops them. Returns the model and the dropped keys.
    """
    cfg = json.loads((ckpt / "config.json").read_text())
    tower = tower_config(ckpt, "LanguageBind_Video_merge")
    vision = CLIPVisionConfig(**{k: tower[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                      "num_attention_heads", "image_size", "patch_size",
                                                      "hidden_act", "layer_norm_eps")})
    text = LlamaConfig(**{k: v for k, v in cfg.items() if k in set(LlamaConfig().to_dict()) | {"vocab_size"}
                          and k != "model_type"})
    config = VideoLlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=video_token_id,
                              video_token_index=video_token_id, vision_feature_layer=cfg["mm_vision_select_layer"],
                              projector_hidden_act="gelu")
    model = VideoLlavaForConditionalGeneration(config).eval()
    # The towers are CLIPVisionModels: transformers 4.x nests their modules under .vision_model, 5.x does not.
    nested = any(".vision_model." in key for key in model.state_dict())
    tower = "vision_model." if nested else ""
    renames = [("model.video_tower.video_tower.", f"model.video_tower.{tower}"),
               ("model.image_tower.image_tower.", f"model.image_tower.{tower}"),
               ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
               ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."), ("model.", "model.language_model.")]
    state = {}
    for key, value in checkpoint_state(ckpt).items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        state[key] = value
    result = model.load_state_dict(state, strict=False)
    assert not result.missing_keys, result.missing_keys
    return model, list(result.unexpected_keys)


def hf_video_tokens(hf: VideoLlavaForConditionalGeneration, videos: torch.Tensor) -> torch.Tensor:
    """HF Video-LLaVA's projected frame tokens for (B, 3, T, H, W) videos: (B·T, 1+N, D), [CLS] included.

    ``get_video_features`` returns ``(features, frames)`` in transformers 4.x and an output whose
    ``pooler_output`` holds them in 5.x.
    """
    out = hf.model.get_video_features(pixel_values_videos=videos.transpose(1, 2))
    return out[0] if isinstance(out, tuple) else out.pooler_output


def hf_logits(hf: VideoLlavaForConditionalGeneration, ids: torch.Tensor, video_token_id: int,
              tokens: torch.Tensor) -> torch.Tensor:
    """HF Video-LLaVA's logits for (1, L) ``ids`` whose ``video_token_id`` positions take ``tokens`` (K, D) in order.

    The tokens are spliced into ``inputs_embeds`` (an argument every release takes) rather than passed as
    encoder outputs, which only transformers 5 accepts.
    """
    embeds = hf.get_input_embeddings()(ids)
    embeds[ids == video_token_id] = tokens.to(embeds.dtype)
    return hf(inputs_embeds=embeds).logits
