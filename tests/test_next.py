"""LLaVA-NeXT (anyres) against independent references, vanilla and with FasterVLM's per-crop pruning.

References: transformers' ``LlavaNextForConditionalGeneration`` on converted weights (vanilla, unpruned), and
token sequences assembled here by plain loops from eager ``CLIPVisionModel(output_attentions=True)``, spliced
into a stock ``LlamaForCausalLM`` (pruned). Grid shapes and unpadding for the vanilla reference come from
transformers' own LLaVA-NeXT helpers, never from the code under test.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from packaging import version
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape as hf_grid_shape
from transformers.models.llava_next.modeling_llava_next import unpad_image as hf_unpad_image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.tools.make_tiny_checkpoint import NEXT_PINPOINTS, TOWER, make_tiny_checkpoint
from reference import checkpoint_state, greedy, reference_llama

CROP = TOWER["image_size"]  # px per crop of the tiny tower
SIDE = CROP // TOWER["patch_size"]  # patches per crop side
N = SIDE * SIDE
K90 = round(0.1 * N)  # the paper's 90 % reduction: 58 of 576 patches per crop
TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
# (width, height) → vanilla grid (rows × cols): 2×2 with rows unpadded, 1×3 with columns unpadded,
# 2×1 with columns unpadded, 2×1 with rows unpadded (a square image on a tall canvas).
SIZES = [(w * CROP // 84, h * CROP // 84) for w, h in [(150, 100), (200, 90), (50, 130), (84, 84)]]


def make_image(seed: int, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8"))


def prompt_ids(tokenizer, question: str, images: int = 1) -> torch.Tensor:
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\n" * images + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]


@pytest.fixture(scope="module")
def next_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("next") / "llava-v1.6-tiny", seed=0, arch="next")


@pytest.fixture(scope="module")
def next_model(next_ckpt):
    tokenizer, model, processor, _ = load_pretrained_model(str(next_ckpt), device="cpu")
    return tokenizer, model, processor


@pytest.fixture
def model(next_model):
    """The shared model, reset to vanilla and unpruned after each test."""
    _, model, _ = next_model
    yield model
    model.set_anyres_protocol("vanilla")
    model.set_visual_token_num(None)


@pytest.fixture(scope="module")
def refs(next_ckpt):
    """Eager CLIP with the checkpoint's (fine-tuned) tower weights, the LLaMA, and the projector tensors."""
    state = checkpoint_state(next_ckpt)
    tower = CLIPVisionModel(CLIPVisionConfig.from_pretrained(next_ckpt / "vision_tower", attn_implementation="eager"))
    # transformers 4.x nests CLIP's modules under .vision_model; 5.x does not.
    nest = "vision_model." if hasattr(tower, "vision_model") else ""
    tower.load_state_dict({nest + k[len(TOWER_PREFIX):]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)})
    return tower.eval(), reference_llama(next_ckpt), state


@torch.no_grad()
def reference_crops(refs, pixels: torch.Tensor, k: int | None):
    """Per crop: all projected patches (n, N, D), the kept raster indices and the head-mean CLS scores."""
    tower, _, state = refs
    out = tower(pixels, output_hidden_states=True, output_attentions=True)
    feats = out.hidden_states[-2][:, 1:]  # (n, N, C)
    scores = out.attentions[-2][:, :, 0, 1:].mean(dim=1)  # (n, N)
    keep = torch.arange(N).expand(len(feats), -1) if k is None else scores.topk(k, dim=-1).indices.sort().values
    h = F.linear(feats, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"])
    h = F.linear(F.gelu(h), state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])
    return h, keep, scores


