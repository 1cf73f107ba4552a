"""Video-LLaVA with per-frame FasterVLM: towers, selection, the HF reference, decoding, the inference CLI and scripts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.eval.runner import build_prompt
from llava.eval.utils import InputError
from llava.eval.video import run_inference_video_qa as cli
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.multimodal_encoder.languagebind import LanguageBindVideoTower, LanguageBindVisionTransformer
from llava.pruning.base import select_topk_raster
from llava.tools.make_tiny_video_checkpoint import TOWER as TINY_TOWER
from llava.tools.make_tiny_video_checkpoint import make_tiny_video_checkpoint
from llava.video_utils import (VideoProcessor, available_backends, decoder_info, preprocess_frames, read_frames,
                               resolve_backend, sample_indices)
from conftest import DEVICE_ARGS, requires_in_llm
from reference import OnOtherDevice, TwoDevices, greedy, kept_set_agreement
from reference_video import (checkpoint_state, eager_languagebind, hf_logits, hf_video_llava, hf_video_tokens, project,
                             reference_frame_tokens, reference_llama, reference_video_tower, tower_config, tower_state)

ROOT = Path(__file__).resolve().parents[1]
N = 256  # patches per 224-px frame
TOWERS = {"image_tower": "LanguageBind_Image", "video_tower": "LanguageBind_Video_merge"}  # attribute → folder
IMAGE = "model.image_tower.image_tower."  # the embedded copies' prefixes
VIDEO = "model.video_tower.video_tower."
QUESTION = "What is the color of the bus?"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[bool, Path]:
    """Tiny Video-LLaVA checkpoints with (True) and without (False) temporal attention in the video tower."""
    root = tmp_path_factory.mktemp("video")
    return {t: make_tiny_video_checkpoint(root / f"Video-LLaVA-tiny-{t}", seed=int(t), add_time_attn=t) for t in (True, False)}


@pytest.fixture(scope="module")
def models(ckpts) -> dict[bool, tuple]:
    return {t: load_pretrained_model(str(path), device="cpu")[:2] for t, path in ckpts.items()}


def clip(seed: int = 0, frames: int = 8) -> torch.Tensor:
    """A normalised-looking random video, (1, 3, T, 224, 224)."""
    return torch.randn(1, 3, frames, 224, 224, generator=torch.Generator().manual_seed(seed))


def prompt_ids(tokenizer, images: int = 8) -> torch.Tensor:
    return tokenizer_image_token(build_prompt(QUESTION, images, "llava_v1", False), tokenizer, return_tensors="pt")[None]


def splice(llama, ids: torch.Tensor, visual: list[torch.Tensor]) -> torch.Tensor:
    """(1, L) ids with one placeholder per tensor of ``visual`` → (1, L', D) input embeddings."""
    embed, pieces, start = llama.get_input_embeddings(), [], 0
    for pos, v in zip((ids[0] == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist(), visual):
        pieces += [embed(ids[0, start:pos]), v]
        start = pos + 1
    return torch.cat(pieces + [embed(ids[0, start:])])[None]


# ---------------------------------------------------------------- model

@pytest.fixture(scope="module")
def reference(ckpts) -> tuple:
    """The eager video tower's layer -2 on ``clip(1)``, and the stock LLaMA of the temporal-attention checkpoint."""
    return reference_video_tower(ckpts[True], clip(1)), reference_llama(ckpts[True])


@pytest.mark.parametrize("k", [None, 256, 64, 13, 0])
def test_per_frame_selection_matches_eager_reference(ckpts, models, reference, k):
    """Layer -2 spatial [CLS] row, head mean, independent top-L per frame in raster order, then the LLM: all equal
    to a plain-torch eager LanguageBind (temporal attention on) feeding a stock LlamaForCausalLM."""
    tokenizer, model = models[True]
    (features, cls_attn), llama = reference
    ids = prompt_ids(tokenizer)
    model.set_visual_token_num(k)
    with torch.no_grad():
        ours = model(ids, images=[clip(1)[0]]).logits
        tokens, keep, scores = reference_frame_tokens(ckpts[True], features, cls_attn, k)
        ref = llama(inputs_embeds=splice(llama, ids, list(tokens[0]))).logits
    L = N if k is None else k
    info = model.last_pruning
    assert info.visual_tokens == [8 * L] and ours.shape == ref.shape
    assert all(torch.equal(ours_k, ref_k) for ours_k, ref_k in zip(info.kept_indices, keep[0]))
    torch.testing.assert_close(info.cls_attn, scores[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_hf_videollava_parity_without_temporal_attention(ckpts, models):
    """With add_time_attn off the tower is a plain CLIP ViT: our unpruned frame tokens are HF VideoLlava's minus [CLS]
    (FasterVLM's 256 per frame where Video-LLaVA fed 257), and given the same tokens the LLMs agree."""
    tokenizer, model = models[False]
    video, ids = clip(2), prompt_ids(tokenizer)
    video_token = 3  # a byte-fallback piece the prompt does not use
    assert video_token not in ids
    hf, dropped = hf_video_llava(ckpts[False], video_token)
    assert dropped == []
    model.set_visual_token_num(None)
    with torch.no_grad():
        ours = model(ids, images=[video[0]]).logits
        hf_tokens = hf_video_tokens(hf, video)  # (8, 1+N, D)
        torch.testing.assert_close(torch.stack(model.encode_videos(video)[0]), hf_tokens[:, 1:], atol=1e-5, rtol=1e-5)
        placeholder = (ids[0] == IMAGE_TOKEN_INDEX).nonzero().flatten()
        hf_ids = torch.cat([ids[0, :placeholder[0]], torch.full((8 * N,), video_token), ids[0, placeholder[-1] + 1:]])[None]
        theirs = hf_logits(hf, hf_ids, video_token, hf_tokens[:, 1:].reshape(8 * N, -1))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_temporal_attention_is_what_hf_videollava_drops(ckpts, models):
    """HF's conversion loads LanguageBind_Video_merge into a plain CLIP, silently dropping the temporal weights.
    Ours uses them: frames exchange information, and only with the temporal branch zeroed do the two agree."""
    tokenizer, model = models[True]
    hf, dropped = hf_video_llava(ckpts[True], video_token_id=3)
    assert dropped and all(".temporal_" in key and key.startswith("model.video_tower.") for key in dropped)
    assert len(dropped) == 3 * 11  # per layer: temporal_embedding, temporal_attn (8), temporal_layer_norm1 (2)
    video = clip(3)
    model.set_visual_token_num(None)
    with torch.no_grad():
        theirs = hf_video_tokens(hf, video)[:, 1:]
        ours = torch.stack(model.encode_videos(video)[0])
        assert (ours - theirs).abs().max() > 1e-2
        # Frames mix: changing frame 5 changes frame 0's tokens for us, never for the per-frame HF tower.
        edited = video.clone()
        edited[:, :, 5] += 1
        assert (torch.stack(model.encode_videos(edited)[0])[0] - ours[0]).abs().max() > 1e-4
        theirs_edited = hf_video_tokens(hf, edited)[:, 1:]
        torch.testing.assert_close(theirs_edited[0], theirs[0], atol=0, rtol=0)
        saved = {k: v.clone() for k, v in model.state_dict().items() if "temporal_" in k}
        try:
            for layer in model.get_model().video_tower.video_tower.encoder.layers:
                for p in (layer.temporal_embedding, layer.temporal_attn.out_proj.weight, layer.temporal_attn.out_proj.bias):
                    p.zero_()
            torch.testing.assert_close(torch.stack(model.encode_videos(video)[0]), theirs, atol=1e-5, rtol=1e-5)
        finally:
            model.load_state_dict(saved, strict=False)


def test_images_are_not_pruned_and_mix_with_videos(ckpts, models):
    """An image next to a video: the image tower's 256 patches all enter, the video frames are pruned."""
    tokenizer, model = models[True]
    image, video = clip(4, frames=1)[0, :, 0], clip(5)[0]
    ids = tokenizer_image_token(build_prompt("<image>\n" + QUESTION, 8, "llava_v1", False), tokenizer, return_tensors="pt")[None]
    model.set_visual_token_num(13)
    with torch.no_grad():
        model(ids, images=[image, video])
        state = {**checkpoint_state(ckpts[True]), **tower_state(ckpts[True], "LanguageBind_Image", IMAGE)}
        hidden, attn = eager_languagebind(state, IMAGE, tower_config(ckpts[True], "LanguageBind_Image"), image[None, :, None])
    info = model.last_pruning
    assert info.visual_tokens == [N + 8 * 13]
    assert torch.equal(info.kept_indices[0], torch.arange(N)) and [len(k) for k in info.kept_indices[1:]] == [13] * 8
    assert info.cls_attn.shape == (9, N)
    torch.testing.assert_close(info.cls_attn[0], attn[-2][0, 0, :, 0, 1:].mean(0), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        image_tokens = model.encode_video_llava_inputs([image])[0][0]
    torch.testing.assert_close(image_tokens, project(state, hidden[-2][0, 0, 1:]), atol=1e-5, rtol=1e-5)


def random_video_tower(tmp_path: Path, seed: int = 0) -> tuple[LanguageBindVideoTower, dict]:
    """A random fp16 LanguageBind video tower (temporal attention on) wider than the tiny checkpoint's, with
    PyTorch's default init, and its config; ``cls_attn_arithmetic`` left to the caller."""
    vision = {**TINY_TOWER, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "add_time_attn": True}
    (tmp_path / "config.json").write_text(json.dumps({"vision_config": vision}))
    args = type("Args", (), {"mm_vision_select_layer": -2, "mm_vision_select_feature": "patch"})()
    tower = LanguageBindVideoTower(str(tmp_path), args)
    torch.manual_seed(seed)
    tower.set_weights({k: v.half() for k, v in LanguageBindVisionTransformer(tower.cfg).state_dict().items()}, "random")
    return tower, vision


def test_fp16_upstream_arithmetic_equals_eager_reference_and_kept_sets_vs_fp32(tmp_path):
    """cls_attn_arithmetic="upstream" on an fp16 video tower (upstream casts both towers to fp16) is the eager reference
    in fp16 (transformers 4.31's CLIPAttention arithmetic, temporal attention included), bit for bit. The default fp32
    scores keep other patches in some of the 4 videos × 8 frames × 5 budgets = 160 cases; the figures are printed."""
    tower, vision = random_video_tower(tmp_path)
    videos = torch.cat([clip(s) for s in range(10, 14)]).half()  # (4, 3, 8, 224, 224)
    tower.cls_attn_arithmetic = "upstream"
    features, attn = tower(videos)
    hidden, attentions = eager_languagebind(tower.transformer.state_dict(), "", vision, videos)
    torch.testing.assert_close(features, hidden[-2][:, :, 1:], atol=0, rtol=0)
    torch.testing.assert_close(attn, attentions[-2][:, :, :, 0, 1:], atol=0, rtol=0)
    tower.cls_attn_arithmetic = "fp32"
    fp32_attn = tower(videos)[1]
    scores = {"upstream": attn.mean(dim=2).flatten(0, 1), "fp32": fp32_attn.mean(dim=2).flatten(0, 1)}  # (32, N)
    figures = {k: kept_set_agreement(select_topk_raster(scores["fp32"], k), select_topk_raster(scores["upstream"], k))
               for k in (192, 128, 64, 26, 13)}
    same = sum(f[0] for f in figures.values()) / len(figures)
    overlap = sum(f[1] for f in figures.values()) / len(figures)
    print(f"fp16 LanguageBind video tower, fp32 vs upstream kept sets over 160 frame cases: same set {same:.1%}, "
          f"mean overlap {overlap:.2%}; " + ", ".join(f"k={k}: {s:.0%}/{o:.2%}" for k, (s, o) in figures.items()))
    assert same < 1 and overlap > 0.9


def test_cls_attn_arithmetic_reaches_both_towers(ckpts):
    model = load_pretrained_model(str(ckpts[True]), device="cpu", cls_attn_arithmetic="upstream")[1]
    inner = model.get_model()
    assert inner.image_tower.cls_attn_arithmetic == inner.video_tower.cls_attn_arithmetic == "upstream"
    assert model.config.cls_attn_arithmetic == "upstream"
    with pytest.raises(ValueError, match="cls_attn_arithmetic 'fp16'"):
        load_pretrained_model(str(ckpts[True]), device="cpu", cls_attn_arithmetic="fp16")


def test_budget_and_frame_count_errors(ckpts, models):
    with pytest.raises(ValueError, match="exceeds the 256 patches per video frame"):
        load_pretrained_model(str(ckpts[True]), device="cpu", visual_token_num=257)
    _, model = models[True]
    with pytest.raises(ValueError, match="8 frames"):
        model.encode_videos(clip(6, frames=4))


def test_frames_go_through_the_pruning_method(ckpts):
    """Video frames are crops for the method API: a method's own choice is what each frame keeps; a method that needs
    what the LanguageBind towers cannot give is refused before any weights load."""
    tokenizer, model = load_pretrained_model(str(ckpts[True]), device="cpu", visual_token_num=13,
                                             pruning_method="random")[:2]
    with torch.no_grad():
        model(prompt_ids(tokenizer), images=[clip(2)[0]])
    random_kept = model.last_pruning.kept_indices
    model.set_pruning_method("fastervlm")
    with torch.no_grad():
        model(prompt_ids(tokenizer), images=[clip(2)[0]])
    assert [len(k) for k in random_kept] == [13] * 8
    assert any(not torch.equal(a, b) for a, b in zip(random_kept, model.last_pruning.kept_indices))
    with pytest.raises(NotImplementedError, match="patch-attn.*LanguageBind"):
        load_pretrained_model(str(ckpts[True]), device="cpu", visual_token_num=13, pruning_method="patch-attn")


@requires_in_llm
def test_in_llm_pruning_sees_the_video_as_one_span(ckpts):
    """FastV in the LLM: the video's 8 frames are one span of 8 × 256 tokens, and the budget is 8 × 13 of them."""
    tokenizer, model = load_pretrained_model(str(ckpts[True]), device="cpu", visual_token_num=13,
                                             pruning_method="fastv", pruning_kwargs={"layer": 1})[:2]
    out = model.generate(prompt_ids(tokenizer), images=[clip(2)[0]], do_sample=False, max_new_tokens=3)
    info = model.last_pruning
    assert out.shape == (1, 3) and info.llm_layer == 1 and info.visual_tokens == [8 * N]
    assert sum(len(k) for k in info.kept_indices) == 8 * 13


def edit_shards(ckpt: Path, edit) -> None:
    """Rewrite the checkpoint's shards as ``edit(key, tensor)`` says (None drops the key), and its index to match."""
    index_path = ckpt / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    for shard in sorted(ckpt.glob("pytorch_model-*.bin")):
        state = {k: edit(k, v) for k, v in torch.load(shard, weights_only=True).items()}
        torch.save({k: v for k, v in state.items() if v is not None}, shard)
        index["weight_map"] = {k: f for k, f in index["weight_map"].items() if state.get(k, 0) is not None}
    index_path.write_text(json.dumps(index))


def tower_weights(model) -> dict[str, dict[str, torch.Tensor]]:
    inner = model.get_model()
    return {attr: getattr(inner, attr).transformer.state_dict() for attr in TOWERS}


def test_towers_load_languagebind_folders_and_fall_back_to_the_embedded_copy(ckpts, tmp_path):
    """Upstream loads LanguageBind_Image / _Video_merge, never the copies Video-LLaVA-7B embeds. With the embedded
    copies made to differ, the folders' weights are used, silently; without the folders' weights, the embedded copy,
    with a warning per tower; with neither, loading stops rather than run random towers."""
    ckpt = shutil.copytree(ckpts[True], tmp_path / "ckpt")
    edit_shards(ckpt, lambda key, value: value + 1 if key.startswith((IMAGE, VIDEO)) else value)
    embedded = checkpoint_state(ckpt)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_pretrained_model(str(ckpt), device="cpu")[1]
    assert not [w for w in caught if "embedded" in str(w.message)]
    for attr, folder in TOWERS.items():
        assert getattr(model.get_model(), attr).weights_source == str(ckpt / folder)
        expected = tower_state(ckpt, folder, "")
        assert all(torch.equal(v, expected[k]) for k, v in tower_weights(model)[attr].items())

    for folder in TOWERS.values():
        (ckpt / folder / "pytorch_model.bin").unlink()
    with pytest.warns(UserWarning, match=r"no \*\.safetensors or \*\.bin in .*; using the copy embedded") as caught:
        model = load_pretrained_model(str(ckpt), device="cpu")[1]
    assert sorted(str(w.message).split(":")[0] for w in caught if "embedded" in str(w.message)) == sorted(TOWERS.values())
    for attr, prefix in (("image_tower", IMAGE), ("video_tower", VIDEO)):
        assert getattr(model.get_model(), attr).weights_source == "checkpoint"
        assert all(torch.equal(v, embedded[prefix + k]) for k, v in tower_weights(model)[attr].items())
    assert "bfloat16" in str(caught[0].message)  # the embedded copies' storage dtype, as in Video-LLaVA-7B

    edit_shards(ckpt, lambda key, value: None if key.startswith((IMAGE, VIDEO)) else value)
    with pytest.raises(FileNotFoundError, match="no tower weights"):
        load_pretrained_model(str(ckpt), device="cpu")


@pytest.mark.parametrize("where", ["absolute", "hub-cache"])
def test_tower_folders_resolve_like_mm_vision_tower(ckpts, tmp_path, monkeypatch, where):
    """mm_image_tower / mm_video_tower: a folder relative to the checkpoint (the tiny checkpoint's layout), an absolute
    path, or a hub id found in the Hugging Face cache (LanguageBind/... as Video-LLaVA-7B's config names them)."""
    import huggingface_hub

    ckpt = shutil.copytree(ckpts[True], tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    expected = {}
    for key, folder in (("mm_image_tower", "LanguageBind_Image"), ("mm_video_tower", "LanguageBind_Video_merge")):
        if where == "absolute":
            target = tmp_path / "towers" / folder
            config[key] = str(target)
        else:  # the cache layout huggingface_hub writes: models--org--name/snapshots/<revision>/, refs/main
            repo = tmp_path / "hub" / f"models--LanguageBind--{folder}"
            target = repo / "snapshots" / "0123abcd"
            (repo / "refs").mkdir(parents=True)
            (repo / "refs" / "main").write_text("0123abcd")
            config[key] = f"LanguageBind/{folder}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(ckpt / folder, target)
        expected[key] = target
    (ckpt / "config.json").write_text(json.dumps(config))
    if where == "hub-cache":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = load_pretrained_model(str(ckpt), device="cpu", visual_token_num=13)[1]
    inner = model.get_model()
    assert Path(inner.image_tower.weights_source) == expected["mm_image_tower"]
    assert Path(inner.video_tower.weights_source) == expected["mm_video_tower"]


# ---------------------------------------------------------------- decoding

def write_video(path: Path, frames: int, size=(64, 48), codec: str = "mpeg4") -> None:
    """Frame i is a flat colour with red = 10 + 20·i (mod 256), so decoded frames reveal their index."""
    av = pytest.importorskip("av", reason="writing test videos needs PyAV")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for i in range(frames):
            image = np.zeros((size[1], size[0], 3), np.uint8)
            image[..., 0], image[..., 1] = (10 + 20 * i) % 256, 128
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def write_indexed_video(path: Path, frames: int, codec: str, pix_fmt: str, size: tuple[int, int],
                        options: dict | None = None) -> None:
    """A textured clip (gradients moving per frame over fixed noise) whose top 8 rows carry the frame index
    (mod 256) as 8 black/white bars, so decoded frames reveal which frame they are."""
    av = pytest.importorskip("av", reason="writing test videos needs PyAV")
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    noise = np.random.default_rng(0).integers(0, 256, (h, w, 3))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for i in range(frames):
            image = np.stack([(x + 3 * i) % 256, (y + 5 * i) % 256, (x + y) / 2], -1) * 0.7 + noise * 0.3
            image = image.astype(np.uint8)
            for bit in range(8):
                image[:8, bit * (w // 8):(bit + 1) * (w // 8)] = 255 if (i >> bit) & 1 else 0
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def frame_indices(frames: torch.Tensor) -> list[int]:
    """The indices ``write_indexed_video`` drew into (T, H, W, 3) decoded frames (each bar's centre, thresholded)."""
    bar = frames.shape[2] // 8
    centres = torch.stack([frames[:, 2:6, b * bar + bar // 4:(b + 1) * bar - bar // 4].float().mean(dim=(1, 2, 3))
                           for b in range(8)], dim=1)  # (T, 8)
    return [sum(1 << b for b, v in enumerate(row) if v > 127) for row in centres.tolist()]


# (codec, container, pixel format, size, encoder options): even-sized clips on which decord and PyAV agree exactly.
CLIPS = {"mpeg4-avi": ("mpeg4", "avi", "yuv420p", (96, 64), {}),
         "h264-mp4": ("libx264", "mp4", "yuv420p", (98, 62), {}),
         "h264-bframes-mp4": ("libx264", "mp4", "yuv420p", (96, 64), {"bf": "3", "g": "30"}),
         "h264-444-mkv": ("libx264", "mkv", "yuv444p", (96, 64), {}),
         "mjpeg-mkv": ("mjpeg", "mkv", "yuvj420p", (96, 64), {}),
         "vp9-webm": ("libvpx-vp9", "webm", "yuv420p", (96, 64), {"deadline": "realtime", "cpu-used": "8"})}
# Clips in which decord 0.6 returns other frames than the sampled ones once it seeks (61 frames or more here;
# dmlc/decord#195, #252, #365); PyAV's sequential decode gets them right.
PYAV_ONLY = {"mpeg2-ps": ("mpeg2video", "mpg", "yuv420p", (96, 64), {}),
             "mpeg4-bframes-avi": ("mpeg4", "avi", "yuv420p", (96, 64), {"bf": "2"}),
             "mpeg4-bframes-mp4": ("mpeg4", "mp4", "yuv420p", (96, 64), {"bf": "2"})}


@pytest.fixture(scope="module")
def indexed_clip(tmp_path_factory):
    """``(kind, frames) → path`` of a ``write_indexed_video`` clip of ``CLIPS`` or ``PYAV_ONLY``, each written once."""
    root, paths = tmp_path_factory.mktemp("clips"), {}

    def get(kind: str, frames: int) -> Path:
        if (kind, frames) not in paths:
            codec, ext, pix_fmt, size, options = {**CLIPS, **PYAV_ONLY}[kind]
            paths[kind, frames] = root / f"{kind}-{frames}.{ext}"
            write_indexed_video(paths[kind, frames], frames, codec, pix_fmt, size, options)
        return paths[kind, frames]
    return get


def backend_or_skip(backend: str) -> str:
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    return backend


@pytest.mark.parametrize("frames", [5, 61, 300])
@pytest.mark.parametrize("clip_kind", [*CLIPS, *PYAV_ONLY])
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decoders_read_the_linspace_frames(indexed_clip, backend, clip_kind, frames):
    """Upstream's sampling, frames ``linspace(0, n - 1, 8)`` of the ``n`` decoded: the frames returned are those."""
    backend_or_skip(backend)
    if backend == "decord" and clip_kind in PYAV_ONLY and frames > 5:
        pytest.skip(f"decord 0.6 returns other frames than the sampled ones in {clip_kind} clips of {frames} frames")
    decoded = read_frames(indexed_clip(clip_kind, frames), 8, backend)
    w, h = {**CLIPS, **PYAV_ONLY}[clip_kind][3]
    assert decoded.shape == (8, h, w, 3) and decoded.dtype == torch.uint8
    assert frame_indices(decoded) == [i % 256 for i in np.linspace(0, frames - 1, 8, dtype=int)]
    assert sample_indices(frames, 8) == np.linspace(0, frames - 1, 8).astype(int).tolist()


@pytest.mark.parametrize("clip_kind", list(CLIPS))
def test_decord_and_pyav_return_identical_pixels(indexed_clip, clip_kind):
    backend_or_skip("decord"), backend_or_skip("pyav")
    path = indexed_clip(clip_kind, 61)
    assert torch.equal(read_frames(path, 8, "decord"), read_frames(path, 8, "pyav"))


@pytest.mark.parametrize("codec,ext", [("mpeg4", "avi"), ("libvpx-vp9", "webm"), ("ffv1", "mkv")])
def test_odd_sized_420_frames_differ_slightly_between_decoders(tmp_path, codec, ext):
    """On odd-sized 4:2:0 clips the decoders' colour conversions differ (measured: mean 1.3-2.5, max <= 52 of 255),
    while the frames sampled are the same."""
    backend_or_skip("decord"), backend_or_skip("pyav")
    write_indexed_video(tmp_path / f"v.{ext}", 12, codec, "yuv420p", (97, 61))
    decord_frames, pyav_frames = (read_frames(tmp_path / f"v.{ext}", 8, b) for b in ("decord", "pyav"))
    assert frame_indices(decord_frames) == frame_indices(pyav_frames)
    diff = (decord_frames.int() - pyav_frames.int()).abs()
    assert 0 < diff.float().mean() < 3 and diff.max() <= 64


def test_decoder_info_names_the_decoder_and_its_version(monkeypatch):
    """What a run records about its decoder: ``auto`` is decord wherever it is installed, else PyAV."""
    import importlib

    for backend in available_backends():
        module = importlib.import_module({"decord": "decord", "pyav": "av"}[backend])
        assert decoder_info(backend) == {"backend": backend, "version": module.__version__}
    if "decord" in available_backends():
        assert decoder_info()["backend"] == decoder_info("auto")["backend"] == "decord"
    pytest.importorskip("av")
    monkeypatch.setattr("llava.video_utils.available_backends", lambda: ["pyav"])  # a platform without decord wheels
    assert decoder_info()["backend"] == VideoProcessor().decoder["backend"] == "pyav"


def test_missing_decoder_names_the_extra(monkeypatch):
    monkeypatch.setattr("llava.video_utils.available_backends", lambda: [])
    with pytest.raises(ImportError, match=r"fastervlm\[video\]"):
        resolve_backend("auto")


@pytest.mark.parametrize("shape,window", [((20, 29), (slice(None), slice(4, 24))),  # round(4.5) = 4: half to even
                                          ((27, 20), (slice(4, 24), slice(None))),  # round(3.5) = 4
                                          ((20, 27), (slice(None), slice(4, 24)))])
def test_preprocess_short_side_then_centre_crop(shape, window):
    """At scale 1 (short side = size) the transform is normalise + crop: exact pixels, torchvision's crop offsets."""
    h, w = shape
    frames = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = preprocess_frames(frames, size=20)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    expected = ((frames.float() / 255 - mean) / std).permute(3, 0, 1, 2)[(..., *window)]
    assert out.shape == (3, 2, 20, 20)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(preprocess_frames(frames, size=20, flip=True), expected.flip(-1), atol=1e-6, rtol=0)


def test_preprocess_scales_the_short_side():
    frames = torch.full((1, 48, 64, 3), 200, dtype=torch.uint8)
    out = preprocess_frames(frames, size=224)  # 48×64 → 224×298 → centre 224×224
    assert out.shape == (3, 1, 224, 224)
    torch.testing.assert_close(out[0], torch.full((1, 224, 224), (200 / 255 - 0.48145466) / 0.26862954))


# ---------------------------------------------------------------- inference CLI

@pytest.fixture
def qa(tmp_path):
    """Three questions (videos a.mp4, b.avi, one missing) with answers listed in another order."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", 12)
    write_video(videos / "b.avi", 20)
    questions = [{"video_name": "a", "question": QUESTION, "question_id": "v_a_0"},
                 {"video_name": "gone", "question": "Is there a dog?", "question_id": "v_gone_0"},
                 {"video_name": "b", "question": "How many people are there?", "question_id": "v_b_1"}]
    answers = [{"answer": "two", "type": 3, "question_id": "v_b_1"}, {"answer": "red", "type": 3, "question_id": "v_a_0"},
               {"answer": "no", "type": 3, "question_id": "v_gone_0"}]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(answers))
    return tmp_path


def run_cli(ckpt: Path, qa: Path, answers: str, *extra: str) -> list[dict]:
    cli.main(["--model-path", str(ckpt), "--video-dir", str(qa / "videos"), "--gt-file-question", str(qa / "q.json"),
              "--gt-file-answers", str(qa / "a.json"), "--answers-file", str(qa / answers), *DEVICE_ARGS,
              "--max-new-tokens", "6", "--visual-token-num", "13", *extra])
    return [json.loads(line) for line in (qa / answers).read_text().splitlines()]


def test_cli_answers_by_id_reports_missing_and_resumes(ckpts, models, reference, qa, capsys):
    lines = run_cli(ckpts[True], qa, "out.jsonl", "--protocol", "greedy")
    assert [(l["id"], l["answer"]) for l in lines] == [("v_a_0", "red"), ("v_b_1", "two")]
    assert all(set(l) == {"id", "question", "answer", "pred", "metadata"} and isinstance(l["pred"], str) for l in lines)
    captured = capsys.readouterr()
    assert "Average number of visual tokens: 104.00" in captured.out
    assert "1 question(s) of this chunk have no answer because their image/video could not be read" in captured.err
    missing = [json.loads(l) for l in (qa / "out.jsonl.missing.jsonl").read_text().splitlines()]
    assert [(m["key"], m["media"]) for m in missing] == [(["v_gone_0"], "gone")]

    # The greedy answer is the reference pipeline's: eager tower, per-frame top-13, stock LLaMA.
    tokenizer = models[True][0]
    clip_a = preprocess_frames(read_frames(qa / "videos/a.mp4", 8))[None]
    tokens, _, _ = reference_frame_tokens(ckpts[True], *reference_video_tower(ckpts[True], clip_a), 13)
    llama = reference[1]
    ids = prompt_ids(tokenizer)
    ref = greedy(llama, splice(llama, ids, list(tokens[0])), steps=6, eos=tokenizer.eos_token_id)
    assert lines[0]["pred"] == tokenizer.decode(ref, skip_special_tokens=True).strip()

    # Rerun: nothing to redo. A torn last line (killed run) is dropped and answered again.
    before = (qa / "out.jsonl").read_text()
    run_cli(ckpts[True], qa, "out.jsonl", "--protocol", "greedy")
    assert (qa / "out.jsonl").read_text() == before
    (qa / "out.jsonl").write_text(before.splitlines()[0] + "\n" + before.splitlines()[1][:20])
    run_cli(ckpts[True], qa, "out.jsonl", "--protocol", "greedy")
    assert (qa / "out.jsonl").read_text() == before


@pytest.mark.gpu
def test_cli_paper_protocol_repeats_whatever_the_chunking(ckpts, qa):
    single = run_cli(ckpts[True], qa, "single.jsonl", "--seed", "7")
    chunked = [line for idx in range(2)
               for line in run_cli(ckpts[True], qa, f"2_{idx}.jsonl", "--seed", "7", "--num-chunks", "2", "--chunk-idx", str(idx))]
    assert chunked == single  # separate runs, other chunks: per-question seeds, answers joined by id in every chunk
    assert run_cli(ckpts[True], qa, "limit.jsonl", "--seed", "7", "--limit", "1") == single[:1]


def test_cli_record_kept_lists_each_frames_patches(ckpts, qa):
    from llava.model.video_llava import patches_per_frame, video_tower_config

    lines = run_cli(ckpts[True], qa, "kept.jsonl", "--protocol", "greedy", "--record-kept")
    frames, patches = video_tower_config(ckpts[True]).num_frames, patches_per_frame(ckpts[True])
    for line in lines:
        assert len(line["kept"]) == frames
        assert all(len(f) == 13 and f == sorted(set(f)) and 0 <= f[0] and f[-1] < patches for f in line["kept"])
    assert lines[0]["kept"] != lines[1]["kept"]


@pytest.mark.gpu
def test_cli_stops_when_no_video_is_found(ckpts, qa):
    with pytest.raises(InputError, match="missing or unreadable"):
        run_cli(ckpts[True], qa, "x.jsonl", "--video-prefix", "v_")


def test_cli_help_covers_every_flag():
    parser = cli.build_parser()
    flags = {opt for action in parser._actions for opt in action.option_strings if action.help}
    for flag in ("--model-path", "--model-base", "--video-dir", "--gt-file-question", "--gt-file-answers", "--answers-file",
                 "--num-chunks", "--chunk-idx", "--visual-token-num", "--pruning-method", "--protocol", "--seed",
                 "--conv-mode", "--max-new-tokens", "--device", "--limit"):
        assert flag in flags
    defaults = parser.parse_args(["--model-path", "m", "--video-dir", "v", "--gt-file-question", "q",
                                  "--gt-file-answers", "a", "--answers-file", "o"])
    assert (defaults.protocol, defaults.conv_mode, defaults.max_new_tokens, defaults.pruning_method) == \
        ("paper", "llava_v1", 1024, "fastervlm")
    with pytest.raises(SystemExit):
        parser.parse_args(["--pruning-method", "random"])


def test_qa_files_must_pair_up(tmp_path):
    q = [{"video_name": "a", "question": "q?", "question_id": "v_a_0"}, {"video_name": "b", "question": "q?", "question_id": 7}]
    (tmp_path / "q.json").write_text(json.dumps(q))
    (tmp_path / "a.json").write_text(json.dumps([{"answer": "x", "question_id": 7}, {"answer": "y", "question_id": "v_a_0"}]))
    assert [(it.question_id, it.answer) for it in cli.load_items(tmp_path / "q.json", tmp_path / "a.json")] == \
        [("v_a_0", "y"), (7, "x")]
    (tmp_path / "a.json").write_text(json.dumps([{"answer": "x", "question_id": 7}]))
    with pytest.raises(InputError, match="no answer for 1 question"):
        cli.load_items(tmp_path / "q.json", tmp_path / "a.json")
    (tmp_path / "a.json").write_text(json.dumps([{"answer": "x", "question_id": 7}, {"answer": "z", "question_id": "7"}]))
    with pytest.raises(InputError, match="duplicate question_id"):
        cli.load_items(tmp_path / "q.json", tmp_path / "a.json")


@pytest.mark.parametrize("folder,videos", [("TGIF_Zero_Shot_QA", 1000), ("MSVD_Zero_Shot_QA", 34),
                                           ("MSRVTT_Zero_Shot_QA", 42), ("Activitynet_Zero_Shot_QA", 543)])
def test_shared_1k_files_join_by_question_id(shared_dir, folder, videos):
    base = shared_dir / "video-qa-1k" / folder
    items = cli.load_items(base / "test_q_1k.json", base / "test_a_1k.json")
    answers = {a["question_id"]: a["answer"] for a in json.loads((base / "test_a_1k.json").read_text())}
    assert len(items) == 1000 and all(answers[it.question_id] == it.answer for it in items)
    assert len({it.video_name for it in items}) == videos


# ---------------------------------------------------------------- scripts

def test_run_script_activitynet_end_to_end(ckpts, tmp_path):
    """run_qa_activitynet.sh: upstream's folder layout, the v_ file prefix, sharded inference merged."""
    ckpt_dir = tmp_path / "checkpoints"
    shutil.copytree(ckpts[True], ckpt_dir / "Video-LLaVA-tiny")
    qa_dir = tmp_path / "eval/GPT_Zero_Shot_QA/Activitynet_Zero_Shot_QA"
    (qa_dir / "all_test").mkdir(parents=True)
    write_video(qa_dir / "all_test/v_xyz.mp4", 9)
    (qa_dir / "test_q_1k.json").write_text(json.dumps([{"video_name": "xyz", "question": "why", "question_id": "v_xyz_3"}]))
    (qa_dir / "test_a_1k.json").write_text(json.dumps([{"answer": "no", "type": 3, "question_id": "v_xyz_3"}]))
    env = {**os.environ, "CKPT": "Video-LLaVA-tiny", "CKPT_DIR": str(ckpt_dir), "EVAL_DIR": str(tmp_path / "eval"),
           "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "EXTRA_ARGS": "--device cpu --max-new-tokens 4"}
    result = subprocess.run(["bash", str(ROOT / "scripts/video/eval/run_qa_activitynet.sh"), "26"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    merged = qa_dir / "answers/Video-LLaVA-tiny/fastervlm/n_26/merge.jsonl"
    assert [json.loads(l)["id"] for l in merged.read_text().splitlines()] == ["v_xyz_3"]
    assert "Average number of visual tokens: 208.00" in result.stdout


def test_scripts_are_one_liners_over_the_shared_functions():
    folder = ROOT / "scripts/video/eval"
    for kind, function in (("run_qa", "run_video_qa"), ("eval_qa", "eval_video_qa")):
        for ds in ("tgif", "msvd", "msrvtt", "activitynet"):
            body = [l for l in (folder / f"{kind}_{ds}.sh").read_text().splitlines() if l and not l.startswith("#")]
            assert body == ['source "$(dirname "$0")/_video_qa.sh"', f'{function} {ds} "$@"']
    assert subprocess.run(["bash", "-n", str(folder / "_video_qa.sh")]).returncode == 0


def test_projector_on_another_device(ckpts):
    """Video-LLaVA under device_map="auto": image and frame tokens from the projector's device reach the text's."""
    tokenizer, model = load_pretrained_model(str(ckpts[True]), device="cpu", visual_token_num=13)[:2]
    image, video = clip(4, frames=1)[0, :, 0], clip(5)[0]
    ids = tokenizer_image_token(build_prompt("<image>\n" + QUESTION, 8, "llava_v1", False), tokenizer,
                                return_tensors="pt")[None]
    with torch.no_grad():
        expected = model(ids, images=[image, video]).logits
        model.get_model().mm_projector = OnOtherDevice(model.get_model().mm_projector)
        with TwoDevices():
            got = model(ids, images=[image, video]).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
