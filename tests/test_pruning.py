"""Pruning methods (``llava.pruning``) against independent references.

Before-LLM methods: kept patches and visual tokens recomputed here by plain loops from eager
``CLIPVisionModel(output_attentions=True)``. In-LLM methods: kept tokens from an eager ``LlamaForCausalLM(output_attentions=True)`` on the full
sequence, and logits/greedy answers from a reference that recomputes the pruned forward (original positions, the
prefill's kept set) without a cache at every step, from a stock LLaMA's own decoder layers.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.eval import model_vqa_loader
from llava.eval.utils import InputError
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model import LlavaLlamaForCausalLM
from llava.model.builder import load_pretrained_model
from llava.pruning import available_methods, get_method
from llava.pruning.base import TowerRequest, group_sum
from llava.tools.make_sample_data import make_sample_data
from conftest import requires_in_llm
from reference import checkpoint_state, reference_llama, reference_tower, reference_visual_tokens, splice
from test_model_parity import QUESTIONS, make_image, prompt_ids

N, SIDE, K90 = 576, 24, 58  # tiny tower: LLaVA-1.5 geometry; 90 % reduction

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deep_ckpt(tiny_ckpt, tmp_path_factory) -> Path:
    """The tiny checkpoint with two more LLM layers (4 in all), so that pruning before layer 2 leaves layers to run."""
    out = tmp_path_factory.mktemp("deep") / "llava-v1.5-tiny-4l"
    shutil.copytree(tiny_ckpt, out)
    for shard in out.glob("model*.safetensors*"):  # the LLM's shards and index; the tower's folder stays
        shard.unlink()
    state, g = checkpoint_state(tiny_ckpt), torch.Generator().manual_seed(7)
    for key in [k for k in state if k.startswith(("model.layers.0.", "model.layers.1."))]:
        new = key.replace("model.layers.0.", "model.layers.2.").replace("model.layers.1.", "model.layers.3.")
        value = state[key]
        state[new] = value.clone() if "norm" in key else torch.randn(value.shape, generator=g) * value.std()
    save_file(state, out / "model.safetensors")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
    return out


@pytest.fixture(scope="module")
def deep(deep_ckpt):
    tokenizer, model, processor, _ = load_pretrained_model(str(deep_ckpt), device="cpu")
    llama = reference_llama(deep_ckpt)
    llama.set_attn_implementation("eager")
    return deep_ckpt, tokenizer, model, processor, llama, reference_tower(deep_ckpt)


@pytest.fixture
def budget(deep):
    model = deep[2]
    model.set_visual_token_num(K90)
    yield
    model.set_pruning_method("fastervlm")
    model.set_visual_token_num(None)


# --------------------------------------------------------------------------- registry


def test_registry_names_methods_and_errors():
    built_in = ("fastervlm", "random", "patch-attn", "cls-llm-layer2", "cls-merge", "fastv", "adaptprune",
                "adaptprune-cls", "vispruner", "visionzip", "divprune", "pdrop", "sparsevlm")
    assert available_methods()[:len(built_in)] == built_in  # first, in the CLI's order; plugins may follow
    with pytest.raises(ValueError, match=r"unknown pruning method 'fastvv'.*fastv"):
        get_method("fastvv")
    with pytest.raises(ValueError, match=r"'fastv' has no parameter sigma_d"):
        get_method("fastv", sigma_d=1.0)
    with pytest.raises(ValueError, match="--fastv-k must be >= 1"):
        get_method("fastv", layer=0)
    assert get_method("fastv").llm_layer == 2 and get_method("adaptprune", layer=3).llm_layer == 3
    assert get_method("cls-llm-layer2").llm_layer == 2 and get_method("cls-merge").llm_layer is None


@requires_in_llm
def test_runner_flags_belong_to_their_method(tiny_ckpt, tmp_path):
    data = make_sample_data(tmp_path / "eval", questions=1)
    args = ["--model-path", str(tiny_ckpt), "--question-file", str(data / "textvqa/llava_textvqa_val_v051_ocr.jsonl"),
            "--image-folder", str(data / "textvqa/train_images"), "--answers-file", str(tmp_path / "a.jsonl"),
            "--device", "cpu"]
    with pytest.raises(InputError, match="--fastv-k applies to --pruning-method fastv, not fastervlm"):
        model_vqa_loader.main(args + ["--fastv-k", "1"])
    with pytest.raises(InputError, match="--fastv-k must be >= 1"):
        model_vqa_loader.main(args + ["--pruning-method", "fastv", "--fastv-k", "0"])
    with pytest.raises(SystemExit):  # argparse's choices, from the registry
        model_vqa_loader.main(args + ["--pruning-method", "nope"])
    model_vqa_loader.main(args + ["--pruning-method", "fastv", "--fastv-k", "1", "--visual-token-num", "29",
                                  "--max_new_tokens", "3", "--temperature", "0"])
    assert json.loads((tmp_path / "a.jsonl").read_text())["text"]


def test_in_llm_methods_name_the_release_they_need(tiny_ckpt, tmp_path, monkeypatch):
    """Below transformers 5.14, choosing FastV (or any in-LLM method) fails at once, naming the release."""
    import llava.compat
    from packaging import version

    monkeypatch.setattr(llava.compat, "TRANSFORMERS_VERSION", version.parse("5.13.0"))
    monkeypatch.setattr(LlavaLlamaForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(NotImplementedError, match=r"needs transformers >= 5.14"):
        load_pretrained_model(str(tiny_ckpt), None, "tiny", device="cpu", pruning_method="fastv")
    data = make_sample_data(tmp_path / "eval", questions=1)
    with pytest.raises(NotImplementedError, match=r"in-LLM pruning .* needs transformers >= 5.14"):
        model_vqa_loader.main(["--model-path", str(tiny_ckpt), "--question-file",
                               str(data / "textvqa/llava_textvqa_val_v051_ocr.jsonl"), "--image-folder",
                               str(data / "textvqa/train_images"), "--answers-file", str(tmp_path / "a.jsonl"),
                               "--pruning-method", "adaptprune"])
    assert not (tmp_path / "a.jsonl").exists()


# --------------------------------------------------------------------------- the vision tower's request


@torch.no_grad()
def test_tower_computes_the_requested_maps_as_eager_clip(deep):
    ckpt, _, model, processor, _, tower = deep
    pixels = process_images([make_image(3), make_image(4, size=(60, 90))], processor, model.config)
    out = model.get_vision_tower()(pixels, request=TowerRequest(cls_attn=True, keys=True, patch_attn=True))
    ref = tower(pixels, output_hidden_states=True, output_attentions=True)
    layer = tower.vision_model.encoder.layers[-2] if hasattr(tower, "vision_model") else tower.encoder.layers[-2]
    keys = layer.self_attn.k_proj(layer.layer_norm1(ref.hidden_states[-3]))[:, 1:]  # the selected layer's input
    torch.testing.assert_close(out.features, ref.hidden_states[-2][:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cls_attn, ref.attentions[-2][:, :, 0, 1:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.patch_attn, ref.attentions[-2][:, :, 1:, 1:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.keys, keys.view(2, N, 4, -1).transpose(1, 2), atol=1e-5, rtol=1e-5)
    assert model.get_vision_tower()(pixels, request=TowerRequest()).cls_attn is None  # only what is asked for
    assert isinstance(model.get_vision_tower()(pixels), tuple)  # the default call is unchanged


# --------------------------------------------------------------------------- before the LLM


def reference_nms(scores: list[float], keys: torch.Tensor, k: int, radius=5.0, sigma_d=1.5, sigma_s=0.05) -> list[int]:
    """AdaptPrune's soft-NMS as baselines.md states it, by plain loops on one 24×24 grid."""
    cos = (keys @ keys.T).double().tolist()
    scores, picked = list(scores), []
    for _ in range(k):
        p = max((i for i in range(len(scores)) if i not in picked), key=lambda i: (scores[i], -i))
        picked.append(p)
        for q in range(len(scores)):
            d2 = (p // SIDE - q // SIDE) ** 2 + (p % SIDE - q % SIDE) ** 2
            if d2 <= radius ** 2:
                spatial = math.exp(-d2 / (2 * sigma_d ** 2))
                scores[q] *= 1 - spatial * math.exp(-(1 - cos[p][q]) ** 2 / (2 * sigma_s ** 2))
    return sorted(picked)


def center_prior() -> list[float]:
    axis = [-12 + 24 * i / 23 for i in range(SIDE)]  # linspace(-12, 12, 24)
    g = [math.exp(-(x * x + y * y) / (2 * 12 ** 2)) for y in axis for x in axis]
    return [v / max(g) for v in g]


@torch.no_grad()
def reference_before_llm(method: str, params: dict, ckpt, tower, pixels, k: int):
    """(kept raster indices (B, k), visual tokens (B, k, D)) of a before-LLM method, from eager CLIP."""
    out = tower(pixels, output_hidden_states=True, output_attentions=True)
    feats, attn = out.hidden_states[-2][:, 1:], out.attentions[-2]  # (B, N, C), (B, H, 1+N, 1+N)
    layer = tower.vision_model.encoder.layers[-2] if hasattr(tower, "vision_model") else tower.encoder.layers[-2]
    keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[-3]))[:, 1:]  # (B, N, C), heads concatenated
    top = lambda s: torch.sort(torch.topk(s, k).indices).values
    keep, merged = [], feats.clone()
    for b in range(pixels.shape[0]):
        cls = attn[b, :, 0, 1:].mean(0)
        if method == "fastervlm":
            keep.append(top(cls))
        elif method == "random":  # the b-th draw of a generator seeded once
            if b == 0:
                gen = torch.Generator().manual_seed(params.get("seed", 0))
            keep.append(top(torch.rand(N, generator=gen)))
        elif method == "patch-attn":
            keep.append(top(attn[b, :, 1:, 1:].mean(0).mean(0)))
        elif method == "adaptprune-cls":
            picked = reference_nms(cls.tolist(), F.normalize(keys[b], dim=-1), k, sigma_s=params.get("sigma_s", 0.05))
            keep.append(torch.tensor(picked))
        elif method == "cls-merge":
            kept = top(cls).tolist()
            head_keys = F.normalize(keys[b].view(N, 4, -1).mean(1), dim=-1)
            groups = {t: [t] for t in kept}
            for j in sorted(set(range(N)) - set(kept)):
                groups[max(kept, key=lambda t: float(head_keys[j] @ head_keys[t]))].append(j)
            for t, members in groups.items():
                merged[b, t] = feats[b, members].mean(0)
            keep.append(torch.tensor(kept))
    keep = torch.stack(keep)
    state = checkpoint_state(ckpt)
    kept = torch.stack([m[i] for m, i in zip(merged, keep)])
    h = F.linear(kept, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"])
    return keep, F.linear(F.gelu(h), state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])


