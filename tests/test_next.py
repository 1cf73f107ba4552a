"""LLaVA-NeXT (anyres) against independent references, vanilla and with FasterVLM's per-crop pruning.

References: transformers' ``LlavaNextForConditionalGeneration`` on converted weights (vanilla, unpruned), and
token sequences assembled here by plain loops from eager ``CLIPVisionModel(output_attentions=True)``, spliced
into a stock ``LlamaForCausalLM`` (pruned). Grid shapes for the vanilla reference come from transformers' own
LLaVA-NeXT helpers, its unpadding from LLaVA's ``int()`` rule written out here (``llava_unpad``), the released
protocol's grid from the released fill-ratio rule written out here (``released_canvas``); never from the code
under test.
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
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next import modeling_llava_next
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape as hf_grid_shape
from transformers.models.llava_next.modeling_llava_next import unpad_image as hf_unpad_image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import (ANYRES_PROTOCOL_HELP, ANYRES_PROTOCOLS, anyres_resolution, process_images,
                            tokenizer_image_token)
from llava.model.builder import load_pretrained_model, resolve_anyres_protocol
from conftest import TEST_DEVICE, TEST_DTYPE
from llava.model.llava_arch import unpadded_bounds
from llava.tools.make_tiny_checkpoint import NEXT_PINPOINTS, TOWER, make_tiny_checkpoint
from reference import OnOtherDevice, TwoDevices, checkpoint_state, greedy, reference_llama

CROP = TOWER["image_size"]  # px per crop of the tiny tower
SIDE = CROP // TOWER["patch_size"]  # patches per crop side
N = SIDE * SIDE
K90 = round(0.1 * N)  # the paper's 90 % reduction: 58 of 576 patches per crop
TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
# (width, height) → vanilla grid (rows × cols): 2×2 with rows unpadded, 1×3 with columns unpadded,
# 2×1 with columns unpadded, 2×1 with rows unpadded (a square image on a tall canvas).
SIZES = [(w * CROP // 84, h * CROP // 84) for w, h in [(150, 100), (200, 90), (50, 130), (84, 84)]]
# Sizes whose scaled side lands just below a whole number on their vanilla grid, so that LLaVA's int() unpadding
# keeps 2 rows (columns) fewer than transformers' rounding: (size, vanilla grid (cols, rows), LLaVA's bounds).
INT_RULE_SIZES = [((704, 396), (2, 2), (11, 37, 0, 48)), ((396, 704), (2, 2), (0, 48, 11, 37)),
                  ((748, 352), (3, 1), (0, 24, 11, 61)), ((88, 55), (1, 2), (17, 31, 0, 24))]
# Released-grid cases: wide (1280×720: 3 crops) and tall, square, small wide and tall, very wide and very tall.
RELEASED_SIZES = [(1280, 720), (720, 1280), (600, 600), (300, 200), (200, 300), (2000, 300), (300, 2000)]


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
    tokenizer, model, processor, _ = load_pretrained_model(str(next_ckpt), device=str(TEST_DEVICE), dtype=TEST_DTYPE)
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


def reference_spatial_tokens(proj: torch.Tensor, keep: torch.Tensor, rows: int = 2, cols: int = 2) -> torch.Tensor:
    """The 'spatial' merge (paper: 2×2 grid), by loops: base kept patches, then the stitched raster of the grid."""
    kept = [set(x.tolist()) for x in keep]
    assert len(kept) == 1 + rows * cols
    seq = [proj[0, j] for j in sorted(kept[0])]
    for y in range(rows * SIDE):
        for x in range(cols * SIDE):
            crop, patch = 1 + (y // SIDE) * cols + x // SIDE, (y % SIDE) * SIDE + x % SIDE
            if patch in kept[crop]:
                seq.append(proj[crop, patch])
    return torch.stack(seq) if seq else proj.new_zeros((0, proj.shape[-1]))


def released_canvas(size: tuple[int, int], pinpoints=NEXT_PINPOINTS) -> tuple[int, int]:
    """The released FasterVLM grid rule: the first pinpoint of the largest fill ratio int(w·s)·int(h·s) / (W·H)."""
    width, height = size
    ratios = []
    for w, h in pinpoints:
        scale = min(w / width, h / height)
        ratios.append(int(width * scale) * int(height * scale) / (w * h))
    return tuple(pinpoints[ratios.index(max(ratios))])


def llava_unpad(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """LLaVA's unpad_image rule on (C, H, W): truncate the scaled side with int(), drop (H - side) // 2 each end."""
    width, height = size
    rows, cols = tensor.shape[1:]
    if width * rows > height * cols:  # relatively wider than the grid: the padding is in rows
        pad = (rows - int(height * (cols / width))) // 2
        return tensor[:, pad:rows - pad]
    pad = (cols - int(width * (rows / height))) // 2
    return tensor[:, :, pad:cols - pad]


