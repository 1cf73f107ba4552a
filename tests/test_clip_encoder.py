"""The vision tower's [CLS] score against HF CLIP's eager attention, and the SDPA trap it avoids."""
from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower


def make_tower(tmp_path, select_layer: int, layers: int = 4, seed: int = 0) -> tuple[CLIPVisionTower, str]:
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                           image_size=56, patch_size=14)
    CLIPVisionModel(cfg).save_pretrained(tmp_path)
    from llava.model.multimodal_encoder.clip_encoder import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(tmp_path)
    args = type("Args", (), {"mm_vision_select_layer": select_layer, "mm_vision_select_feature": "patch"})()
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