@pytest.mark.parametrize("method,params", [("fastervlm", {}), ("random", {"seed": 3}), ("patch-attn", {}),
                                           ("cls-merge", {}), ("adaptprune-cls", {}),
                                           ("adaptprune-cls", {"sigma_s": 0.5})])
def test_before_llm_methods_match_eager_clip(deep, budget, method, params):
    ckpt, tokenizer, model, processor, _, tower = deep
    pixels = process_images([make_image(5), make_image(6, size=(50, 120))], processor, model.config)
    model.set_pruning_method(method, **params)
    visual, info = model.encode_images(pixels)
    keep, ref_visual = reference_before_llm(method, params, ckpt, tower, pixels, K90)
    assert torch.equal(torch.stack(info.kept_indices), keep)
    torch.testing.assert_close(torch.stack(visual), ref_visual, atol=1e-5, rtol=1e-5)
    if method == "adaptprune-cls" and params:  # the similarity decay must have mattered for this to test anything
        assert not torch.equal(keep, reference_before_llm("fastervlm", {}, ckpt, tower, pixels, K90)[0])
    ids = prompt_ids(tokenizer, QUESTIONS[0])
    out = model.generate(ids, images=pixels[:1], do_sample=False, max_new_tokens=4, use_cache=True)
    assert out.ndim == 2 and out.shape[0] == 1 and model.last_pruning.visual_tokens == [K90]


