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
from llava.devices import check_device, device_map_for
from llava.errors import InputError
from llava.model.checkpoint import llm_load_kwargs
from reference import (OnOtherDevice, TwoDevices, greedy, reference_llama, reference_tower, reference_visual_tokens,
                       splice)

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


@pytest.mark.parametrize("k", [None, 58])
def test_projector_on_another_device(tiny_ckpt, k):
    """Under device_map="auto" the projector may sit on another GPU than the embeddings: the splice moves its output
    to the text's device (a stand-in second device, see reference.TwoDevices), and the logits are unchanged."""
    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_ckpt), device="cpu", visual_token_num=k)
    pixels = process_images([make_image(5)], processor, model.config)
    ids = prompt_ids(tokenizer, QUESTIONS[0])
    with torch.no_grad():
        expected = model(ids, images=pixels).logits
        model.get_model().mm_projector = OnOtherDevice(model.get_model().mm_projector)
        with TwoDevices():
            got = model(ids, images=pixels).logits
            out = model.generate(ids, images=pixels, do_sample=False, max_new_tokens=3)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert out.shape == (1, 3)


def test_device_flag_values(monkeypatch):
    """cuda:N is one GPU even when several are visible; "auto" spreads only when asked; bad values are one error."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1" and check_device("auto") == "auto" and check_device("cpu") == "cpu"
    assert device_map_for("cuda:1", "auto") == {"": "cuda:1"} and device_map_for("auto") == "auto"
    assert llm_load_kwargs("cuda:1", "auto", False, {})[1]["device_map"] == {"": "cuda:1"}
    assert llm_load_kwargs("auto", "auto", False, {})[1]["device_map"] == "auto"
    assert llm_load_kwargs("cuda", {"model": 0}, False, {})[1]["device_map"] == {"model": 0}
    with pytest.raises(InputError, match=r"--device gpu: expected one of cpu, cuda, cuda:N, auto, mps"):
        check_device("gpu")
    with pytest.raises(InputError, match=r"--device cuda:2: only 2 CUDA GPU"):
        check_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(InputError, match=r"--device cuda: no CUDA GPU is visible here"):
        check_device("cuda")
    with pytest.raises(InputError, match=r"device cuda: no CUDA GPU"):
        load_pretrained_model("no-such-checkpoint", device="cuda")


@pytest.mark.parametrize("side", ["left", "right"])
def test_splice_pads_on_the_side_the_mask_pads(models, side):
    """The spliced batch keeps the prompts' padding side, read from their attention mask (no config toggle): each
    row's embeddings and positions equal its batch-1 splice, and the padding stays on that side."""
    _, tokenizer, model, processor, _, _ = models
    model.set_visual_token_num(58)
    pixels = process_images([make_image(0), make_image(1)], processor, model.config)
    prompts = [prompt_ids(tokenizer, question)[0] for question in QUESTIONS]
    longest = max(len(p) for p in prompts)

    def pad(x):
        return torch.nn.functional.pad(x, (longest - len(x), 0) if side == "left" else (0, longest - len(x)))

    ids = torch.stack([pad(p) for p in prompts])
    mask = torch.stack([pad(torch.ones_like(p)) for p in prompts])
    with torch.no_grad():
        batch = model.splice(ids, mask, None, pixels)
        for row, p in enumerate(prompts):
            one = model.splice(p[None], None, None, pixels[row:row + 1])
            n = one.inputs_embeds.shape[1]
            span = slice(batch.inputs_embeds.shape[1] - n, None) if side == "left" else slice(0, n)
            torch.testing.assert_close(batch.inputs_embeds[row, span], one.inputs_embeds[0], atol=0, rtol=0)
            assert batch.position_ids[row, span].tolist() == list(range(n))
            assert batch.attention_mask[row].sum() == n and bool(batch.attention_mask[row, span].all())
    assert batch.pruning.visual_tokens == [58, 58]
    model.set_visual_token_num(None)
