"""apply_fastervlm on a small random transformers Llava: quantised projectors, prompts without the processor, undo."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from llava.model.hf_pruning import apply_fastervlm, remove_fastervlm

IMAGE_TOKEN, K, N = 5, 7, 576  # 336-px crops of 14-px patches


@pytest.fixture
def hf(dtype, device):
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=336, patch_size=14)
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE_TOKEN,
                         vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=N)
    return LlavaForConditionalGeneration(config).to(device, dtype).eval()


def prompt(tokens: int, device) -> torch.Tensor:
    return torch.tensor([[1, 9, *[IMAGE_TOKEN] * tokens, 11, 12]], device=device)


class Int8Linear(nn.Module):
    """A stand-in for bitsandbytes' Linear8bitLt: int8 weights with a scale; it takes the compute dtype in."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        scale = linear.weight.detach().abs().amax() / 127
        self.weight = nn.Parameter((linear.weight.detach() / scale).round().to(torch.int8), requires_grad=False)
        self.register_buffer("scale", scale)
        self.bias = linear.bias
        self.inputs: list[torch.dtype] = []

    def forward(self, x):
        self.inputs.append(x.dtype)
        return F.linear(x, self.weight.to(x.dtype) * self.scale.to(x.dtype), self.bias)


@pytest.mark.gpu
def test_kept_features_reach_a_quantised_projector_in_the_compute_dtype(hf, dtype, device):
    pixels = torch.randn(1, 3, 336, 336, device=device, dtype=dtype)
    projector = hf.model.multi_modal_projector
    projector.linear_1 = Int8Linear(projector.linear_1)
    apply_fastervlm(hf, K)
    with torch.no_grad():
        quantised = hf(input_ids=prompt(K, device), pixel_values=pixels).logits
        dequantised = nn.Linear(*reversed(projector.linear_1.weight.shape)).to(device, dtype)
        dequantised.weight.copy_(projector.linear_1.weight.to(dtype) * projector.linear_1.scale)
        dequantised.bias.copy_(projector.linear_1.bias)
        projector.linear_1 = dequantised
        reference = hf(input_ids=prompt(K, device), pixel_values=pixels).logits
    assert quantised.dtype == dtype
    torch.testing.assert_close(quantised, reference)


def test_prompt_with_the_full_token_count_names_the_processor(hf, device, dtype):
    apply_fastervlm(hf, K)
    with pytest.raises(ValueError, match=f"holds {N} image tokens, but apply_fastervlm keeps {K} .*pass processor="):
        hf(input_ids=prompt(N, device), pixel_values=torch.zeros(1, 3, 336, 336, device=device, dtype=dtype))


def test_remove_restores_model_and_processor(hf, device, dtype):
    pixels = torch.randn(1, 3, 336, 336, device=device, dtype=dtype)
    with torch.no_grad():
        before = hf(input_ids=prompt(N, device), pixel_values=pixels).logits
    processor = SimpleNamespace(vision_feature_select_strategy="default", patch_size=14, num_additional_image_tokens=1,
                                image_processor=SimpleNamespace(crop_size={"height": 336, "width": 336}))
    apply_fastervlm(hf, K, processor)
    assert processor.num_additional_image_tokens == K - N + 1
    apply_fastervlm(hf, K + 1, processor)  # again: replaces, and the undo still restores the original
    with torch.no_grad():
        hf(input_ids=prompt(K + 1, device), pixel_values=pixels)
    assert hf.last_pruning.kept_indices[0].numel() == K + 1
    remove_fastervlm(hf)
    assert processor.num_additional_image_tokens == 1 and hf.fastervlm is None
    assert "get_image_features" not in vars(hf.model) and "get_placeholder_mask" not in vars(hf.model)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=prompt(N, device), pixel_values=pixels).logits, before)
    with pytest.raises(ValueError, match="was not applied"):
        remove_fastervlm(hf)