def test_random_is_reproducible_by_seed(deep, budget):
    model, processor = deep[2], deep[3]
    pixels = process_images([make_image(7)], processor, model.config)

    def draws(seed):
        model.set_pruning_method("random", seed=seed)
        return [model.encode_images(pixels)[1].kept_indices[0] for _ in range(2)]

    first, again, other = draws(0), draws(0), draws(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # the generator advances from image to image
    assert not torch.equal(first[0], other[0])


# --------------------------------------------------------------------------- inside the LLM


def run_layers(llama, hidden, positions, layers):
    """A stock LLaMA's own (eager) decoder layers over ``hidden`` (1, L, D) at ``positions`` (L,), causal."""
    L = hidden.shape[1]
    mask = torch.full((L, L), float("-inf")).triu(1)[None, None]
    cos_sin = llama.model.rotary_emb(hidden, positions[None])
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=cos_sin, position_ids=positions[None])
    return hidden


@torch.no_grad()
def reference_pruned_greedy(llama, embeds, layer: int, kept: torch.Tensor, steps: int, eos: int):
    """Prefill logits over the kept positions, and greedy ids recomputing everything each step without a cache:
    layers < ``layer`` see every token, the others the prefill's ``kept`` positions plus every new token."""
    prompt_len, out, logits0 = embeds.shape[1], [], None
    for _ in range(steps):
        L = embeds.shape[1]
        positions = torch.arange(L)
        hidden = run_layers(llama, embeds, positions, llama.model.layers[:layer])
        keep = torch.cat([kept, torch.arange(prompt_len, L)])
        hidden = run_layers(llama, hidden[:, keep], positions[keep], llama.model.layers[layer:])
        logits = llama.lm_head(llama.model.norm(hidden))
        logits0 = logits if logits0 is None else logits0
        out.append(int(logits[0, -1].argmax()))
        if out[-1] == eos:
            break
        embeds = torch.cat([embeds, llama.get_input_embeddings()(torch.tensor([[out[-1]]]))], dim=1)
    return logits0, out