def reference_paper_tokens(proj: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The paper's 'spatial' merge on the 2×2 grid, by loops: base kept patches, then the stitched raster."""
    kept = [set(x.tolist()) for x in keep]
    seq = [proj[0, j] for j in sorted(kept[0])]
    for y in range(2 * SIDE):
        for x in range(2 * SIDE):
            crop, patch = 1 + (y // SIDE) * 2 + x // SIDE, (y % SIDE) * SIDE + x % SIDE
            if patch in kept[crop]:
                seq.append(proj[crop, patch])
    return torch.stack(seq) if seq else proj.new_zeros((0, proj.shape[-1]))


def reference_vanilla_tokens(proj, keep, size, newline) -> tuple[torch.Tensor, int]:
    """LLaVA-NeXT's spatial_unpad with pruned patches masked out; newline after every unpadded row.

    Grid shape and unpadding are transformers' (which take (height, width)). Returns the tokens and the row count.
    """
    width, height = size
    rows, cols = hf_grid_shape([height, width], [[h, w] for w, h in NEXT_PINPOINTS], CROP)
    assert proj.shape[0] == 1 + rows * cols
    mask = torch.zeros(proj.shape[:2])
    for crop, idx in enumerate(keep):
        mask[crop, idx] = 1
    base = [proj[0, j] for j in range(N) if mask[0, j]]
    grid = torch.cat([proj[1:], mask[1:, :, None]], dim=-1)  # (rows·cols, N, D+1): the mask travels with the features
    grid = grid.view(rows, cols, SIDE, SIDE, -1).permute(4, 0, 2, 1, 3).reshape(-1, rows * SIDE, cols * SIDE)
    grid = hf_unpad_image(grid, [height, width])  # (D+1, H', W')
    seq = list(base)
    for y in range(grid.shape[1]):
        seq += [grid[:-1, y, x] for x in range(grid.shape[2]) if grid[-1, y, x]]
        seq.append(newline)
    return torch.stack(seq), grid.shape[1]


def splice_all(llama, input_ids: torch.Tensor, visuals: list[torch.Tensor]) -> torch.Tensor:
    """(1, L) ids with one placeholder per entry of ``visuals`` → (1, L', D) embeddings."""
    embed = llama.get_input_embeddings()
    ids, pieces, start = input_ids[0], [], 0
    for pos, visual in zip((ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist(), visuals, strict=True):
        pieces += [embed(ids[start:pos]), visual]
        start = pos + 1
    return torch.cat(pieces + [embed(ids[start:])])[None]


# --- vanilla LLaVA-NeXT, unpruned: transformers' LlavaNextForConditionalGeneration ---------------------------------

def to_hf_llava_next(ckpt: Path, llama_config):
    from transformers import LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig.from_pretrained(ckpt / "vision_tower").to_dict(),
        text_config=LlamaConfig(**llama_config.to_dict()).to_dict(), image_token_index=0,
        # LLaVA's pinpoints are (width, height), transformers' (height, width): swap each, keep the order for ties.
        image_grid_pinpoints=[[h, w] for w, h in NEXT_PINPOINTS], vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False)
    hf = LlavaNextForConditionalGeneration(config).eval()
    # transformers 4.x nests CLIP's modules under .vision_model, 5.x does not; follow the target's naming.
    nested = any(k.startswith("model.vision_tower.vision_model.") for k in hf.state_dict())
    tower_prefix = "model.vision_tower.vision_model." if nested else "model.vision_tower."
    state = {}
    for k, v in checkpoint_state(ckpt).items():
        if k.startswith("model.mm_projector."):
            layer = {"0": "linear_1", "2": "linear_2"}[k.split(".")[2]]
            state[f"model.multi_modal_projector.{layer}.{k.split('.')[-1]}"] = v
        elif k.startswith(TOWER_PREFIX):
            state[tower_prefix + k[len(TOWER_PREFIX):]] = v
        elif k == "model.image_newline":
            state[k] = v
        elif k.startswith("model."):
            state["model.language_model." + k[len("model."):]] = v
        else:
            state[k] = v
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if "position_ids" not in m], (missing, unexpected)
    return hf


@pytest.fixture(scope="module")
def hf_next(next_ckpt, refs):
    return to_hf_llava_next(next_ckpt, refs[1].config)


def hf_logits(hf, ids: torch.Tensor, pixel_list: list[torch.Tensor], sizes, counts: list[int]) -> torch.Tensor:
    """Run transformers' model: each placeholder becomes ``counts[i]`` image tokens; crops padded to a 5-D batch."""
    pieces, start = [], 0
    for pos, count in zip((ids[0] == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist(), counts, strict=True):
        pieces += [ids[0, start:pos], torch.zeros(count, dtype=torch.long)]
        start = pos + 1
    hf_ids = torch.cat(pieces + [ids[0, start:]])[None]
    most = max(p.shape[0] for p in pixel_list)
    pixels = torch.stack([torch.cat([p, p.new_zeros((most - p.shape[0], *p.shape[1:]))]) for p in pixel_list])
    image_sizes = torch.tensor([[h, w] for w, h in sizes])
    with torch.no_grad():
        return hf(input_ids=hf_ids, pixel_values=pixels, image_sizes=image_sizes).logits


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_vanilla_unpruned_logits_match_transformers_llava_next(next_model, model, hf_next, size):
    tokenizer, _, processor = next_model
    image = make_image(sum(size), size)
    pixels = process_images([image], processor, model.config)
    ids = prompt_ids(tokenizer, "What is the color of the bus?")
    with torch.no_grad():
        ours = model(ids, images=pixels, image_sizes=[image.size]).logits
    count = model.last_pruning.visual_tokens[0]
    torch.testing.assert_close(ours, hf_logits(hf_next, ids, [pixels[0]], [size], [count]), atol=1e-5, rtol=1e-5)


def test_vanilla_two_images_with_different_grids_match_transformers(next_model, model, hf_next):
    """A list input (different crop counts) with two placeholders in one prompt."""
    tokenizer, _, processor = next_model
    images = [make_image(1, SIZES[0]), make_image(2, SIZES[1])]
    pixels = process_images(images, processor, model.config)
    assert isinstance(pixels, list) and [p.shape[0] for p in pixels] == [5, 4]
    ids = prompt_ids(tokenizer, "Is there a dog in the image?", images=2)
    with torch.no_grad():
        ours = model(ids, images=pixels, image_sizes=[im.size for im in images]).logits
    counts = [len(s) for s in model.last_pruning.token_sources]
    assert model.last_pruning.visual_tokens == [sum(counts)]
    theirs = hf_logits(hf_next, ids, pixels, [im.size for im in images], counts)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# --- FasterVLM's paper protocol: per-crop top-k, 'spatial' merge, fixed 2×2 grid -----------------------------------

@pytest.mark.parametrize("k", [None, 0, 1, K90])
@pytest.mark.parametrize("size", [SIZES[1], SIZES[2]], ids=["wide", "tall"])
def test_paper_protocol_matches_eager_clip_reference(next_model, model, refs, k, size):
    tokenizer, _, processor = next_model
    model.set_anyres_protocol("paper")
    model.set_visual_token_num(k)
    image = make_image(7, size)
    pixels = process_images([image], processor, model.config)
    assert pixels.shape == (1, 5, 3, CROP, CROP)  # the fixed 2×2 grid, whatever the aspect ratio
    ids = prompt_ids(tokenizer, "What is written on the sign?")
    with torch.no_grad():
        ours = model(ids, images=pixels, image_sizes=[image.size]).logits
    proj, keep, scores = reference_crops(refs, pixels[0], k)
    visual = reference_paper_tokens(proj, keep)
    kept = 5 * (N if k is None else k)
    assert visual.shape[0] == kept
    llama = refs[1]
    with torch.no_grad():
        ref = llama(inputs_embeds=splice_all(llama, ids, [visual])).logits
    assert ours.shape == ref.shape == (1, ids.shape[1] - 1 + kept, llama.config.vocab_size)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    info = model.last_pruning
    assert info.visual_tokens == [kept] and info.crops_per_image == [5]
    assert len(info.kept_indices) == 5 and all(torch.equal(a, b) for a, b in zip(info.kept_indices, keep))
    assert torch.equal(info.kept_indices_per_image()[0], keep)
    torch.testing.assert_close(info.cls_attn, scores, atol=1e-6, rtol=1e-5)
    assert not (info.token_sources[0] < 0).any()  # no image_newline in the paper protocol


def test_paper_protocol_is_the_default_when_pruning(next_ckpt):
    tokenizer, model, processor, _ = load_pretrained_model(str(next_ckpt), device="cpu", visual_token_num=3)
    assert model.config.anyres_protocol == "paper"
    image = make_image(3, SIZES[1])
    pixels = process_images([image], processor, model.config)
    assert pixels.shape[1] == 5
    model(prompt_ids(tokenizer, "Describe"), images=pixels, image_sizes=[image.size])
    assert model.last_pruning.visual_tokens == [15]
    # Explicit choices win; without pruning the default is LLaVA-NeXT as released.
    _, vanilla, _, _ = load_pretrained_model(str(next_ckpt), device="cpu", visual_token_num=3,
                                             anyres_protocol="vanilla")
    assert vanilla.config.anyres_protocol == "vanilla"
    assert process_images([image], processor, vanilla.config).shape[1] == 4


# --- vanilla LLaVA-NeXT with pruning: masks unpadded with the features, one newline per remaining row --------------

@pytest.mark.parametrize("k", [0, K90])
@pytest.mark.parametrize("size", SIZES[:3], ids=["rows-unpadded", "cols-unpadded", "tall"])
def test_vanilla_with_pruning_matches_reference(next_model, model, refs, next_ckpt, k, size):
    tokenizer, _, processor = next_model
    model.set_visual_token_num(k)
    image = make_image(11, size)
    pixels = process_images([image], processor, model.config)
    ids = prompt_ids(tokenizer, "How many people are there?")
    with torch.no_grad():
        ours = model(ids, images=pixels, image_sizes=[image.size]).logits
    proj, keep, _ = reference_crops(refs, pixels[0], k)
    visual, rows = reference_vanilla_tokens(proj, keep, size, refs[2]["model.image_newline"])
    llama = refs[1]
    with torch.no_grad():
        ref = llama(inputs_embeds=splice_all(llama, ids, [visual])).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    sources = model.last_pruning.token_sources[0]
    newlines = (sources < 0).nonzero().flatten()
    assert len(newlines) == rows and newlines[-1] == len(sources) - 1
    assert model.last_pruning.visual_tokens == [len(sources)] == [visual.shape[0]]
    # Every kept patch of the base crop is present; the grid keeps at most k per crop.
    assert ((sources >= 0) & (sources < N)).sum() == k
    assert (sources >= N).sum() <= k * (pixels.shape[1] - 1)


# --- generation, loading, bad inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["paper", "vanilla"])
def test_greedy_generation_with_kv_cache_matches_reference(next_model, model, refs, protocol):
    tokenizer, _, processor = next_model
    model.set_anyres_protocol(protocol)
    model.set_visual_token_num(5)
    image = make_image(5, SIZES[0])
    pixels = process_images([image], processor, model.config)
    ids = prompt_ids(tokenizer, "What is the color of the bus?")
    out = model.generate(ids, images=pixels, image_sizes=[image.size], do_sample=False, num_beams=1,
                         max_new_tokens=10, use_cache=True)
    proj, keep, _ = reference_crops(refs, pixels[0], 5)
    if protocol == "paper":
        visual = reference_paper_tokens(proj, keep)
    else:
        visual, _ = reference_vanilla_tokens(proj, keep, image.size, refs[2]["model.image_newline"])
    llama = refs[1]
    ref = greedy(llama, splice_all(llama, ids, [visual]), steps=10, eos=tokenizer.eos_token_id)
    assert len(ref) >= 2 and out[0].tolist() == ref


def rewrite_checkpoint(src: Path, dst: Path, config_updates: dict | None = None, rename=None) -> Path:
    """A variant of ``src``: symlinked files, an edited config.json, and optionally re-keyed weights (None drops)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "config.json" and not (rename and f.name.startswith("model")):
            os.symlink(f, dst / f.name)
    config = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **(config_updates or {})}))
    if rename:
        index = json.loads((src / "model.safetensors.index.json").read_text())
        weight_map = {}
        for shard in sorted(set(index["weight_map"].values())):
            tensors = {rename(k): v for k, v in load_file(src / shard).items() if rename(k) is not None}
            save_file(tensors, str(dst / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shard))
        (dst / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": weight_map}))
    return dst


def test_tower_weights_come_from_the_checkpoint(next_ckpt, next_model, tmp_path):
    _, model, _ = next_model
    state = checkpoint_state(next_ckpt)
    for name, value in model.get_vision_tower().vision_tower.state_dict().items():
        assert torch.equal(value, state[TOWER_PREFIX + name.removeprefix("vision_model.")]), name
    pretrained = CLIPVisionModel.from_pretrained(next_ckpt / "vision_tower")
    assert not torch.equal(getattr(pretrained, "vision_model", pretrained).embeddings.class_embedding,
                           state[TOWER_PREFIX + "embeddings.class_embedding"])
    if version.parse(transformers.__version__).major < 5:
        return  # flat tower keys are written (and read) by transformers 5 only
    # A checkpoint written by transformers 5 (flat CLIPVisionModel keys) loads the same tower.
    flat = rewrite_checkpoint(next_ckpt, tmp_path / "flat", rename=lambda k: k.replace("tower.vision_model.", "tower."))
    _, flat_model, _, _ = load_pretrained_model(str(flat), device="cpu", dtype=torch.float16)
    tower = flat_model.get_vision_tower()
    assert tower.dtype == torch.float16  # the checkpoint's tower runs in the LLM's dtype, as upstream
    for name, value in tower.vision_tower.state_dict().items():
        assert torch.equal(value.float(), state[TOWER_PREFIX + name.removeprefix("vision_model.")]), name
    # String pinpoints (as some configs store them) mean the same grids.
    text = rewrite_checkpoint(next_ckpt, tmp_path / "text", {"image_grid_pinpoints": str(NEXT_PINPOINTS)})
    _, text_model, processor, _ = load_pretrained_model(str(text), device="cpu")
    assert process_images([make_image(0, SIZES[1])], processor, text_model.config).shape[1] == 4


@pytest.mark.parametrize("updates, error, match", [
    ({"mm_patch_merge_type": "spatial_pad"}, ValueError, "mm_patch_merge_type 'spatial_pad'"),
    ({"image_aspect_ratio": "anyres_max_9"}, ValueError, "image_aspect_ratio 'anyres_max_9'"),
    ({"model_type": "llava_mistral"}, NotImplementedError, "llava_mistral"),
])
def test_unsupported_configs_are_errors(next_ckpt, tmp_path, updates, error, match):
    variant = rewrite_checkpoint(next_ckpt, tmp_path / "variant", updates)
    with pytest.raises(error, match=match):
        load_pretrained_model(str(variant), device="cpu")


def test_missing_tower_weights_are_an_error(next_ckpt, tmp_path):
    variant = rewrite_checkpoint(next_ckpt, tmp_path / "no-tower",
                                 rename=lambda k: None if k.startswith("model.vision_tower.") else k)
    with pytest.raises(ValueError, match="lacks .* multimodal weights"):
        load_pretrained_model(str(variant), device="cpu")


def test_bad_inputs(next_ckpt, next_model, model):
    tokenizer, _, processor = next_model
    image = make_image(4, SIZES[1])
    ids = prompt_ids(tokenizer, "Describe")
    with pytest.raises(ValueError, match="anyres_protocol 'fixed'"):
        load_pretrained_model(str(next_ckpt), device="cpu", anyres_protocol="fixed")
    with pytest.raises(ValueError, match="anyres_protocol 'fixed'"):
        model.set_anyres_protocol("fixed")
    vanilla_pixels = process_images([image], processor, model.config)  # 4 crops: a 1×3 grid
    with pytest.raises(ValueError, match="image_sizes"):
        model(ids, images=vanilla_pixels)
    model.set_anyres_protocol("paper")
    with pytest.raises(ValueError, match="4 crops but its 2×2 grid needs 5"):
        model(ids, images=vanilla_pixels, image_sizes=[image.size])
    model.set_visual_token_num(N + 1)
    with pytest.raises(ValueError, match=f"visual_token_num={N + 1} is out of range"):
        model(ids, images=process_images([image], processor, model.config), image_sizes=[image.size])