def reference_vanilla_tokens(proj, keep, size, newline) -> tuple[torch.Tensor, int]:
    """LLaVA-NeXT's spatial_unpad with pruned patches masked out; newline after every unpadded row.

    Grid shape is transformers' (which takes (height, width)), unpadding LLaVA's. Returns the tokens and the row count.
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
    grid = llava_unpad(grid, size)  # (D+1, H', W')
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


@pytest.mark.parametrize("size, grid, bounds", INT_RULE_SIZES, ids=[f"{w}x{h}" for (w, h), _, _ in INT_RULE_SIZES])
def test_unpadding_truncates_as_llava_not_rounds_as_transformers(size, grid, bounds):
    """LLaVA's int() rule is followed; on these sizes transformers' rounding keeps a row/column more at each end."""
    cols, rows = grid
    assert hf_select_best_resolution(size[::-1], [(h, w) for w, h in NEXT_PINPOINTS]) == (rows * CROP, cols * CROP)
    H, W = rows * SIDE, cols * SIDE
    assert unpadded_bounds(H, W, size) == bounds
    index = torch.arange(H * W).view(1, H, W)
    top, bottom, left, right = bounds
    assert torch.equal(llava_unpad(index, size), index[:, top:bottom, left:right])
    theirs = hf_unpad_image(index, list(size[::-1]))  # transformers takes (height, width)
    assert torch.equal(theirs[:, 1:-1] if top else theirs[:, :, 1:-1], index[:, top:bottom, left:right])
    # Over a sweep of sizes on every grid, the code under test follows the rule written out here.
    for w in range(1, 1200, 37):
        for h in range(1, 1200, 41):
            for c, r in [(p[0] // CROP, p[1] // CROP) for p in NEXT_PINPOINTS]:
                grid_index = torch.arange(r * SIDE * c * SIDE).view(1, r * SIDE, c * SIDE)
                t, b, l, rt = unpadded_bounds(r * SIDE, c * SIDE, (w, h))
                assert torch.equal(llava_unpad(grid_index, (w, h)), grid_index[:, t:b, l:rt]), (w, h, c, r)


def test_vanilla_unpruned_on_an_int_rule_size_matches_transformers_with_llava_unpadding(
        next_model, model, hf_next, monkeypatch):
    """Where the rules differ, transformers' stock model keeps 2 more rows (2 × 49 tokens): parity holds only with
    LLaVA's unpadding swapped into it."""
    tokenizer, _, processor = next_model
    size = INT_RULE_SIZES[0][0]
    image = make_image(3, size)
    pixels = process_images([image], processor, model.config)
    ids = prompt_ids(tokenizer, "What is the color of the bus?")
    with torch.no_grad():
        ours = model(ids, images=pixels, image_sizes=[image.size]).logits
    count = model.last_pruning.visual_tokens[0]
    rows_hf = hf_unpad_image(torch.zeros(1, 2 * SIDE, 2 * SIDE), list(size[::-1])).shape[1]
    assert count == N + (rows_hf - 2) * (2 * SIDE + 1)
    monkeypatch.setattr(modeling_llava_next, "unpad_image",
                        lambda tensor, hw: llava_unpad(tensor, (int(hw[1]), int(hw[0]))))
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
    visual = reference_spatial_tokens(proj, keep)
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