def image_last_prompt(tokenizer, question: str) -> torch.Tensor:
    """The image after the question: another span start than the usual template gives."""
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], question + "\n<image>")
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]


@torch.no_grad()
def reference_in_llm(method: str, params: dict, ckpt, llama, tower, ids, pixels, k: int):
    """(layer K, kept span-relative patch indices, kept sequence positions, full embeddings, the patches' scores)
    from eager references."""
    visual, _, cls = reference_visual_tokens(ckpt, tower, pixels, None)
    embeds = splice(llama, ids, visual[0])
    start = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero())  # the span is wherever the placeholder was
    span = torch.arange(start, start + N)
    out = llama(inputs_embeds=embeds, output_attentions=True, output_hidden_states=True)
    layer = params.get("layer", 2) if method != "cls-llm-layer2" else 2
    attn = out.attentions[layer - 1][0].mean(0) if method != "cls-llm-layer2" else None  # (L, L) head mean
    if method == "fastv":
        score = params.get("score", "last")
        if score == "last":
            scores = attn[-1, span]
        elif score == "all":  # masked zeros counted
            scores = attn[:, span].mean(0)
        else:  # all-visible: rows i >= j see token j
            scores = attn[:, span].sum(0) / (embeds.shape[1] - span)
        patches = torch.sort(torch.topk(scores, k).indices).values
    elif method == "cls-llm-layer2":
        scores = cls[0]
        patches = torch.sort(torch.topk(scores, k).indices).values
    else:  # adaptprune
        scores = [float(a) * g for a, g in zip(attn[-1, span], center_prior())]
        keys = llama.model.layers[layer].self_attn.k_proj(out.hidden_states[layer][0, span])
        patches = torch.tensor(reference_nms(scores, F.normalize(keys, dim=-1), k, sigma_s=params.get("sigma_s", 0.05)))
        scores = torch.tensor(scores)
    kept = torch.cat([torch.arange(start), start + patches, torch.arange(start + N, embeds.shape[1])])
    return layer, patches, kept, embeds, scores


@pytest.mark.parametrize("method,params,image_last", [
    ("fastv", {}, False), ("fastv", {}, True), ("fastv", {"score": "all"}, False),
    ("fastv", {"score": "all-visible"}, False), ("fastv", {"layer": 1}, False),
    ("cls-llm-layer2", {}, False), ("adaptprune", {"sigma_s": 0.5}, False)])
