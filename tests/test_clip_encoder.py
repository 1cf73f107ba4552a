"""The vision tower's [CLS] score against HF CLIP's eager attention, and the SDPA trap it avoids."""
from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.builder import load_pretrained_model
from llava.model.multimodal_encoder.clip_encoder import CLIPImageProcessor, CLIPVisionTower
from llava.pruning.base import select_topk_raster
from reference import kept_set_agreement  # also registers attn_implementation="eager_437"


def make_tower(tmp_path, select_layer: int, layers: int = 4, seed: int = 0, image_size: int = 56, hidden: int = 32,
               arithmetic: str | None = None) -> tuple[CLIPVisionTower, str]:
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, image_size=image_size, patch_size=14)
    CLIPVisionModel(cfg).save_pretrained(tmp_path)
    from llava.model.multimodal_encoder.clip_encoder import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(tmp_path)
    args = type("Args", (), {"mm_vision_select_layer": select_layer, "mm_vision_select_feature": "patch",
                             "cls_attn_arithmetic": arithmetic})()
    return CLIPVisionTower(str(tmp_path), args), str(tmp_path)


@pytest.mark.parametrize("select_layer", [-2, -1, -3, 2])
def test_cls_attention_and_features_equal_eager_clip(tmp_path, select_layer):
    tower, path = make_tower(tmp_path, select_layer)
    eager = CLIPVisionModel.from_pretrained(path, attn_implementation="eager").eval()
    pixels = torch.randn(3, 3, 56, 56)
    feats, attn = tower(pixels)
    out = eager(pixels, output_hidden_states=True, output_attentions=True)
    # hidden_states[s] is produced by the layer whose attention map is attentions[s] for s < 0,
    # and attentions[s - 1] for s > 0 (hidden_states[0] is the embedding output).
    attn_index = select_layer if select_layer < 0 else select_layer - 1
    torch.testing.assert_close(feats, out.hidden_states[select_layer][:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn, out.attentions[attn_index][:, :, 0, 1:], atol=1e-6, rtol=1e-5)
    assert attn.shape == (3, 4, 16)


def test_fp16_scores_follow_the_input_dtype(tmp_path):
    tower, _ = make_tower(tmp_path, -2)
    feats, attn = tower(torch.randn(1, 3, 56, 56).half())
    assert feats.dtype == attn.dtype == torch.float16  # upstream casts to the image dtype before top-k
    assert tower.dtype == torch.float32  # ...while the tower itself runs in its own (fp32) weights


def test_sdpa_clip_returns_no_attention_weights(tmp_path):
    """The trap: from transformers 4.57, SDPA CLIP silently gives no attentions; our tower never asks for them."""
    tower, path = make_tower(tmp_path, -2)
    sdpa = CLIPVisionModel.from_pretrained(path, attn_implementation="sdpa").eval()
    out = sdpa(torch.randn(1, 3, 56, 56), output_attentions=True)
    import transformers
    from packaging import version

    if version.parse(transformers.__version__) >= version.parse("4.57"):
        usable = bool(out.attentions) and out.attentions[-2] is not None
        assert not usable  # None, an empty tuple, or None entries, depending on the version
    assert tower(torch.randn(1, 3, 56, 56))[1] is not None


def test_select_layer_out_of_range(tmp_path):
    tower, _ = make_tower(tmp_path, -9)
    with pytest.raises(ValueError, match="mm_vision_select_layer=-9"):
        tower(torch.randn(1, 3, 56, 56))


def test_missing_tower_names_the_path(tmp_path):
    args = type("Args", (), {"mm_vision_select_layer": -2, "mm_vision_select_feature": "patch"})()
    with pytest.raises(OSError, match="no-such-tower"):
        CLIPVisionTower(str(tmp_path / "no-such-tower"), args)


@pytest.mark.parametrize("select_layer", [-2, 2])
def test_upstream_arithmetic_equals_437_eager_clip_in_fp16(tmp_path, select_layer):
    """cls_attn_arithmetic="upstream" in fp16 is a stock CLIPVisionModel(output_attentions=True) running transformers
    4.37's eager attention (as LLaVA-1.6's fp16 tower did upstream), bit for bit; today's eager (fp32 softmax, logits
    scaled after the product) differs from it only by fp16 rounding."""
    tower, path = make_tower(tmp_path, select_layer, arithmetic="upstream")
    tower.to(torch.float16)
    pixels = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(1)).half()
    feats, attn = tower(pixels)
    attn_index = select_layer if select_layer < 0 else select_layer - 1
    for implementation, tolerance in (("eager_437", 0), ("eager", 2e-2)):
        eager = CLIPVisionModel.from_pretrained(path, attn_implementation=implementation, dtype=torch.float16).eval()
        with torch.no_grad():
            out = eager(pixels, output_hidden_states=True, output_attentions=True)
        torch.testing.assert_close(feats, out.hidden_states[select_layer][:, 1:], atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(attn, out.attentions[attn_index][:, :, 0, 1:], atol=tolerance / 100, rtol=tolerance)
    tower.cls_attn_arithmetic = "fp32"
    assert not torch.equal(tower(pixels)[1], attn)  # the two arithmetics do differ in fp16


def test_fp16_kept_sets_fp32_vs_upstream_arithmetic(tmp_path):
    """How often FasterVLM keeps other patches under the default fp32 scores than under upstream's fp16 eager
    arithmetic: a random fp16 CLIP at LLaVA's 336 px (576 patches), 16 images × the paper's 5 budgets = 80 cases.
    The upstream path keeps exactly the 4.37-eager reference's sets; the fp32 path departs from them in some cases."""
    tower, path = make_tower(tmp_path, -2, layers=4, image_size=336, hidden=64)
    tower.to(torch.float16)
    reference = CLIPVisionModel.from_pretrained(path, attn_implementation="eager_437", dtype=torch.float16).eval()
    pixels = torch.randn(16, 3, 336, 336, generator=torch.Generator().manual_seed(2)).half()
    with torch.no_grad():
        ref_scores = reference(pixels, output_attentions=True).attentions[-2][:, :, 0, 1:].mean(dim=1)  # (16, 576)
    scores = {}
    for arithmetic in ("fp32", "upstream"):
        tower.cls_attn_arithmetic = arithmetic
        scores[arithmetic] = tower(pixels)[1].mean(dim=1)
    figures = {}
    for k in (432, 288, 144, 58, 29):
        keep = {name: select_topk_raster(s, k) for name, s in scores.items()}
        assert torch.equal(keep["upstream"], select_topk_raster(ref_scores, k))
        figures[k] = kept_set_agreement(keep["fp32"], keep["upstream"])
    same = sum(f[0] for f in figures.values()) / len(figures)
    overlap = sum(f[1] for f in figures.values()) / len(figures)
    print(f"fp16 CLIP, fp32 vs upstream kept sets over 80 cases: same set {same:.1%}, mean overlap {overlap:.2%}; "
          + ", ".join(f"k={k}: {s:.0%}/{o:.2%}" for k, (s, o) in figures.items()))
    assert same < 1 and overlap > 0.9


def test_cls_attn_arithmetic_reaches_the_tower(tiny_ckpt):
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), device="cpu", cls_attn_arithmetic="upstream")
    assert model.get_vision_tower().cls_attn_arithmetic == model.config.cls_attn_arithmetic == "upstream"
    with pytest.raises(ValueError, match="cls_attn_arithmetic 'fp16'"):
        load_pretrained_model(str(tiny_ckpt), device="cpu", cls_attn_arithmetic="fp16")


@pytest.mark.parametrize("prefix", ["vision_model.", ""])
def test_tower_weights_under_other_keys_are_refused_not_randomised(tmp_path, prefix):
    """A tower file whose keys CLIPVisionModel does not read would load as random weights with only a warning
    (transformers 4.x reading transformers 5's flat keys did so): the loader names the folder instead."""
    from safetensors.torch import save_file
    from types import SimpleNamespace

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14)
    model = CLIPVisionModel(config)
    config.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(tmp_path)
    state = {k.removeprefix("vision_model."): v.contiguous() for k, v in model.state_dict().items()}
    save_file({f"{prefix}{k}" if prefix else f"tower.{k}": v for k, v in state.items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    args = SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    tower = CLIPVisionTower(str(tmp_path), args, delay_load=True)
    if prefix:  # openai's layout: every release reads it
        tower.load_model()
        loaded = {k.removeprefix("vision_model."): v for k, v in tower.vision_tower.state_dict().items()}
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    else:
        with pytest.raises(OSError, match=rf"{tmp_path}.*lacks \d+ weights"):
            tower.load_model()
