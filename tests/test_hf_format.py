"""Transformers-format (llava-hf) checkpoints: loaded by our loader, by transformers' own classes, and pruned inside them.

The tiny original-layout checkpoints are converted with ``llava.tools.convert_checkpoint``; transformers' own
``Llava*ForConditionalGeneration`` classes are the independent reference twice over: loading the converted folder
they must reproduce our original-layout model (so the conversion is right), and our loader on that folder must
reproduce them (so the loading is right). Between the two layouts of the same weights everything must agree at
every budget and with every pruning method: logits, greedy tokens, ``last_pruning``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration,
                          VideoLlavaForConditionalGeneration)

from conftest import TEST_DEVICE, TEST_DTYPE, requires_in_llm
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.eval import model_vqa_loader, run_llava
from llava.eval.utils import InputError
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model, read_model_config
from llava.model.llava_arch import get_mm_patch_merge_type
from llava.model.hf_pruning import apply_fastervlm
from llava.pruning import InLLMPruningMethod, available_methods, get_method
from llava.tools import convert_checkpoint
from llava.tools.make_sample_data import make_sample_data
from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint
from llava.tools.make_tiny_video_checkpoint import make_tiny_video_checkpoint
from test_pruning import deep_ckpt  # noqa: F401  (a fixture: the tiny LLaVA-1.5 with 4 LLM layers)

ROOT = Path(__file__).resolve().parents[1]
N = 576  # patches per 336-px crop of the tiny towers
FRAME = 256  # patches per Video-LLaVA frame
ARCHS = ("v1.5", "next", "video")
HF_CLASSES = {"v1.5": LlavaForConditionalGeneration, "next": LlavaNextForConditionalGeneration,
              "video": VideoLlavaForConditionalGeneration}
QUESTION = "What is the color of the bus?"


def make_image(seed: int, size=(90, 60)) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8"))


def prompt_ids(tokenizer, placeholders: int = 1, question: str = QUESTION) -> torch.Tensor:
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>" * placeholders + "\n" + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]


def hf_ids(ids: torch.Tensor, image_token: int, count: int) -> torch.Tensor:
    """Our (1, L) ids with one IMAGE_TOKEN_INDEX → transformers' ids with ``count`` image tokens there."""
    pos = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero())
    return torch.cat([ids[0, :pos], torch.full((count,), image_token), ids[0, pos + 1:]])[None]