@requires_in_llm
def test_in_llm_methods_match_eager_llama_and_no_cache_reference(deep, budget, method, params, image_last):
    ckpt, tokenizer, model, processor, llama, tower = deep
    pixels = process_images([make_image(8)], processor, model.config)
    ids = image_last_prompt(tokenizer, QUESTIONS[1]) if image_last else prompt_ids(tokenizer, QUESTIONS[1])
    model.set_pruning_method(method, **params)
    layer, patches, kept, embeds, scores = reference_in_llm(method, params, ckpt, llama, tower, ids, pixels, K90)
    ref_logits, ref_ids = reference_pruned_greedy(llama, embeds, layer, kept, steps=8, eos=tokenizer.eos_token_id)

    with torch.no_grad():
        logits = model(ids, images=pixels).logits
    info = model.last_pruning
    assert info.llm_layer == layer and info.visual_tokens == [N]  # every patch entered the LLM
    assert torch.equal(info.kept_indices[0], patches)
    assert logits.shape == ref_logits.shape == (1, embeds.shape[1] - N + K90, llama.config.vocab_size)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)

    out = model.generate(ids, images=pixels, do_sample=False, num_beams=1, max_new_tokens=8, use_cache=True)
    assert out[0].tolist() == ref_ids and len(ref_ids) >= 2
    assert torch.equal(model.last_pruning.kept_indices[0], patches)
    if method == "adaptprune":  # the soft-NMS must have changed the choice for this to test it
        assert not torch.equal(patches, torch.sort(torch.topk(scores, K90).indices).values)


@requires_in_llm
def test_layers_from_k_cache_only_the_kept_tokens(deep, budget):
    tokenizer, model, processor = deep[1], deep[2], deep[3]
    pixels = process_images([make_image(9)], processor, model.config)
    ids = prompt_ids(tokenizer, QUESTIONS[0])
    model.set_pruning_method("fastv")
    with torch.no_grad():
        out = model(ids, images=pixels, use_cache=True)
    full = ids.shape[1] - 1 + N
    cache = out.past_key_values
    assert [cache.get_seq_length(i) for i in range(4)] == [full, full, full - N + K90, full - N + K90]
    model.set_pruning_method("fastervlm")  # a before-LLM method never takes the pruning loop
    with torch.no_grad():
        out = model(ids, images=pixels, use_cache=True)
    assert {out.past_key_values.get_seq_length(i) for i in range(4)} == {ids.shape[1] - 1 + K90}


@requires_in_llm
@pytest.mark.parametrize("method", ["fastv", "adaptprune"])
def test_padded_batches_equal_batch_one(deep, budget, method):
    """Per-sample spans and last tokens, and masks gathered to the kept positions at prefill and at each decode step."""
    tokenizer, model, processor = deep[1], deep[2], deep[3]
    pixels = process_images([make_image(10), make_image(11)], processor, model.config)
    prompts = [prompt_ids(tokenizer, QUESTIONS[1])[0], image_last_prompt(tokenizer, QUESTIONS[0])[0]]
    model.set_pruning_method(method)
    kwargs = dict(do_sample=False, max_new_tokens=6, use_cache=True, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=0)
    single, kept = [], []
    for i, p in enumerate(prompts):
        single.append(model.generate(p[None], images=pixels[i:i + 1], **kwargs))
        kept.append(model.last_pruning.kept_indices[0])
    longest = max(len(p) for p in prompts)
    ids = torch.stack([F.pad(p, (longest - len(p), 0)) for p in prompts])
    mask = torch.stack([F.pad(torch.ones_like(p), (longest - len(p), 0)) for p in prompts])
    batched = model.generate(ids, images=pixels, attention_mask=mask, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(model.last_pruning.kept_indices, kept))
    for b, one in enumerate(single):
        assert batched.sequences[b, :one.sequences.shape[1]].tolist() == one.sequences[0].tolist()
        for step, scores in enumerate(one.scores):
            torch.testing.assert_close(batched.scores[step][b], scores[0], atol=1e-4, rtol=1e-4)

    # A right-padded forward (LLaVA pads right outside generate): the last real token is not the last column.
    ids = torch.stack([F.pad(p, (0, longest - len(p))) for p in prompts])
    mask = torch.stack([F.pad(torch.ones_like(p), (0, longest - len(p))) for p in prompts])
    with torch.no_grad():
        logits = model(ids, images=pixels, attention_mask=mask).logits
        for b, p in enumerate(prompts):
            one = model(p[None], images=pixels[b:b + 1]).logits[0]
            torch.testing.assert_close(logits[b, :one.shape[0]], one, atol=1e-4, rtol=1e-4)


USER_METHOD = """
from dataclasses import dataclass, field

import torch

from llava.pruning import PruningMethod, TowerRequest, register


@register
@dataclass
class LastPatches(PruningMethod):
    \"\"\"Keeps each crop's last patches (after skipping ``offset``): a method nobody would ship, easy to check.\"\"\"

    name = "{name}"
    tower_request = TowerRequest()

    offset: int = field(default=0, metadata={{"flag": "--{name}-offset", "help": "patches skipped at the end"}})

    def select_patches(self, tower, k):
        n = tower.features.shape[1] - self.offset
        keep = torch.arange(n - k, n, device=tower.features.device)
        return tower.features, keep.expand(tower.features.shape[0], -1)
"""


