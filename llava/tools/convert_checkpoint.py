"""Convert a LLaVA checkpoint between the original layout and transformers' (llava-hf) layout.

    python -m llava.tools.convert_checkpoint SRC DST [--dtype float16]

The direction follows SRC. An original-layout SRC (liuhaotian LLaVA-1.5 / LLaVA-1.6-vicuna, LanguageBind
Video-LLaVA) becomes a folder that transformers' ``LlavaForConditionalGeneration`` /
``LlavaNextForConditionalGeneration`` / ``VideoLlavaForConditionalGeneration`` and ``AutoProcessor`` load, with the keys
and tokens transformers' own conversion scripts give (``<image>`` (and ``<video>``) tokens, a ``<pad>`` token, the
vocabulary padded to a multiple of 64 with rows at the mean embedding). A transformers-format SRC becomes an
original-layout folder (its tower described in its config.json, as ``llava.model.hf_format`` reads it).
Either layout loads with ``load_pretrained_model`` as it is; converting is needed only to hand a checkpoint to
the other code base. Video-LLaVA's temporal attention has no place in transformers' model: such a video tower
is refused (``make_tiny_video_checkpoint --no-time-attn`` writes one without).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from llava.eval.utils import ArgumentParser, InputError, cli
from llava.model import hf_format

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_PAD_TO = 64  # transformers' conversion scripts pad the vocabulary to a multiple of 64

# This project's key prefix → the key prefix of the llava-hf checkpoints (first match).
_TO_HF = [
    ("model.mm_projector.0.", "multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
    ("model.image_newline", "image_newline"),
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower.vision_model."),
    ("model.vision_tower.vision_tower.", "vision_tower.vision_model."),
    ("model.image_tower.image_tower.", "image_tower.vision_model."),
    ("model.video_tower.video_tower.", "video_tower.vision_model."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
]


def hf_key(key: str) -> str:
    for old, new in _TO_HF:
        if key.startswith(old):
            return new + key[len(old):]
    raise InputError(f"weight {key!r} has no place in a transformers-format checkpoint")


def _image_processor_classes():
    """transformers' PIL image processors for LLaVA-1.5 and NeXT (5.x names them ``*Pil``; 4.x's plain ones are PIL)."""
    try:
        from transformers import CLIPImageProcessorPil as Clip, LlavaNextImageProcessorPil as Next
    except ImportError:
        from transformers import CLIPImageProcessor as Clip, LlavaNextImageProcessor as Next
    return Clip, Next


def _processor_fields(processor) -> dict:
    return {"size": processor.size, "crop_size": processor.crop_size, "image_mean": processor.image_mean,
            "image_std": processor.image_std, "resample": processor.resample,
            "rescale_factor": processor.rescale_factor}


def _vision_config(model, family: str):
    """transformers' ``CLIPVisionConfig`` of the loaded model's tower (for Video-LLaVA: both towers, which must agree)."""
    from transformers import CLIPVisionConfig

    if family != "video_llava":
        return model.get_vision_tower().config
    inner = model.get_model()
    cfgs = {tower.cfg for tower in (inner.image_tower, inner.video_tower)}
    cfg = inner.video_tower.cfg
    if cfg.add_time_attn:
        raise NotImplementedError("the video tower has temporal attention (add_time_attn), which transformers' "
                                  "VideoLlavaForConditionalGeneration lacks; its weights would be dropped")
    if len(cfgs) > 1:
        raise NotImplementedError("the image and video towers differ in shape; transformers' Video-LLaVA has one vision_config")
    return CLIPVisionConfig(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                            num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                            image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
                            hidden_act=cfg.hidden_act, layer_norm_eps=cfg.layer_norm_eps)


def to_transformers(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the original-layout checkpoint ``src`` in transformers' layout to ``dst``; returns ``dst``."""
    from safetensors.torch import save_file
    from transformers import (AddedToken, LlamaConfig, LlavaConfig, LlavaNextConfig, LlavaNextProcessor, LlavaProcessor,
                              VideoLlavaConfig)

    from llava.model.builder import load_pretrained_model

    src, dst = Path(src), Path(dst)
    tokenizer, model, _, _ = load_pretrained_model(str(src), device="cpu", dtype=dtype, vision_tower_dtype=dtype)
    config = model.config
    family = ("video_llava" if getattr(model.get_model(), "video_tower", None) is not None
              else "llava_next" if config.image_aspect_ratio == "anyres" else "llava")
    if config.mm_projector_type != "mlp2x_gelu":
        raise NotImplementedError(f"{src}: mm_projector_type {config.mm_projector_type!r}: transformers' models have "
                                  "LLaVA's mlp2x_gelu projector only")
    if config.mm_use_im_start_end or config.mm_use_im_patch_token:
        raise NotImplementedError(f"{src}: mm_use_im_start_end / mm_use_im_patch_token have no transformers counterpart")
    vision = _vision_config(model, family)

    # Tokens as transformers' conversion scripts add them; the new rows start at the mean embedding.
    specials = ["<image>", "<video>"] if family == "video_llava" else ["<image>"]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    state = {hf_key(k): v.to(dtype).contiguous() for k, v in model.state_dict().items()
             if not k.endswith("position_ids")}
    rows = state["language_model.model.embed_tokens.weight"].shape[0]
    vocab = math.ceil(max(len(tokenizer), rows) / _PAD_TO) * _PAD_TO
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        old = state[key]
        state[key] = torch.cat([old, old.float().mean(0).to(dtype).expand(vocab - old.shape[0], -1)])

    keys = set(LlamaConfig().to_dict()) - {"architectures", "model_type", "transformers_version", "_name_or_path",
                                           "vocab_size"}
    text = LlamaConfig(**{k: v for k, v in config.to_dict().items() if k in keys}, vocab_size=vocab)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    common = dict(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_index=ids["<image>"],
                  pad_token_id=tokenizer.pad_token_id, vision_feature_layer=config.mm_vision_select_layer,
                  vision_feature_select_strategy="default" if config.mm_vision_select_feature == "patch" else "full",
                  projector_hidden_act="gelu", tie_word_embeddings=False)
    if family == "llava":
        hf_config = LlavaConfig(**common, image_seq_length=(vision.image_size // vision.patch_size) ** 2)
    elif family == "llava_next":
        # LLaVA's pinpoints are (width, height), transformers' (height, width)
        hf_config = LlavaNextConfig(**common, image_grid_pinpoints=[[h, w] for w, h in config.image_grid_pinpoints])
    else:
        hf_config = VideoLlavaConfig(**common, video_token_index=ids["<video>"])
    dst.mkdir(parents=True, exist_ok=True)
    hf_config.architectures = [hf_format.HF_ARCHITECTURES[family]]
    hf_config.save_pretrained(dst)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})

    if family == "video_llava":
        tokenizer.save_pretrained(dst)  # the LanguageBind transforms are fixed; Video-LLaVA needs no processor file
    else:
        Clip, Next = _image_processor_classes()
        fields = _processor_fields(model.get_vision_tower().image_processor)
        if family == "llava":
            processor = LlavaProcessor(image_processor=Clip(**fields), tokenizer=tokenizer, patch_size=vision.patch_size,
                                       vision_feature_select_strategy=common["vision_feature_select_strategy"],
                                       num_additional_image_tokens=1)
        else:
            processor = LlavaNextProcessor(
                image_processor=Next(**fields, image_grid_pinpoints=hf_config.image_grid_pinpoints),
                tokenizer=tokenizer, patch_size=vision.patch_size, num_additional_image_tokens=1,
                vision_feature_select_strategy=common["vision_feature_select_strategy"])
        processor.save_pretrained(dst)
    if (src / "tokenizer.model").is_file():  # transformers 5 saves tokenizer.json only; the loader reads this one
        shutil.copy(src / "tokenizer.model", dst / "tokenizer.model")
    return dst


