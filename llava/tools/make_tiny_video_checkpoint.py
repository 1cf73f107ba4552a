"""Write a randomly initialised Video-LLaVA checkpoint in the ``LanguageBind/Video-LLaVA-7B`` layout, small enough for CPU tests.

    python -m llava.tools.make_tiny_video_checkpoint OUT_DIR [--seed 0] [--no-time-attn]

Layout written (Video-LLaVA-7B plus the two LanguageBind tower repositories it names)::

    OUT_DIR/config.json                   model_type "llava", mm_image_tower / mm_video_tower, no mm_vision_tower
    OUT_DIR/pytorch_model-0000{1,2}-of-00002.bin + pytorch_model.bin.index.json
                                          LLM and mm_projector (fp16), and both towers embedded as
                                          model.{image,video}_tower.{image,video}_tower.* (bf16)
    OUT_DIR/tokenizer.model + tokenizer_config.json + special_tokens_map.json   (sentencepiece, trained here)
    OUT_DIR/LanguageBind_Image/           LanguageBind config.json (vision_config) + pytorch_model.bin (vision_model.*,
                                          fp32)
    OUT_DIR/LanguageBind_Video_merge/     the same, with add_time_attn / num_frames 8 in vision_config

The towers keep Video-LLaVA's geometry (224-px frames, 14-px patches: 256 patches per frame, so the
paper's budgets L = 256/192/128/64/26/13 apply unchanged) at a tiny width and depth. As in the released
files, the embedded copies are bf16 and the LanguageBind folders fp32; here both hold the same values
(bf16-representable), so either copy gives the same tower.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from llava.model.multimodal_encoder.languagebind import LanguageBindVisionTransformer
from llava.tools.make_tiny_checkpoint import LLM, _save_sharded, train_tokenizer

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=224,
             patch_size=14, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5, num_frames=8)
IMAGE_TOWER, VIDEO_TOWER = "LanguageBind_Image", "LanguageBind_Video_merge"


def _write_tower_config(folder: Path, model_type: str, add_time_attn: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vision = {**TOWER, "add_time_attn": add_time_attn, "video_decode_backend": "decord", "force_patch_dropout": 0.0,
              "model_type": "clip_vision_model", "projection_dim": TOWER["hidden_size"]}
    (folder / "config.json").write_text(json.dumps({
        "architectures": [model_type], "model_type": model_type, "projection_dim": TOWER["hidden_size"],
        "logit_scale_init_value": 2.6592, "text_config": {"model_type": "clip_text_model"}, "vision_config": vision},
        indent=2))


def make_tiny_video_checkpoint(out_dir: str | Path, seed: int = 0, add_time_attn: bool = True) -> Path:
    """Create the checkpoint folder and return its path.

    ``add_time_attn=False`` gives a video tower without temporal attention, architecturally a plain CLIP
    ViT like the one transformers' ``VideoLlavaForConditionalGeneration`` uses.
    """
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = train_tokenizer(out_dir)
    _write_tower_config(out_dir / IMAGE_TOWER, "LanguageBindImage", add_time_attn=False)
    _write_tower_config(out_dir / VIDEO_TOWER, "LanguageBindVideo", add_time_attn=add_time_attn)

    # Video-LLaVA-7B's config.json, at the tiny LLM's sizes.
    config = {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", **LLM, "vocab_size": vocab_size,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": "float16", "use_cache": True, "image_aspect_ratio": "pad", "image_grid_pinpoints": None,
        "mm_image_tower": IMAGE_TOWER, "mm_video_tower": VIDEO_TOWER, "mm_hidden_size": TOWER["hidden_size"],
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False, "use_mm_proj": True,
    }
    torch.manual_seed(seed)
    model_config = LlavaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    model_config._name_or_path = str(out_dir)  # the towers read their configs from the folders above
    model = LlavaLlamaForCausalLM(model_config)  # the towers' transformers exist only once weights are loaded
    with torch.no_grad():
        for name, p in model.named_parameters():
            # A wider init than LLaMA's 0.02 gives peaked logits, so greedy decoding is far from ties.
            if p.ndim > 1:
                p.normal_(0.0, 0.3 if "embed" in name or "lm_head" in name else 0.08)
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    inner = model.get_model()
    for folder, tower in ((IMAGE_TOWER, inner.image_tower), (VIDEO_TOWER, inner.video_tower)):
        tower_state = {k: v.to(torch.bfloat16) for k, v in _random_tower(tower.cfg).items()}
        state.update({f"model.{tower.attr}.{tower.attr}.{k}": v for k, v in tower_state.items()})
        # The tower repositories hold the whole LanguageBind model; the text side is stood in for by one projection.
        folder_state = {f"vision_model.{k}": v.float() for k, v in tower_state.items()}
        folder_state["visual_projection.weight"] = torch.zeros(TOWER["hidden_size"], TOWER["hidden_size"])
        torch.save(folder_state, out_dir / folder / "pytorch_model.bin")
    _save_sharded(state, out_dir, "bin")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def _random_tower(cfg) -> dict[str, torch.Tensor]:
    """A random LanguageBind vision transformer's state: linear and embedding weights N(0, 0.02) with zero biases
    (the init transformers gives them inside the LLaVA model), the class and temporal embeddings as constructed."""
    tower = LanguageBindVisionTransformer(cfg)
    with torch.no_grad():
        for module in tower.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0.0, 0.02)
            if isinstance(module, torch.nn.Linear):
                module.bias.zero_()
    return tower.state_dict()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to create (e.g. checkpoints/Video-LLaVA-tiny)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--no-time-attn", action="store_true",
                        help="video tower without temporal attention (a plain CLIP ViT, as transformers' VideoLlava)")
    args = parser.parse_args(argv)
    path = make_tiny_video_checkpoint(args.out_dir, args.seed, add_time_attn=not args.no_time_attn)
    print(f"tiny Video-LLaVA checkpoint written to {path}")


if __name__ == "__main__":
    main()
