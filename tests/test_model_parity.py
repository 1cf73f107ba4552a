"""The LLaVA-1.5 model against independent references: HF's own Llava, and eager-CLIP FasterVLM."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from reference import greedy, reference_llama, reference_tower, reference_visual_tokens, splice

N = 576  # patches per image of the tiny tower (LLaVA-1.5 geometry)
QUESTIONS = ["What is the color of the bus?", "Is there a dog in the image?\nAnswer the question using a single word or phrase."]


def make_image(seed: int, size=(90, 60)) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8"))


def prompt_ids(tokenizer, question: str) -> torch.Tensor:
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]


@pytest.fixture(scope="module", params=[0, 1], ids=["seed0", "seed1"])
def models(request, tiny_ckpt, tmp_path_factory):
    """Our loaded model plus the reference LLaMA and eager CLIP, for two independent random checkpoints."""
    if request.param == 0:
        ckpt = tiny_ckpt
    else:
        from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

        ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("seed1") / "llava-v1.5-tiny", seed=1)
    tokenizer, model, processor, _ = load_pretrained_model(str(ckpt), None, "llava", device="cpu")
    return ckpt, tokenizer, model, processor, reference_llama(ckpt), reference_tower(ckpt)


@pytest.mark.parametrize("k", [None, 0, 1, 29, 58, 288, 576])
@pytest.mark.parametrize("image_seed", [0, 1])
def test_logits_match_eager_clip_reference(models, k, image_seed):
    ckpt, tokenizer, model, processor, llama, tower = models
    image = make_image(image_seed, size=(90, 60) if image_seed == 0 else (50, 120))
    pixels = process_images([image], processor, model.config)
    ids = prompt_ids(tokenizer, QUESTIONS[image_seed])
    model.set_visual_token_num(k)
    with torch.no_grad():
        ours = model(ids, images=pixels).logits
        visual, keep, scores = reference_visual_tokens(ckpt, tower, pixels, k)
        ref = llama(inputs_embeds=splice(llama, ids, visual[0])).logits
    assert ours.shape == ref.shape == (1, ids.shape[1] - 1 + (N if k is None else k), llama.config.vocab_size)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    info = model.last_pruning
    assert info.visual_tokens == [N if k is None else k]
    assert torch.equal(info.kept_indices[0], keep[0])
    torch.testing.assert_close(info.cls_attn, scores, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("k", [0, 58, 576])
def test_greedy_generation_matches_reference(models, k):
    ckpt, tokenizer, model, processor, llama, tower = models
    pixels = process_images([make_image(2)], processor, model.config)
    ids = prompt_ids(tokenizer, QUESTIONS[0])
    model.set_visual_token_num(k)
    out = model.generate(ids, images=pixels, do_sample=False, num_beams=1, max_new_tokens=12, use_cache=True)
    visual, _, _ = reference_visual_tokens(ckpt, tower, pixels, k)
    ref = greedy(llama, splice(llama, ids, visual[0]), steps=12, eos=tokenizer.eos_token_id)
    assert out.shape[0] == 1 and out[0].tolist() == ref
    assert len(ref) >= 2


@pytest.mark.gpu
def test_kept_tokens_are_in_raster_order_and_top_scored(tiny_model, device, dtype):
    tokenizer, model, processor, _ = tiny_model
    pixels = process_images([make_image(3)], processor, model.config).to(device, dtype)  # as the CLIs pass them
    model.set_visual_token_num(58)
    model(prompt_ids(tokenizer, QUESTIONS[0]).to(device), images=pixels)
    info = model.last_pruning
    kept = info.kept_indices[0]
    assert torch.all(kept[1:] > kept[:-1])
    dropped = torch.ones(N, dtype=torch.bool, device=kept.device)
    dropped[kept] = False
    assert info.cls_attn[0, kept].min() >= info.cls_attn[0, dropped].max()


@pytest.mark.gpu
def test_labels_and_loss_with_images(tiny_model, device, dtype):
    """A training-style forward with labels: visual positions are ignored, text positions scored."""
    tokenizer, model, processor, _ = tiny_model
    pixels = process_images([make_image(4)], processor, model.config).to(device, dtype)
    ids = prompt_ids(tokenizer, QUESTIONS[0]).to(device)
    labels = ids.clone()
    labels[ids == IMAGE_TOKEN_INDEX] = -100
    model.set_visual_token_num(4)
    out = model(ids, images=pixels, labels=labels)
    assert out.loss is not None and torch.isfinite(out.loss)
    assert out.logits.shape[1] == ids.shape[1] - 1 + 4


def to_hf_llava(ckpt, model):
    """Convert our checkpoint to transformers' LlavaForConditionalGeneration (an independent implementation)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from reference import checkpoint_state

    text_cfg = reference_llama(ckpt).config
    config = LlavaConfig(vision_config=CLIPVisionConfig.from_pretrained(ckpt / "vision_tower").to_dict(),
                         text_config=LlamaConfig(**text_cfg.to_dict()).to_dict(), image_token_index=0,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", image_seq_length=N, tie_word_embeddings=False)
    hf = LlavaForConditionalGeneration(config).eval()
    state = {}
    for k, v in checkpoint_state(ckpt).items():
        if k.startswith("model.mm_projector."):
            layer = {"0": "linear_1", "2": "linear_2"}[k.split(".")[2]]
            state[f"model.multi_modal_projector.{layer}.{k.split('.')[-1]}"] = v
        elif k.startswith("model."):
            state["model.language_model." + k[len("model."):]] = v
        else:
            state[k] = v
    # transformers 4.x nests CLIP's modules under .vision_model, 5.x does not; follow the target's naming.
    nested = any(k.startswith("model.vision_tower.vision_model.") for k in hf.state_dict())
    tower_state = model.get_vision_tower().vision_tower.state_dict()
    prefix = "model.vision_tower.vision_model." if nested else "model.vision_tower."
    state.update({prefix + k.removeprefix("vision_model."): v for k, v in tower_state.items()})
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if "position_ids" not in m], (missing, unexpected)
    return hf


def test_unpruned_logits_match_transformers_llava(tiny_ckpt, tiny_model):
    tokenizer, model, processor, _ = tiny_model
    hf = to_hf_llava(tiny_ckpt, model)
    pixels = process_images([make_image(5)], processor, model.config)
    ids = prompt_ids(tokenizer, QUESTIONS[1])
    model.set_visual_token_num(None)
    pos = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero())
    hf_ids = torch.cat([ids[0, :pos], torch.zeros(N, dtype=torch.long), ids[0, pos + 1:]])[None]
    with torch.no_grad():
        ours = model(ids, images=pixels).logits
        theirs = hf(input_ids=hf_ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