def to_original(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the transformers-format checkpoint ``src`` in the original layout to ``dst``; returns ``dst``."""
    from llava.model.builder import load_pretrained_model

    src, dst = Path(src), Path(dst)
    tokenizer, model, _, _ = load_pretrained_model(str(src), device="cpu", dtype=dtype, vision_tower_dtype=dtype)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    if (src / "tokenizer.model").is_file():
        shutil.copy(src / "tokenizer.model", dst / "tokenizer.model")
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("src", help="checkpoint folder to convert (either layout; the direction follows it)")
    parser.add_argument("dst", help="folder to write (created; files in it are overwritten)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float16",
                        help="dtype of the written weights (default float16, as the released checkpoints)")
    args = parser.parse_args(argv)
    if not (Path(args.src) / "config.json").is_file():
        raise InputError(f"{args.src}: no config.json; SRC must be a checkpoint folder")
    if Path(args.dst).exists() and any(Path(args.dst).iterdir()):
        raise InputError(f"{args.dst}: exists and is not empty; choose a new folder")
    convert = to_original if hf_format.is_hf_checkpoint(args.src) else to_transformers
    path = convert(args.src, args.dst, DTYPES[args.dtype])
    layout = "original" if convert is to_original else "transformers"
    print(f"{args.src} written in the {layout} layout to {path}")


if __name__ == "__main__":
    cli(main)