def run_loader(tiny_ckpt, data, answers, cwd, pythonpath, *extra):
    """``python -m llava.eval.model_vqa_loader`` in ``cwd``, as a user runs it; returns the finished process."""
    args = ["--model-path", str(tiny_ckpt), "--question-file", str(data / "textvqa/llava_textvqa_val_v051_ocr.jsonl"),
            "--image-folder", str(data / "textvqa/train_images"), "--answers-file", str(answers),
            "--temperature", "0", "--max_new_tokens", "3", "--device", "cpu", "--visual-token-num", "7", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "llava.eval.model_vqa_loader", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_a_method_in_the_users_own_module_runs_end_to_end(tiny_ckpt, tmp_path):
    """--import (after --pruning-method on the command line, too) registers the method, its flag and its choice."""
    (tmp_path / "my_method.py").write_text(USER_METHOD.format(name="my-method"))
    data = make_sample_data(tmp_path / "eval", questions=2)
    answers = tmp_path / "answers.jsonl"
    result = run_loader(tiny_ckpt, data, answers, tmp_path, [ROOT], "--pruning-method", "my-method",
                        "--my-method-offset", "5", "--import", "my_method")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Average number of visual tokens: 7.00" in result.stdout
    assert len(answers.read_text().splitlines()) == 2
    manifest = json.loads((tmp_path / "answers.jsonl.manifest.json").read_text())
    assert "my-method" in json.dumps(manifest) and '"offset": 5' in json.dumps(manifest)
    unknown = run_loader(tiny_ckpt, data, tmp_path / "b.jsonl", tmp_path, [ROOT], "--pruning-method", "my-method")
    assert unknown.returncode == 2 and "invalid choice: 'my-method'" in unknown.stderr
    missing = run_loader(tiny_ckpt, data, tmp_path / "c.jsonl", tmp_path, [ROOT], "--import", "no_such_module")
    assert missing.returncode == 2 and "error: --import no_such_module: no module 'no_such_module'" in missing.stderr


def test_an_installed_plugin_registers_through_its_entry_point(tiny_ckpt, tmp_path):
    """A distribution on sys.path whose entry_points.txt names a module in the fastervlm.pruning group: its method is
    a --pruning-method choice with no --import."""
    site = tmp_path / "site"
    (site / "fastervlm_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "fastervlm_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fastervlm-plugin\nVersion: 0.1\n")
    (site / "fastervlm_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[fastervlm.pruning]\nplugin-method = fastervlm_plugin_method\n")
    (site / "fastervlm_plugin_method.py").write_text(USER_METHOD.format(name="plugin-method"))
    data = make_sample_data(tmp_path / "eval", questions=2)
    answers = tmp_path / "answers.jsonl"
    result = run_loader(tiny_ckpt, data, answers, tmp_path, [ROOT, site], "--pruning-method", "plugin-method")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Average number of visual tokens: 7.00" in result.stdout and len(answers.read_text().splitlines()) == 2


def test_entry_points_load_lazily_and_name_a_broken_plugin(monkeypatch):
    """The group is read at the first registry query, not at import; a plugin that fails to load is named."""
    from importlib.metadata import EntryPoint

    from llava.pruning import registry

    broken = EntryPoint(name="broken", value="no_such_plugin_module", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [broken] if group == registry.ENTRY_POINT_GROUP
                        else [])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    with pytest.raises(ImportError, match=r"pruning plugin 'broken' = 'no_such_plugin_module'.*failed to load"):
        available_methods()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_group_sum_is_each_groups_row_sum(dtype):
    """The merging methods' deterministic sum: each group's rows added up, an empty group a zero row."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen).to(dtype)
    groups = torch.randint(0, 5, (40,), generator=gen)
    groups[groups == 3] = 4  # group 3 empty
    sums = group_sum(x, groups, 6)
    assert sums.shape == (6, 6) and sums.dtype == dtype
    for g in range(6):
        expected = x[groups == g].double().sum(0)
        torch.testing.assert_close(sums[g].double(), expected, atol=0.05 if dtype != torch.float32 else 1e-5, rtol=0.01)
    assert not sums[3].any() and not sums[5].any()