@pytest.fixture(scope="module")
def originals(deep_ckpt, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("original")
    # LLaVA-1.5 with 4 LLM layers, so that every in-LLM method (cls-llm-layer2 prunes before layer 2) has layers to run
    return {"v1.5": deep_ckpt, "next": make_tiny_checkpoint(root / "llava-v1.6-tiny", arch="next"),
            # transformers' Video-LLaVA towers are plain CLIP ViTs: no temporal attention
            "video": make_tiny_video_checkpoint(root / "Video-LLaVA-tiny", add_time_attn=False)}


@pytest.fixture(scope="module")
def hf_ckpts(originals, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {arch: convert_checkpoint.to_transformers(path, root / f"{path.name}-hf", torch.float32)
            for arch, path in originals.items()}


@pytest.fixture(scope="module")
def models(originals, hf_ckpts):
    """``models(arch, layout)`` → (tokenizer, model, processor), each loaded once (FASTERVLM_TEST_DEVICE / _DTYPE)."""
    cache = {}

    def get(arch: str, layout: str):
        if (arch, layout) not in cache:
            path = (originals if layout == "original" else hf_ckpts)[arch]
            tokenizer, model, processor, _ = load_pretrained_model(str(path), device=str(TEST_DEVICE), dtype=TEST_DTYPE)
            cache[arch, layout] = tokenizer, model, processor
        return cache[arch, layout]

    return get


@pytest.fixture(scope="module")
def transformers_models(hf_ckpts):
    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = HF_CLASSES[arch].from_pretrained(hf_ckpts[arch], dtype=torch.float32).eval()
        return cache[arch]

    return get


def configure(k, protocol, *models) -> None:
    for model in models:
        model.set_visual_token_num(k)
        if protocol is not None:
            model.set_anyres_protocol(protocol)


def inputs(models, arch: str, layout: str, seed: int = 0):
    """(ids, images, image_sizes) of one question under ``layout``'s model, as configured: an image (LLaVA-NeXT: its
    crops under the model's anyres protocol), a video for Video-LLaVA."""
    tokenizer, model, processor = models(arch, layout)
    if arch == "video":
        video = torch.randn(1, 3, 8, 224, 224, generator=torch.Generator().manual_seed(seed))
        return prompt_ids(tokenizer, placeholders=8).to(TEST_DEVICE), video.to(TEST_DEVICE, TEST_DTYPE), None
    image = make_image(seed, (90, 60) if seed % 2 == 0 else (50, 120))
    pixels = process_images([image], processor, model.config).to(TEST_DEVICE, TEST_DTYPE)
    return prompt_ids(tokenizer).to(TEST_DEVICE), pixels, [image.size]


def logits(model, ids, images, sizes) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, images=images, image_sizes=sizes).logits


def assert_same_pruning(a, b):
    assert a.visual_tokens == b.visual_tokens and a.crops_per_image == b.crops_per_image and a.llm_layer == b.llm_layer
    assert len(a.kept_indices) == len(b.kept_indices) and all(map(torch.equal, a.kept_indices, b.kept_indices))
    assert all(map(torch.equal, a.token_sources, b.token_sources))
    if a.cls_attn is not None or b.cls_attn is not None:
        torch.testing.assert_close(a.cls_attn, b.cls_attn, atol=1e-7, rtol=1e-6)


# --- the converted folder is what transformers' own classes load --------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_loads_every_weight_of_the_converted_checkpoint(hf_ckpts, arch):
    _, info = HF_CLASSES[arch].from_pretrained(hf_ckpts[arch], output_loading_info=True)
    assert not [k for k in info["missing_keys"] if "position_ids" not in k], info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    config = json.loads((hf_ckpts[arch] / "config.json").read_text())
    assert config["text_config"]["vocab_size"] % 64 == 0 and "mm_vision_tower" not in config


def transformers_logits(hf, arch: str, ids, images, sizes, image_token: int, count: int) -> torch.Tensor:
    with torch.no_grad():
        if arch == "video":  # an image through Video-LLaVA's image tower
            return hf(input_ids=hf_ids(ids, image_token, count), pixel_values_images=images).logits
        kwargs = {"image_sizes": torch.tensor([[h, w] for w, h in sizes])} if arch == "next" else {}
        return hf(input_ids=hf_ids(ids, image_token, count), pixel_values=images, **kwargs).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_unpruned_logits_of_transformers_equal_both_layouts(models, transformers_models, arch):
    """On the same pixels, at every visual token: transformers == our original layout == our transformers layout."""
    hf = transformers_models(arch)
    image_token = hf.config.image_token_index
    tokenizer, original, processor = models(arch, "original")
    _, ours, _ = models(arch, "transformers")
    configure(None, "vanilla" if arch == "next" else None, original, ours)
    image = make_image(3, (90, 60))
    if arch == "video":
        ids, images, sizes = prompt_ids(tokenizer), processor["image"].preprocess(image, return_tensors="pt")["pixel_values"], None
    else:
        ids, images, sizes = prompt_ids(tokenizer), process_images([image], processor, original.config), [image.size]
    reference = logits(original, ids, images, sizes)
    count = original.last_pruning.visual_tokens[0]
    if arch != "next":  # NeXT's count depends on the image's grid and unpadding
        assert count == (FRAME if arch == "video" else N)
    theirs = transformers_logits(hf, arch, ids, images, sizes, image_token, count)
    mine = logits(ours, ids, images, sizes)
    vocab = reference.shape[-1]
    assert theirs.shape[-1] > vocab  # the added <image>/<pad> tokens, padded to 64
    torch.testing.assert_close(theirs[..., :vocab], reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


# --- our two layouts of the same weights agree at every budget ----------------------------------------------------

# gpu: every case runs again in fp16/bf16 (CI's bf16 lane). LLaVA-1.5's transformers layout loads its fp32 tower
# from the stored weights, not from the copy from_pretrained rounded to the LLM's dtype.
BUDGETS = [pytest.param("v1.5", None, k, marks=pytest.mark.gpu) for k in (None, 0, 1, 29, 58, 144, 288, 576)] + \
          [pytest.param("next", p, k, marks=pytest.mark.gpu) for p in ("paper", "vanilla") for k in (None, 0, 58, 576)] + \
          [pytest.param("video", None, k, marks=pytest.mark.gpu) for k in (None, 0, 13, 64, 256)]


@pytest.mark.parametrize("arch, protocol, k", BUDGETS)
def test_both_layouts_agree_at_every_budget(models, arch, protocol, k):
    _, original, _ = models(arch, "original")
    _, ours, _ = models(arch, "transformers")
    configure(k, protocol, original, ours)
    ids, images, sizes = inputs(models, arch, "original", seed=1)
    reference, mine = logits(original, ids, images, sizes), logits(ours, ids, images, sizes)
    torch.testing.assert_close(mine[..., :reference.shape[-1]], reference, atol=1e-5, rtol=1e-5)  # same arithmetic
    assert_same_pruning(ours.last_pruning, original.last_pruning)
    kept = ours.last_pruning.kept_indices
    assert all(len(x) == (FRAME if arch == "video" else N) if k is None else len(x) == k for x in kept)


def method_params(name: str) -> list:
    marks = [requires_in_llm] if isinstance(get_method(name), InLLMPruningMethod) else []
    return pytest.param(name, marks=marks)


# Multi-stage methods' default layers (8/16/24, 2/6/15) and budgets do not fit the 4-layer tiny LLM.
TINY_PARAMS = {"pdrop": {"layers": "1,2", "ratio": 0.5}, "sparsevlm": {"layers": "1,2", "keeps": "58,29"}}


@pytest.mark.parametrize("method", [method_params(m) for m in available_methods()])
def test_every_pruning_method_agrees_across_layouts(models, method):
    _, original, _ = models("v1.5", "original")
    _, ours, _ = models("v1.5", "transformers")
    configure(58, None, original, ours)
    ids, images, sizes = inputs(models, "v1.5", "original", seed=2)
    try:
        for model in (original, ours):
            model.set_pruning_method(method, **TINY_PARAMS.get(method, {}))
        reference, mine = logits(original, ids, images, sizes), logits(ours, ids, images, sizes)
    finally:
        for model in (original, ours):
            model.set_pruning_method("fastervlm")
    torch.testing.assert_close(mine[..., :reference.shape[-1]], reference, atol=1e-5, rtol=1e-5)
    assert_same_pruning(ours.last_pruning, original.last_pruning)


@pytest.mark.parametrize("arch, protocol, k", [("v1.5", None, 58), ("next", "paper", 58), ("next", "vanilla", 58),
                                               ("video", None, 13)])
def test_greedy_tokens_equal_when_pruned(models, arch, protocol, k):
    tokenizer, original, _ = models(arch, "original")
    _, ours, _ = models(arch, "transformers")
    configure(k, protocol, original, ours)
    ids, images, sizes = inputs(models, arch, "original", seed=4)
    outputs = []
    for model in (original, ours):
        outputs.append(model.generate(ids, images=images, image_sizes=sizes, do_sample=False, num_beams=1,
                                      max_new_tokens=12, use_cache=True, pad_token_id=tokenizer.eos_token_id))
    assert outputs[0].shape[1] >= 2 and torch.equal(outputs[0], outputs[1])
    assert_same_pruning(ours.last_pruning, original.last_pruning)


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_preprocessing_and_config_follow_the_original(models, originals, hf_ckpts, arch):
    tok_a, original, proc_a = models(arch, "original")
    tok_b, ours, proc_b = models(arch, "transformers")
    assert torch.equal(prompt_ids(tok_a), prompt_ids(tok_b))
    configure(None, "vanilla" if arch == "next" else None, original, ours)
    assert len(tok_b) == len(tok_a) + (3 if arch == "video" else 2)  # <image> (<video>) and <pad>
    image = make_image(5, (70, 40))
    if arch == "video":
        assert set(proc_b) == {"image", "video"}
        a, b = (p["image"].preprocess(image, return_tensors="pt")["pixel_values"] for p in (proc_a, proc_b))
    else:
        a, b = (process_images([image], p, m.config) for p, m in ((proc_a, original), (proc_b, ours)))
    assert torch.equal(a, b)
    cfg = read_model_config(hf_ckpts[arch])
    assert cfg["hf_model_type"] == {"v1.5": "llava", "next": "llava_next", "video": "video_llava"}[arch]
    for key in ("image_aspect_ratio", "image_grid_pinpoints", "mm_vision_select_layer", "mm_vision_select_feature",
                "tokenizer_model_max_length"):
        assert ours.config.to_dict().get(key) == original.config.to_dict().get(key), key
    assert get_mm_patch_merge_type(ours.config) == get_mm_patch_merge_type(original.config)
    # LLaVA-1.5's tower runs in fp32 as the original layout loads it from mm_vision_tower, even beside an fp16 LLM.
    if arch == "v1.5":
        _, half, _, _ = load_pretrained_model(str(hf_ckpts[arch]), device="cpu", dtype=torch.float16)
        assert half.get_vision_tower().dtype == torch.float32 and half.dtype == torch.float16


@pytest.mark.parametrize("arch", ["v1.5", "next"])
def test_a_checkpoint_saved_by_transformers_itself_loads(models, transformers_models, hf_ckpts, tmp_path, arch):
    """transformers' save_pretrained writes its release's own layout (5.x: a flat vision tower)."""
    folder = tmp_path / "saved"
    transformers_models(arch).save_pretrained(folder)
    AutoProcessor.from_pretrained(hf_ckpts[arch]).save_pretrained(folder)
    shutil.copy(hf_ckpts[arch] / "tokenizer.model", folder / "tokenizer.model")
    _, reloaded, _, _ = load_pretrained_model(str(folder), device="cpu")
    _, ours, _ = models(arch, "transformers")
    configure(58, "paper" if arch == "next" else None, reloaded, ours)
    ids, images, sizes = inputs(models, arch, "transformers", seed=6)
    torch.testing.assert_close(logits(reloaded, ids, images, sizes), logits(ours, ids, images, sizes),
                               atol=1e-5, rtol=1e-5)


# --- apply_fastervlm: pruning inside transformers' own generate ---------------------------------------------------

@pytest.mark.parametrize("arch", ["v1.5", "next"])
def test_apply_fastervlm_makes_transformers_generate_our_tokens(models, hf_ckpts, arch):
    tokenizer, original, processor = models(arch, "original")
    hf = HF_CLASSES[arch].from_pretrained(hf_ckpts[arch], dtype=torch.float32).eval()
    hf_processor = apply_fastervlm(hf, 58, AutoProcessor.from_pretrained(hf_ckpts[arch]))
    crops = 1 if arch == "v1.5" else 5
    image = make_image(7, (336, 336))
    if arch == "next":
        original.set_anyres_protocol("paper")
    original.set_visual_token_num(58)
    pixels = process_images([image], processor, original.config)
    ids = prompt_ids(tokenizer)
    ours = original.generate(ids, images=pixels, image_sizes=[image.size], do_sample=False, max_new_tokens=12)
    expected = original.last_pruning
    sizes = {"image_sizes": torch.tensor([[336, 336]])} if arch == "next" else {}
    prompt = hf_ids(ids, hf.config.image_token_index, crops * 58)
    theirs = hf.generate(input_ids=prompt, pixel_values=pixels, do_sample=False, max_new_tokens=12, **sizes)
    assert ours.shape[1] >= 2 and theirs[0, prompt.shape[1]:].tolist() == ours[0].tolist()
    got = hf.last_pruning
    assert got.crops_per_image == [crops] and all(map(torch.equal, got.kept_indices, expected.kept_indices))
    assert all(map(torch.equal, got.token_sources, expected.token_sources))
    torch.testing.assert_close(got.cls_attn, expected.cls_attn, atol=1e-7, rtol=1e-6)
    # The processor writes the matching number of image tokens (and cuts NeXT images on the 2×2 grid).
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\n" + QUESTION)
    conv.append_message(conv.roles[1], None)
    batch = hf_processor(images=make_image(8, (200, 90)), text=conv.get_prompt(), return_tensors="pt")
    assert int((batch["input_ids"] == hf.config.image_token_index).sum()) == crops * 58
    assert hf.generate(**batch, do_sample=False, max_new_tokens=3).shape[1] > batch["input_ids"].shape[1]


@pytest.mark.parametrize("method", [m for m in available_methods() if not isinstance(get_method(m), InLLMPruningMethod)])
def test_apply_fastervlm_takes_every_before_llm_method(models, hf_ckpts, method):
    _, original, _ = models("v1.5", "original")
    hf = LlavaForConditionalGeneration.from_pretrained(hf_ckpts["v1.5"]).eval()
    apply_fastervlm(hf, 29, pruning_method=method)
    configure(29, None, original)
    original.set_pruning_method(method)
    try:
        ids, pixels, sizes = inputs(models, "v1.5", "original", seed=9)
        reference = logits(original, ids, pixels, sizes)
    finally:
        original.set_pruning_method("fastervlm")
    with torch.no_grad():
        theirs = hf(input_ids=hf_ids(ids, hf.config.image_token_index, 29), pixel_values=pixels).logits
    torch.testing.assert_close(theirs[..., :reference.shape[-1]], reference, atol=1e-5, rtol=1e-5)
    assert all(map(torch.equal, hf.last_pruning.kept_indices, original.last_pruning.kept_indices))


def test_apply_fastervlm_refusals(transformers_models):
    hf = transformers_models("v1.5")
    with pytest.raises(ValueError, match=r"visual_token_num must be an integer in \[0, 576\]"):
        apply_fastervlm(hf, 577)
    with pytest.raises(NotImplementedError, match="prunes inside the LLM"):
        apply_fastervlm(hf, 58, pruning_method="fastv")
    with pytest.raises(NotImplementedError, match="Video-LLaVA"):
        apply_fastervlm(transformers_models("video"), 58)


# --- every entry point takes the transformers layout --------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> Path:
    return make_sample_data(tmp_path_factory.mktemp("data"), questions=3)


def vqa_args(ckpt: Path, data: Path, answers: Path, *extra: str) -> list[str]:
    return ["--model-path", str(ckpt), "--question-file", str(data / "textvqa/llava_textvqa_val_v051_ocr.jsonl"),
            "--image-folder", str(data / "textvqa/train_images"), "--answers-file", str(answers), "--temperature", "0",
            "--conv-mode", "vicuna_v1", "--max_new_tokens", "6", "--device", "cpu", *extra]


def answers(path: Path) -> list[tuple]:
    return [(line["question_id"], line["text"]) for line in map(json.loads, path.read_text().splitlines())]


def test_model_vqa_loader_cli_on_a_transformers_checkpoint(originals, hf_ckpts, sample_data, tmp_path):
    """``python -m llava.eval.model_vqa_loader --model-path <llava-hf folder>`` answers as the original layout does."""
    result = subprocess.run([sys.executable, "-m", "llava.eval.model_vqa_loader",
                             *vqa_args(hf_ckpts["v1.5"], sample_data, tmp_path / "hf.jsonl", "--visual-token-num", "58")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Average number of visual tokens: 58.00" in result.stdout
    model_vqa_loader.main(vqa_args(originals["v1.5"], sample_data, tmp_path / "orig.jsonl", "--visual-token-num", "58"))
    assert answers(tmp_path / "hf.jsonl") == answers(tmp_path / "orig.jsonl") and len(answers(tmp_path / "hf.jsonl")) == 3


def test_next_cli_records_the_anyres_protocol_and_answers_as_the_original(originals, hf_ckpts, sample_data, tmp_path):
    for name, ckpt in (("hf", hf_ckpts["next"]), ("orig", originals["next"])):
        model_vqa_loader.main(vqa_args(ckpt, sample_data, tmp_path / f"{name}.jsonl", "--visual-token-num", "58",
                                       "--pruning-method", "random"))
    manifest = json.loads((tmp_path / "hf.jsonl.manifest.json").read_text())
    assert manifest["settings"]["model"]["anyres_protocol"] == "paper"
    assert answers(tmp_path / "hf.jsonl") == answers(tmp_path / "orig.jsonl")


def test_run_llava_on_a_transformers_checkpoint(hf_ckpts, sample_data, capsys):
    image = next((sample_data / "textvqa/train_images").iterdir())
    assert run_llava.infer_conv_mode("llava-1.5-7b-hf") == "llava_v1"
    text = run_llava.eval_model(run_llava_args(hf_ckpts["v1.5"], image, "--record-kept"))
    out = capsys.readouterr().out.splitlines()
    assert text and "[visual tokens kept: 58]" in out
    kept = json.loads(out[-1])["kept"]
    assert len(kept) == 1 and len(kept[0]) == 58 and kept[0] == sorted(set(kept[0])) and kept[0][-1] < 576


def run_llava_args(ckpt: Path, image: Path, *flags: str):
    from llava.eval.runner import parse_args

    return parse_args(run_llava.build_parser(), ["--model-path", str(ckpt), "--image-file", str(image), "--query",
                                                 "What is written?", "--temperature", "0", "--max_new_tokens", "4",
                                                 "--visual-token-num", "58", "--device", "cpu", *flags])


def test_video_cli_on_a_transformers_checkpoint(originals, hf_ckpts, tmp_path):
    pytest.importorskip("av")
    from llava.eval.video import run_inference_video_qa as video_cli
    from test_video import QUESTION as VIDEO_QUESTION, write_video

    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos/a.mp4", 12)
    (tmp_path / "q.json").write_text(json.dumps([{"video_name": "a", "question": VIDEO_QUESTION, "question_id": "a0"}]))
    (tmp_path / "a.json").write_text(json.dumps([{"answer": "red", "type": 3, "question_id": "a0"}]))
    preds = []
    for name, ckpt in (("hf", hf_ckpts["video"]), ("orig", originals["video"])):
        video_cli.main(["--model-path", str(ckpt), "--video-dir", str(tmp_path / "videos"), "--gt-file-question",
                        str(tmp_path / "q.json"), "--gt-file-answers", str(tmp_path / "a.json"), "--answers-file",
                        str(tmp_path / f"{name}.jsonl"), "--device", "cpu", "--max-new-tokens", "5",
                        "--visual-token-num", "13", "--protocol", "greedy"])
        preds.append([json.loads(l)["pred"] for l in (tmp_path / f"{name}.jsonl").read_text().splitlines()])
    assert preds[0] == preds[1] and len(preds[0]) == 1


# --- the converter CLI and refusals -------------------------------------------------------------------------------

def test_converter_cli_round_trip(models, hf_ckpts, tmp_path, capsys):
    back = tmp_path / "original"
    convert_checkpoint.main([str(hf_ckpts["next"]), str(back), "--dtype", "float32"])
    assert "original layout" in capsys.readouterr().out
    assert not read_model_config(back).get("text_config") and read_model_config(back)["mm_vision_config"]
    keys = {k for shard in back.glob("*.safetensors") for k in load_file(shard)}
    assert all(k.startswith(("model.", "lm_head.")) for k in keys) and "model.image_newline" in keys
    _, reloaded, _, _ = load_pretrained_model(str(back), device="cpu")
    _, ours, _ = models("next", "transformers")
    configure(58, "vanilla", reloaded, ours)
    ids, images, sizes = inputs(models, "next", "transformers", seed=10)
    torch.testing.assert_close(logits(reloaded, ids, images, sizes), logits(ours, ids, images, sizes),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="not empty"):
        convert_checkpoint.main([str(hf_ckpts["next"]), str(back)])


def test_converter_refuses_temporal_attention(tmp_path):
    ckpt = make_tiny_video_checkpoint(tmp_path / "Video-LLaVA-tiny", add_time_attn=True)
    with pytest.raises(NotImplementedError, match="temporal attention"):
        convert_checkpoint.to_transformers(ckpt, tmp_path / "out")


def variant(src: Path, dst: Path, config_updates: dict | None = None, drop: str | None = None,
            without: tuple[str, ...] = ()) -> Path:
    """A copy of a transformers-format folder with an edited config, a weight removed or files left out."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*without))
    if config_updates:
        config = json.loads((dst / "config.json").read_text())
        for key, value in config_updates.items():
            section, _, field = key.rpartition(".")
            (config[section] if section else config)[field] = value
        (dst / "config.json").write_text(json.dumps(config))
    if drop:
        state = load_file(dst / "model.safetensors")
        save_file({k: v for k, v in state.items() if k != drop}, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("updates, drop, without, error, match", [
    ({"text_config.model_type": "mistral"}, None, (), NotImplementedError, "text_config.model_type 'mistral'"),
    ({"vision_feature_layer": [-2, -5]}, None, (), NotImplementedError, "features of several layers"),
    ({"projector_hidden_act": "silu"}, None, (), NotImplementedError, "projector"),
    (None, "multi_modal_projector.linear_2.bias", (), InputError, "1 weights missing"),
    (None, None, ("preprocessor_config.json", "processor_config.json"), InputError, "no preprocessor_config.json"),
])
def test_unsupported_or_damaged_transformers_checkpoints_are_named(hf_ckpts, tmp_path, updates, drop, without, error,
                                                                   match):
    folder = variant(hf_ckpts["v1.5"], tmp_path / "variant", updates, drop, without)
    with pytest.raises(error, match=match) as raised:
        load_pretrained_model(str(folder), device="cpu")
    assert str(folder) in str(raised.value)


@pytest.mark.parametrize("arch, family", [("v1.5", "v1_5"), ("next", "v1_6")])
def test_benchmark_script_on_a_transformers_checkpoint(hf_ckpts, tmp_path, arch, family):
    """``CKPT=<llava-hf folder> bash scripts/<family>/eval/textvqa.sh 58``: answers, merged and scored."""
    name = hf_ckpts[arch].name
    shutil.copytree(hf_ckpts[arch], tmp_path / "checkpoints" / name)
    eval_dir = make_sample_data(tmp_path / "eval", questions=2)
    environ = {**os.environ, "CKPT": name, "CKPT_DIR": str(tmp_path / "checkpoints"), "EVAL_DIR": str(eval_dir),
               "PYTHON": sys.executable, "EXTRA_ARGS": "--device cpu --max_new_tokens 4", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(ROOT / "scripts" / family / "eval/textvqa.sh"), "58"], env=environ, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Average number of visual tokens: {58 * (5 if arch == 'next' else 1)}.00" in result.stdout
    score = json.loads((eval_dir / f"textvqa/scores/{name}/fastervlm/n_58.json").read_text())
    assert score["benchmark"] == "textvqa" and isinstance(score["score"], (int, float))


def test_flops_calculator_reads_a_transformers_config(hf_ckpts, tmp_path):
    from llava.bench import flops

    tiny = flops.load_config_json(hf_ckpts["next"] / "config.json")
    assert (tiny.llm.num_layers, tiny.llm.hidden_size, tiny.num_crops) == (2, 64, 5)
    assert (tiny.vision.num_layers, tiny.vision.image_size, tiny.vision.patch_size) == (3, 336, 14)
    assert flops.load_config_json(hf_ckpts["video"] / "config.json").num_crops == 8
    # Shaped as llava-hf's LLaVA-1.5-7B config: partial text/vision configs, completed by transformers' defaults.
    hub_like = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 32000,
                "pad_token_id": 32001, "projector_hidden_act": "gelu", "vision_feature_layer": -2,
                "vision_feature_select_strategy": "default", "vocab_size": 32064, "tie_word_embeddings": False,
                "text_config": {"model_type": "llama", "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
                                "vocab_size": 32064},
                "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
                                  "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                                  "patch_size": 14, "projection_dim": 768}}
    (tmp_path / "config.json").write_text(json.dumps(hub_like))
    model, preset = flops.load_config_json(tmp_path / "config.json"), flops.PRESETS["llava-v1.5-7b"]
    assert model.num_crops == 1 and model.visual_tokens == 576
    assert flops.llm_prefill_flops(model, 634) == flops.llm_prefill_flops(preset, 634)
    assert flops.vision_encoder_flops(model) == flops.vision_encoder_flops(preset)