def test_protocol_resolution_and_help():
    anyres = {"image_aspect_ratio": "anyres"}
    assert resolve_anyres_protocol(anyres, 58, None) == "paper"
    assert resolve_anyres_protocol(anyres, None, None) == "vanilla"
    assert resolve_anyres_protocol(anyres, 58, "released") == "released"
    assert resolve_anyres_protocol(anyres, None, "released") == "released"
    assert tuple(ANYRES_PROTOCOL_HELP) == ANYRES_PROTOCOLS == ("paper", "vanilla", "released")


# --- the released FasterVLM code: fill-ratio grid choice, per-crop top-k, 'spatial' merge --------------------------

@pytest.mark.parametrize("size", RELEASED_SIZES, ids=[f"{w}x{h}" for w, h in RELEASED_SIZES])
def test_released_grid_choice_follows_the_fill_ratio_rule(next_model, model, size):
    _, _, processor = next_model
    canvas = released_canvas(size)
    model.set_anyres_protocol("released")
    assert anyres_resolution(model.config, size, CROP) == canvas
    crops = 1 + (canvas[0] // CROP) * (canvas[1] // CROP)
    assert process_images([make_image(0, size)], processor, model.config).shape[1] == crops
    vanilla = hf_select_best_resolution(size[::-1], [(h, w) for w, h in NEXT_PINPOINTS])[::-1]
    model.set_anyres_protocol("vanilla")
    assert anyres_resolution(model.config, size, CROP) == vanilla
    model.set_anyres_protocol("paper")
    assert anyres_resolution(model.config, size, CROP) == (2 * CROP, 2 * CROP)


def test_released_grid_examples():
    """The rule written out above, on the cases upstream-behaviour.md tabulates, and the case it cannot place."""
    assert released_canvas((1280, 720)) == (672, 336)  # 3 crops where LLaVA-NeXT takes 2×2
    assert released_canvas((300, 200)) == (672, 336) and released_canvas((640, 480)) == (672, 672)
    assert released_canvas((2000, 300)) == (1008, 336) and released_canvas((300, 2000)) == (336, 1008)
    config = type("Cfg", (), {"anyres_protocol": "released", "image_grid_pinpoints": NEXT_PINPOINTS})()
    with pytest.raises(ValueError, match="1×1500 image fits none of the grids"):
        anyres_resolution(config, (1, 1500), CROP)  # every canvas scales its width to 0 px


@pytest.mark.gpu
@pytest.mark.parametrize("k", [None, 0, K90])
@pytest.mark.parametrize("protocol", ANYRES_PROTOCOLS)
def test_token_counts_per_protocol_and_budget(next_model, model, protocol, k, device, dtype):
    """1280×720: paper 5 crops, released 3 (672×336), vanilla 2×2 unpadded to 28 rows of 48 + 1 newline each."""
    tokenizer, _, processor = next_model
    model.set_anyres_protocol(protocol)
    model.set_visual_token_num(k)
    size = (1280, 720)
    pixels = process_images([make_image(2, size)], processor, model.config).to(device, dtype)
    with torch.no_grad():
        model(prompt_ids(tokenizer, "Describe").to(device), images=pixels, image_sizes=[size])
    count = model.last_pruning.visual_tokens[0]
    per_crop = N if k is None else k
    width, height = released_canvas(size)
    rows = llava_unpad(torch.zeros(1, 2 * SIDE, 2 * SIDE), size).shape[1]
    if protocol == "paper":
        assert count == 5 * per_crop
    elif protocol == "released":
        assert count == (1 + (width // CROP) * (height // CROP)) * per_crop == 3 * per_crop
    elif k is None:
        assert count == N + rows * (2 * SIDE + 1) and rows == 28
    else:  # the base crop's k, the grid's kept patches that survive unpadding, one newline per row
        assert k + rows <= count <= 5 * k + rows


@pytest.mark.parametrize("k", [None, K90])
@pytest.mark.parametrize("size", [(1280, 720), (720, 1280), (2000, 300)], ids=["1x2", "2x1", "1x3"])
def test_released_protocol_matches_eager_clip_reference(next_model, model, refs, k, size):
    tokenizer, _, processor = next_model
    model.set_anyres_protocol("released")
    model.set_visual_token_num(k)
    image = make_image(8, size)
    pixels = process_images([image], processor, model.config)
    cols, rows = (side // CROP for side in released_canvas(size))
    assert pixels.shape == (1, 1 + rows * cols, 3, CROP, CROP)
    ids = prompt_ids(tokenizer, "What is written on the sign?")
    with torch.no_grad():
        ours = model(ids, images=pixels, image_sizes=[image.size]).logits
    proj, keep, _ = reference_crops(refs, pixels[0], k)
    visual = reference_spatial_tokens(proj, keep, rows, cols)
    assert visual.shape[0] == (1 + rows * cols) * (N if k is None else k)
    llama = refs[1]
    with torch.no_grad():
        ref = llama(inputs_embeds=splice_all(llama, ids, [visual])).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    info = model.last_pruning
    assert info.visual_tokens == [visual.shape[0]] and info.crops_per_image == [1 + rows * cols]
    assert all(torch.equal(a, b) for a, b in zip(info.kept_indices, keep))
    assert not (info.token_sources[0] < 0).any()  # no image_newline


# --- vanilla LLaVA-NeXT with pruning: masks unpadded with the features, one newline per remaining row --------------

@pytest.mark.parametrize("k", [0, K90])
@pytest.mark.parametrize("size", SIZES[:3] + [INT_RULE_SIZES[0][0]], ids=["rows-unpadded", "cols-unpadded", "tall",
                                                                          "int-rule"])
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

@pytest.mark.parametrize("protocol", ANYRES_PROTOCOLS)
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
        visual = reference_spatial_tokens(proj, keep)
    elif protocol == "released":
        cols, rows = (side // CROP for side in released_canvas(image.size))
        assert (rows, cols) == (1, 2)  # 600×400: not the paper's 2×2
        visual = reference_spatial_tokens(proj, keep, rows, cols)
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
    model.set_anyres_protocol("released")
    with pytest.raises(ValueError, match="image_sizes"):
        model(ids, images=process_images([image], processor, model.config))
    model.set_anyres_protocol("paper")
    with pytest.raises(ValueError, match="4 crops but its 2×2 grid needs 5"):
        model(ids, images=vanilla_pixels, image_sizes=[image.size])
    model.set_visual_token_num(N + 1)
    with pytest.raises(ValueError, match=f"visual_token_num={N + 1} is out of range"):
        model(ids, images=process_images([image], processor, model.config), image_sizes=[image.size])


@pytest.mark.parametrize("protocol,k", [("vanilla", None), ("vanilla", 29), ("paper", 29)])
def test_anyres_projector_on_another_device(next_ckpt, protocol, k):
    """Under device_map="auto": the anyres merge builds each image's tokens, newlines included, on the projector's
    device, and the splice moves them to the text's (a stand-in second device, reference.TwoDevices)."""
    tokenizer, model, processor, _ = load_pretrained_model(str(next_ckpt), device="cpu", visual_token_num=k,
                                                           anyres_protocol=protocol)
    image = make_image(3, (500, 300))
    pixels = process_images([image], processor, model.config)
    ids = prompt_ids(tokenizer, "What is the color of the bus?")
    with torch.no_grad():
        expected = model(ids, images=pixels, image_sizes=[image.size]).logits
        model.get_model().mm_projector = OnOtherDevice(model.get_model().mm_projector)
        with TwoDevices():
            got = model(ids, images=pixels, image_sizes=[image.size]).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
