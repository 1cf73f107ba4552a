"""Write a random LLaVA-1.5 or LLaVA-NeXT checkpoint in the exact liuhaotian layout, small enough for CPU tests.

    python -m llava.tools.make_tiny_checkpoint OUT_DIR [--seed 0] [--weights-format safetensors|bin] [--arch v1.5|next]

Layout written (the real checkpoints have the same files, only bigger)::

    OUT_DIR/config.json                      model_type "llava", LlavaLlamaForCausalLM, mm_* keys
    OUT_DIR/model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json   (or pytorch_model-*.bin)
    OUT_DIR/tokenizer.model + tokenizer_config.json + special_tokens_map.json     (sentencepiece, trained here)
    OUT_DIR/vision_tower/                    a tiny CLIP vision tower; mm_vision_tower points here

The tokenizer is trained offline on LLaVA's prompt vocabulary, so prompts tokenise into real pieces.

``--arch next`` writes a LLaVA-1.6 (vicuna) checkpoint: ``image_aspect_ratio: anyres`` with LLaVA-1.6's grids
in units of the tiny tower's crop (``NEXT_PINPOINTS``), ``mm_patch_merge_type: spatial_unpad`` with
``model.image_newline``, and ``unfreeze_mm_vision_tower: true`` with the fine-tuned tower stored in the checkpoint as
``model.vision_tower.vision_tower.vision_model.*``. ``vision_tower/`` then holds a different ("pretrained")
tower, as ``openai/clip-vit-large-patch14-336`` does for the real checkpoints: only its config and
preprocessor may be used.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import torch

# LLaVA-1.5's geometry (336-px images, 14-px patches: 24×24 = 576 patches, so the paper's token counts
# 576/288/144/58/29 apply unchanged) on a tower and an LLM a few hundred kilobytes large.
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=336,
             patch_size=14, projection_dim=32)
LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
           max_position_embeddings=4096, rms_norm_eps=1e-5)
VOCAB_SIZE = 1000
# LLaVA-1.6's image_grid_pinpoints [[336,672],[672,336],[672,672],[1008,336],[336,1008]] as (width, height)
# in crops, scaled to the tower's crop size (the very same list for a 336-px tower).
NEXT_PINPOINTS = [[cols * TOWER["image_size"], rows * TOWER["image_size"]]
                  for cols, rows in [(1, 2), (2, 1), (2, 2), (3, 1), (1, 3)]]
ARCHS = ("v1.5", "next")

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions. USER: ASSISTANT:",
    "A chat between a curious human and an artificial intelligence assistant. Human: Assistant: ###",
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "When the provided information is insufficient, respond with 'Unanswerable'.",
    "Reference OCR token: DAKOTA, DIGITAL, STOP, COCA-COLA",
    "What is the color of the bus? The bus is red. Is there a dog in the image? Yes No",
    "What is written on the sign? How many people are there? Two three four five 0 1 2 3 4 5 6 7 8 9",
    "Context: A. B. C. D. E. Which of these is a mammal? cat tree rock water",
    "请直接回答选项字母。图片中有什么？",
]


def train_tokenizer(out_dir: Path, corpus: list[str] = _CORPUS, vocab_size: int = VOCAB_SIZE) -> int:
    """Train a LLaMA-style BPE sentencepiece model of ``corpus`` (byte fallback, <unk>/<s>/</s> = 0/1/2) and write
    it with LLaVA's tokenizer files; returns the vocabulary size."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 20), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, split_digits=True,
        character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, hard_vocab_limit=False, minloglevel=2)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        **specials, "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "legacy": False, "model_max_length": 2048, "pad_token": None, "padding_side": "right",
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer"}, indent=2))
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def write_vision_tower(out_dir: Path, seed: int) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from llava.model.multimodal_encoder.clip_encoder import CLIPImageProcessor

    torch.manual_seed(seed)
    tower = CLIPVisionModel(CLIPVisionConfig(**TOWER))
    tower.save_pretrained(out_dir)
    side = TOWER["image_size"]
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(out_dir)


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0, weights_format: str = "safetensors",
                         projector_type: str = "mlp2x_gelu", arch: str = "v1.5") -> Path:
    """Create the checkpoint folder and return its path."""
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (expected one of {ARCHS})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = train_tokenizer(out_dir)
    write_vision_tower(out_dir / "vision_tower", seed)

    config = {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", **LLM, "vocab_size": vocab_size,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": "float16", "use_cache": True, "max_sequence_length": 2048,
        "mm_vision_tower": "vision_tower", "mm_projector_type": projector_type, "mm_hidden_size": TOWER["hidden_size"],
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat",
        "freeze_mm_mlp_adapter": False, "tune_mm_mlp_adapter": False, "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right", "use_mm_proj": True,
    }
    if arch == "next":
        config.update({"image_aspect_ratio": "anyres", "image_grid_pinpoints": NEXT_PINPOINTS,
                       "mm_patch_merge_type": "spatial_unpad", "unfreeze_mm_vision_tower": True,
                       "mm_vision_tower_lr": 2e-6, "image_crop_resolution": 224, "image_split_resolution": 224,
                       # As LLaVA-1.6: an unpruned 2×2 image alone is 5 × 576 = 2880 tokens.
                       "tokenizer_model_max_length": 4096})
    torch.manual_seed(seed + 1)
    # The tower is written separately below; building it here would need its folder on the config path.
    model = LlavaLlamaForCausalLM(LlavaConfig(**{k: v for k, v in config.items()
                                                 if k not in ("model_type", "unfreeze_mm_vision_tower")}))
    # A wider init than LLaMA's 0.02 gives peaked logits, so greedy decoding is far from ties.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.3 if "embed" in name or "lm_head" in name else 0.08)
        if arch == "next":
            model.get_model().image_newline.normal_(0.0, 0.3)
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    if arch == "next":
        state.update(_finetuned_tower_state(seed))
    _save_sharded(state, out_dir, weights_format)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def _finetuned_tower_state(seed: int) -> dict[str, torch.Tensor]:
    """A tower unlike ``vision_tower/``'s, under the keys LLaVA-1.6 checkpoints use (transformers 4.x nesting)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed + 2)
    tower = CLIPVisionModel(CLIPVisionConfig(**TOWER))
    # transformers 5's CLIPVisionModel is flat; the released checkpoints were written with 4.x's `.vision_model`.
    return {"model.vision_tower.vision_tower.vision_model." + k.removeprefix("vision_model."): v.to(torch.float16)
            for k, v in tower.state_dict().items()}


def _save_sharded(state: dict[str, torch.Tensor], out_dir: Path, weights_format: str) -> None:
    """Two shards plus an index, as the real 7B/13B checkpoints are stored."""
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    prefix, suffix = ("model", "safetensors") if weights_format == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for i, shard_keys in enumerate(halves, 1):
        name = f"{prefix}-{i:05d}-of-00002.{suffix}"
        shard = {k: state[k] for k in shard_keys}
        if weights_format == "safetensors":
            from safetensors.torch import save_file

            save_file(shard, str(out_dir / name), metadata={"format": "pt"})
        else:
            torch.save(shard, out_dir / name)
        weight_map.update({k: name for k in shard_keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out_dir / f"{prefix}.{suffix}.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to create (e.g. checkpoints/llava-v1.5-tiny)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--weights-format", choices=["safetensors", "bin"], default="safetensors",
                        help="shard format: safetensors (default) or PyTorch .bin, both used by released checkpoints")
    parser.add_argument("--projector-type", default="mlp2x_gelu",
                        help="mm_projector_type: linear, mlp2x_gelu (default, as LLaVA-1.5) or mlpNx_gelu")
    parser.add_argument("--arch", choices=ARCHS, default="v1.5",
                        help="v1.5 (default): LLaVA-1.5 layout; next: LLaVA-1.6 (anyres, image_newline, tower weights "
                             "in the checkpoint)")
    args = parser.parse_args(argv)
    path = make_tiny_checkpoint(args.out_dir, args.seed, args.weights_format, args.projector_type, args.arch)
    print(f"tiny {'LLaVA-1.5' if args.arch == 'v1.5' else 'LLaVA-NeXT'} checkpoint written to {path}")


if __name__ == "__main__":
    main()
