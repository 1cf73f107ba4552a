"""The comparison methods of issue 23 (``docs/methods.md``) against references written here from each algorithm.

Before-LLM methods run on the shipped toy checkpoint (real LLaVA-1.5 geometry: 576 patches, [CLS] attention that
points at the target) and on random images. Each reference recomputes the kept patches by plain loops from a stock
eager ``CLIPVisionModel(output_attentions=True)``, never from the method's code.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import requires_in_llm
from llava.constants import IMAGE_TOKEN_INDEX
from llava.eval import model_vqa_loader
from llava.mm_utils import process_images
from llava.model.builder import load_pretrained_model, load_tokenizer
from llava.pruning import TowerRequest, get_method
from llava.tools import toy_demo, toy_world
from llava.tools.make_sample_data import make_sample_data
from reference import reference_llama, reference_tower, reference_visual_tokens, splice
from test_model_parity import make_image, prompt_ids
from test_pruning import reference_pruned_greedy, run_layers

TOY = toy_demo.SHIPPED
needs_toy = pytest.mark.skipif(not (TOY / "config.json").is_file(), reason=f"no shipped toy checkpoint at {TOY}")
BUDGETS = [58, 29, 64, 128, 1]


@pytest.fixture(scope="module")
def toy():
    """The toy model with the released code's tower arithmetic (eager attention in every layer).

    The toy's background patches have nearly parallel features, so the diverse tokens depend on the last bits: the
    default fp32-SDPA tower differs from eager CLIP by ~1e-6 and keeps 5-9 other patches of 58 on these images.
    """
    tokenizer, model, processor, _ = load_pretrained_model(str(TOY), None, "llava-v1.5-toy", device="cpu",
                                                           cls_attn_arithmetic="upstream")
    images = [toy_world.render(toy_world.sample(1, "eval-textvqa", i)[0]) for i in range(3)] + [make_image(5)]
    pixels = process_images(images, processor, model.config)  # (4, 3, 336, 336)
    yield model, pixels, reference_tower(TOY)
    model.set_pruning_method("fastervlm")
    model.set_visual_token_num(None)


def kept_by_model(model, pixels, method: str, k: int, **params) -> torch.Tensor:
    """(B, k) raster indices the model keeps per image with ``method`` at budget ``k``."""
    model.set_pruning_method(method, **params)
    model.set_visual_token_num(k)
    with torch.no_grad():
        _, info = model.encode_images(pixels)
    return torch.stack(info.kept_indices)


@torch.no_grad()
def eager_clip(tower, pixels):
    """The selected layer's patch features (B, N, C) and [CLS] → patch attention (B, H, N), from stock eager CLIP."""
    out = tower(pixels, output_hidden_states=True, output_attentions=True)
    return out.hidden_states[-2][:, 1:], out.attentions[-2][:, :, 0, 1:]


# --------------------------------------------------------------------------- VisPruner


def reference_vispruner(feats: torch.Tensor, cls_attn: torch.Tensor, k: int, ratio: float) -> list[int]:
    """VisPruner step by step as its authors' ``encode_images`` does it, for one crop; ties → lower index.

    ``feats``: (N, C) patch features; ``cls_attn``: (H, N). Odd lists split as intended: A = even positions (⌈R/2⌉).
    """
    scores = cls_attn.mean(0).tolist()  # head mean
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))  # descending, stable
    important, residual = order[:int(k * ratio)], order[int(k * ratio):]
    diverse = k - len(important)
    normed = feats / feats.norm(dim=-1, keepdim=True)  # their arithmetic: x / ‖x‖, then a matrix product
    while diverse > 0 and len(residual) > diverse:
        r = min(8, len(residual) - diverse)
        a, b = residual[0::2], residual[1::2]
        sim = (normed[a] @ normed[b].T).max(dim=-1).values.tolist()
        ranked = sorted(range(len(a)), key=lambda i: (-sim[i], i))  # most redundant first
        residual = [a[i] for i in ranked[r:]] + b
    return sorted(important + (residual if diverse > 0 else []))


@needs_toy
@pytest.mark.parametrize("k", BUDGETS)
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_vispruner_keeps_the_authors_selection_on_the_toy_checkpoint(toy, k, ratio):
    model, pixels, tower = toy
    feats, cls_attn = eager_clip(tower, pixels)
    expected = torch.tensor([reference_vispruner(f, a, k, ratio) for f, a in zip(feats, cls_attn)])
    assert torch.equal(kept_by_model(model, pixels, "vispruner", k, important_ratio=ratio), expected)


@needs_toy
def test_vispruner_follows_the_algorithm_on_the_default_tower(toy):
    """With the default (fp32 SDPA) tower arithmetic, the kept set is the reference's on that tower's outputs."""
    _, pixels, _ = toy
    _, model, _, _ = load_pretrained_model(str(TOY), None, "llava-v1.5-toy", device="cpu")
    with torch.no_grad():
        out = model.get_vision_tower()(pixels, request=TowerRequest(cls_attn=True))
    expected = torch.tensor([reference_vispruner(f, a, 58, 0.5) for f, a in zip(out.features, out.cls_attn)])
    assert torch.equal(kept_by_model(model, pixels, "vispruner", 58), expected)


@needs_toy
def test_vispruner_is_not_fastervlm_and_batches_equal_singles(toy):
    model, pixels, _ = toy
    batch = kept_by_model(model, pixels, "vispruner", 58)
    assert not torch.equal(batch, kept_by_model(model, pixels, "fastervlm", 58))  # the diverse half differs
    assert torch.equal(kept_by_model(model, pixels, "vispruner", 58, important_ratio=1.0),
                       kept_by_model(model, pixels, "fastervlm", 58))  # ratio 1: important tokens only
    singles = torch.cat([kept_by_model(model, pixels[i:i + 1], "vispruner", 58) for i in range(4)])
    assert torch.equal(batch, singles)


def test_vispruner_rejects_a_ratio_outside_0_1():
    with pytest.raises(ValueError, match="--important-ratio must be in"):
        get_method("vispruner", important_ratio=1.5)


# --------------------------------------------------------------------------- VisionZip


@torch.no_grad()
def eager_keys(tower, pixels) -> torch.Tensor:
    """(B, N, C) the selected layer's attention keys (heads concatenated), recomputed from its input."""
    out = tower(pixels, output_hidden_states=True)
    layer = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder.layers[-2]
    return layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[-3]))[:, 1:]


def reference_visionzip(feats, cls_attn, keys, k: int, contextual: int, heads: int = 4):
    """VisionZip for one crop by loops: (kept raster indices, {kept index: its feature})."""
    summed = cls_attn.sum(0).tolist()
    dominant = sorted(sorted(range(len(summed)), key=lambda i: (-summed[i], i))[:k - contextual])
    metric = keys.view(keys.shape[0], heads, -1).mean(1)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    rest = [i for i in range(len(summed)) if i not in dominant]
    targets = rest[::max(1, len(rest) // contextual)][:contextual] if contextual else []
    groups = {t: [] for t in targets}
    for j in rest:
        if targets and j not in groups:
            sims = [float(metric[j] @ metric[t]) for t in targets]
            groups[targets[sims.index(max(sims))]].append(j)
    out = {i: feats[i] for i in dominant}
    for t, members in groups.items():
        out[t] = feats[t] + (feats[members].mean(0) if members else 0)
    return sorted(out), out


@needs_toy
@pytest.mark.parametrize("k, contextual", [(64, 10), (58, 9), (29, 5), (192, 30), (58, 0)])
def test_visionzip_matches_the_reference_on_the_toy_checkpoint(toy, k, contextual):
    model, pixels, tower = toy
    feats, cls_attn = eager_clip(tower, pixels)
    keys = eager_keys(tower, pixels)
    params = {} if contextual == round(k * 10 / 64) else {"contextual": contextual}
    kept = kept_by_model(model, pixels, "visionzip", k, **params)
    model.set_pruning_method("visionzip", **params)
    with torch.no_grad():
        out = model.get_vision_tower()(pixels, request=model.get_pruning_method().tower_request)
        merged, _ = model.get_pruning_method().select_patches(out, k)
    for b in range(pixels.shape[0]):
        indices, tokens = reference_visionzip(feats[b], cls_attn[b], keys[b], k, contextual)
        assert kept[b].tolist() == indices
        torch.testing.assert_close(merged[b, kept[b]], torch.stack([tokens[i] for i in indices]), atol=1e-5, rtol=1e-5)


def test_visionzip_budget_split():
    assert get_method("visionzip").split(64) == (54, 10)  # the authors' LLaVA-1.5 setting
    assert get_method("visionzip").split(128) == (108, 20) and get_method("visionzip").split(192) == (162, 30)
    assert get_method("visionzip", contextual=3).split(58) == (55, 3)
    with pytest.raises(ValueError, match="exceeds the budget"):
        get_method("visionzip", contextual=9).split(8)


# --------------------------------------------------------------------------- DivPrune


def reference_divprune(tokens: torch.Tensor, k: int) -> list[int]:
    """The paper's greedy max–min diversity (distance 1 − cosine) by loops; ties → lower index."""
    normed = tokens / tokens.norm(dim=-1, keepdim=True)
    d = (1 - normed @ normed.T).tolist()
    n = len(d)
    first = max(range(n), key=lambda i: (min(d[i][j] for j in range(n) if j != i), -i))
    picked = [first]
    while len(picked) < k:
        picked.append(max((i for i in range(n) if i not in picked),
                          key=lambda i: (min(d[i][j] for j in picked), -i)))
    return sorted(picked)


def toy_reference_prompt(tower, pixels):
    """The toy checkpoint's reference pieces for one question: tokenizer, stock LLaMA, prompt ids (1, L0), projected
    visual tokens (576, D) of every patch, the spliced embeddings (1, L, D) and the image's first position."""
    tokenizer = load_tokenizer(str(TOY))
    llama = reference_llama(TOY)
    ids = prompt_ids(tokenizer, "What colour is the small shape?")
    visual, _, _ = reference_visual_tokens(TOY, tower, pixels[:1], None)
    embeds = splice(llama, ids, visual[0])
    return tokenizer, llama, ids, visual[0], embeds, int((ids[0] == IMAGE_TOKEN_INDEX).nonzero())


@needs_toy
@requires_in_llm
@pytest.mark.parametrize("k", [58, 29])
def test_divprune_matches_the_paper_on_the_toy_checkpoint(toy, k):
    model, pixels, tower = toy
    tokenizer, llama, ids, visual, embeds, start = toy_reference_prompt(tower, pixels)
    patches = torch.tensor(reference_divprune(visual, k))
    kept = torch.cat([torch.arange(start), start + patches, torch.arange(start + 576, embeds.shape[1])])
    ref_logits, ref_ids = reference_pruned_greedy(llama, embeds, 0, kept, steps=4, eos=tokenizer.eos_token_id)

    model.set_pruning_method("divprune")
    model.set_visual_token_num(k)
    with torch.no_grad():
        logits = model(ids, images=pixels[:1]).logits
    assert torch.equal(model.last_pruning.kept_indices[0], patches) and model.last_pruning.llm_layer == 0
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)  # original positions, layers 0.. pruned
    out = model.generate(ids, images=pixels[:1], do_sample=False, num_beams=1, max_new_tokens=4, use_cache=True)
    assert out[0].tolist() == ref_ids
    assert not torch.equal(patches, kept_by_model(model, pixels[:1], "fastervlm", k)[0])


# --------------------------------------------------------------------------- PyramidDrop


def causal_attention(layer, rotary, hidden, positions) -> torch.Tensor:
    """Layer ``layer``'s full causal attention map on its input (1, L, D), computed here: (L, L), head mean, fp32."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn, L = layer.self_attn, hidden.shape[1]
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x).view(1, L, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, L, -1, attn.head_dim).transpose(1, 2)
    cos, sin = rotary(hidden, positions[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    logits = q @ k.transpose(-1, -2) / attn.head_dim ** 0.5 + torch.full((L, L), float("-inf")).triu(1)
    return torch.softmax(logits.float(), dim=-1).mean(dim=1)[0]


def last_row_attention(layer, rotary, hidden, positions) -> torch.Tensor:
    """(L,) the last row of layer ``layer``'s causal attention map on its input, head mean."""
    return causal_attention(layer, rotary, hidden, positions)[-1]


@torch.no_grad()
def reference_pdrop(llama, embeds, start: int, n: int, layers: list[int], ratio: float, steps: int, eos: int):
    """PyramidDrop by recomputation without a cache: (prefill logits, kept prefill positions per stage, greedy ids).

    Each stage ranks the image tokens still present by the last token's attention in its first layer and keeps
    int(n × ratio^s) of them; positions are renumbered 0..len−1 in every stage. Decode tokens are never dropped.
    """
    bounds, out, logits0, kept, step_logits = [0, *layers, len(llama.model.layers)], [], None, None, []
    prompt_len = embeds.shape[1]
    for _ in range(steps):
        alive, hidden = torch.arange(embeds.shape[1]), embeds
        stages = [alive]
        for s in range(len(bounds) - 1):
            if s > 0:
                if kept is None:  # the prefill ranks; decode steps reuse its choice
                    score = last_row_attention(llama.model.layers[bounds[s]], llama.model.rotary_emb, hidden,
                                               torch.arange(hidden.shape[1]))
                    image = [i for i, p in enumerate(alive.tolist()) if start <= p < start + n]
                    best = sorted(image, key=lambda i: (-float(score[i]), i))[:int(n * ratio ** s)]
                    rows = sorted([i for i, p in enumerate(alive.tolist()) if not start <= p < start + n] + best)
                    stage_rows = alive[rows]
                else:
                    stage_rows = torch.cat([kept[s], torch.arange(prompt_len, embeds.shape[1])])
                rows = [alive.tolist().index(p) for p in stage_rows.tolist()]
                alive, hidden = alive[rows], hidden[:, rows]
                stages.append(alive)
            hidden = run_layers(llama, hidden, torch.arange(hidden.shape[1]),
                                llama.model.layers[bounds[s]:bounds[s + 1]])
        logits = llama.lm_head(llama.model.norm(hidden))
        if kept is None:
            kept, logits0 = stages, logits
        step_logits.append(logits[0, -1])
        out.append(int(logits[0, -1].argmax()))
        if out[-1] == eos:
            break
        embeds = torch.cat([embeds, llama.get_input_embeddings()(torch.tensor([[out[-1]]]))], dim=1)
    return logits0, kept, out, step_logits


@needs_toy
@requires_in_llm
@pytest.mark.parametrize("layers, ratio", [("1,2", 0.5), ("1", 0.1), ("2", 0.3)])
def test_pdrop_matches_the_stagewise_reference_on_the_toy_checkpoint(toy, layers, ratio):
    model, pixels, tower = toy
    tokenizer, llama, ids, _, embeds, start = toy_reference_prompt(tower, pixels)
    stage_layers = [int(x) for x in layers.split(",")]
    ref_logits, kept, ref_ids, ref_steps = reference_pdrop(llama, embeds, start, 576, stage_layers, ratio, 4,
                                                           tokenizer.eos_token_id)

    model.set_pruning_method("pdrop", layers=layers, ratio=ratio)
    model.set_visual_token_num(58)  # a fixed λ: the budget only switches pruning on
    with torch.no_grad():
        logits = model(ids, images=pixels[:1]).logits
    final = kept[-1][(kept[-1] >= start) & (kept[-1] < start + 576)] - start
    assert torch.equal(model.last_pruning.kept_indices[0], final)
    assert len(final) == int(576 * ratio ** len(stage_layers))
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # one decode step on the pruned cache: its logits (renumbered positions), not only argmax
        first = model(ids, images=pixels[:1], use_cache=True)
        token = first.logits[0, -1].argmax().view(1, 1)
        step = model(token, past_key_values=first.past_key_values, use_cache=True).logits[0, -1]
    torch.testing.assert_close(step, ref_steps[1], atol=1e-5, rtol=1e-5)
    out = model.generate(ids, images=pixels[:1], do_sample=False, num_beams=1, max_new_tokens=4, use_cache=True)
    assert out[0].tolist() == ref_ids


def test_pdrop_budget_is_the_average_over_layers():
    from llava.bench import flops
    from llava.pruning.pdrop import ratio_for_average, schedule_average

    assert schedule_average(0.5, (8, 16, 24), 32) * 576 == 270  # the authors' default: 576/288/144/72
    assert ratio_for_average(270 / 576, (8, 16, 24), 32) == pytest.approx(0.5, abs=1e-6)
    for t in (192, 160):  # the same λ as the FLOPs calculator's schedule
        assert ratio_for_average(t / 576, (8, 16, 24), 32) == pytest.approx(
            flops.pdrop_ratio_for_average(t, 576, 32), abs=1e-9)
    with pytest.raises(ValueError, match="out of reach"):
        ratio_for_average(64 / 576, (8, 16, 24), 32)
    with pytest.raises(ValueError, match="--pdrop-layers must be increasing"):
        get_method("pdrop", layers="16,8")


# --------------------------------------------------------------------------- SparseVLM


def reference_dpc(x: torch.Tensor, k: int) -> torch.Tensor:
    """Density-peak clustering with k neighbours by loops (no tie noise): (k, C) cluster means."""
    n, C = x.shape
    d = [[float((x[i] - x[j]).norm()) / C ** 0.5 for j in range(n)] for i in range(n)]
    density = [math.exp(-sum(v * v for v in sorted(row)[:k]) / k) for row in d]
    dmax = max(max(row) for row in d)
    parent = [min([d[i][j] for j in range(n) if density[j] > density[i]], default=dmax) for i in range(n)]
    centres = sorted(range(n), key=lambda i: (-parent[i] * density[i], i))[:k]
    assign = [min(range(k), key=lambda c: (d[centres[c]][j], c)) for j in range(n)]
    for c, i in enumerate(centres):
        assign[i] = c
    return torch.stack([x[[j for j in range(n) if assign[j] == c]].mean(0) for c in range(k)])


def rater_scores(layer, rotary, hidden, positions, raters: list[int]) -> torch.Tensor:
    """(L,) attention from the rater rows of layer ``layer``'s full causal map on its input, head then row mean."""
    return causal_attention(layer, rotary, hidden, positions)[raters].mean(0)


@torch.no_grad()
def reference_sparsevlm(llama, embeds, start: int, n: int, layers: list[int], keeps: list[int], prompt_len: int):
    """SparseVLM v1 without a cache on ``embeds`` (1, L, D), of which the first ``prompt_len`` are the prompt and
    the rest decoded tokens (never dropped, at their full-length positions): (logits, prompt positions kept)."""
    v = embeds[0, start:start + n]
    rel = (v @ embeds[0, start + n:prompt_len].T).softmax(-1).mean(0)
    raters = [start + n + i for i in range(len(rel)) if rel[i] > rel.mean()]
    origin, hidden = list(range(embeds.shape[1])), embeds
    positions, v0, v1, prev = torch.arange(embeds.shape[1]), start, start + n, 0
    for layer, keep in zip(layers, keeps):
        hidden = run_layers(llama, hidden, positions, llama.model.layers[prev:layer])
        score = rater_scores(llama.model.layers[layer], llama.model.rotary_emb, hidden, positions, raters)
        hidden = run_layers(llama, hidden, positions, llama.model.layers[layer:layer + 1])
        image = list(range(v0, v1))
        best = sorted(sorted(image, key=lambda i: (-float(score[i]), i))[:min(keep, len(image) - 1)])
        pruned = [i for i in image if i not in best]
        recycle = sorted(pruned, key=lambda i: (-float(score[i]), i))[:int(len(pruned) * 0.3) + 1]
        merged = reference_dpc(hidden[0, recycle], int(len(recycle) / 10) + 1)
        shift = (v1 - v0) - len(best) - len(merged)
        raters = [r - shift for r in raters]
        origin = origin[:v0] + [origin[i] for i in best] + [-1] * len(merged) + origin[v1:]
        hidden = torch.cat([hidden[:, :v0], hidden[:, best], merged[None], hidden[:, v1:]], dim=1)
        v1 = v0 + len(best) + len(merged)
        prompt_now = len(origin) - (embeds.shape[1] - prompt_len)  # prompt tokens left
        positions = torch.tensor(list(range(prompt_now)) + list(range(prompt_len, embeds.shape[1])))
        prev = layer + 1
    hidden = run_layers(llama, hidden, positions, llama.model.layers[prev:])
    return llama.lm_head(llama.model.norm(hidden)), [p for p in origin if p >= 0 and p < prompt_len]


@needs_toy
@requires_in_llm
@pytest.mark.parametrize("layers, keeps", [("0,1", "100,40"), ("1", "58")])
def test_sparsevlm_matches_the_stagewise_reference_on_the_toy_checkpoint(toy, layers, keeps):
    model, pixels, tower = toy
    tokenizer, llama, ids, _, embeds, start = toy_reference_prompt(tower, pixels)
    L = embeds.shape[1]
    stage_layers, stage_keeps = [int(x) for x in layers.split(",")], [int(x) for x in keeps.split(",")]
    ref_logits, kept = reference_sparsevlm(llama, embeds, start, 576, stage_layers, stage_keeps, L)

    model.set_pruning_method("sparsevlm", layers=layers, keeps=keeps)
    model.set_visual_token_num(58)
    with torch.no_grad():
        logits = model(ids, images=pixels[:1]).logits
    patches = torch.tensor([p - start for p in kept if start <= p < start + 576])
    assert torch.equal(model.last_pruning.kept_indices[0], patches)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    from llava.bench.flops import sparsevlm_schedule  # the FLOPs calculator counts the same tokens

    assert logits.shape[1] - (L - 576) == sparsevlm_schedule(576, 4, stage_keeps, stage_layers)[-1]
    # One decode step on the pruned cache: its logits, not only its argmax (the toy's greedy tokens barely move).
    with torch.no_grad():
        first = model(ids, images=pixels[:1], use_cache=True)
        token = first.logits[0, -1].argmax().view(1, 1)
        step = model(token, past_key_values=first.past_key_values, use_cache=True).logits[0, -1]
    grown = torch.cat([embeds, llama.get_input_embeddings()(token)], dim=1)
    expected = reference_sparsevlm(llama, grown, start, 576, stage_layers, stage_keeps, L)[0][0, -1]
    torch.testing.assert_close(step, expected, atol=1e-5, rtol=1e-5)
    out = model.generate(ids, images=pixels[:1], do_sample=False, num_beams=1, max_new_tokens=4, use_cache=True)
    ref_ids = []  # greedy by recomputation: decoded tokens at their full-length positions, never dropped
    for _ in range(len(out[0])):
        step_logits, _ = reference_sparsevlm(llama, embeds, start, 576, stage_layers, stage_keeps, L)
        ref_ids.append(int(step_logits[0, -1].argmax()))
        embeds = torch.cat([embeds, llama.get_input_embeddings()(torch.tensor([[ref_ids[-1]]]))], dim=1)
    assert out[0].tolist() == ref_ids


def test_sparsevlm_budgets_are_the_authors():
    assert get_method("sparsevlm").schedule(64) == (66, 30, 17)
    assert get_method("sparsevlm").schedule(192) == (300, 200, 110)
    with pytest.raises(ValueError, match=r"defines budgets \[64, 96, 128, 192\] only"):
        get_method("sparsevlm").schedule(58)
    assert get_method("sparsevlm", keeps="120,60,30").schedule(58) == (120, 60, 30)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_sample_data(tmp_path_factory.mktemp("eval"), questions=5)


@pytest.mark.parametrize("method, extra", [
    ("vispruner", []), ("visionzip", []), pytest.param("divprune", [], marks=requires_in_llm),
    pytest.param("pdrop", ["--pdrop-layers", "1", "--pdrop-lambda", "0.5"], marks=requires_in_llm),
    pytest.param("sparsevlm", ["--sparsevlm-layers", "0", "--sparsevlm-keeps", "58"], marks=requires_in_llm)])
def test_cli_answers_batch_four_as_batch_one(tiny_ckpt, data, tmp_path, method, extra, capsys):
    """Batch 4 answers as batch 1; an in-LLM method's log says where its budget applies (all 576 tokens enter)."""
    args = ["--model-path", str(tiny_ckpt), "--question-file", str(data / "textvqa/llava_textvqa_val_v051_ocr.jsonl"),
            "--image-folder", str(data / "textvqa/train_images"), "--temperature", "0", "--conv-mode", "vicuna_v1",
            "--max_new_tokens", "6", "--device", "cpu", "--pruning-method", method, "--visual-token-num", "58", *extra]
    one, four = tmp_path / "one.jsonl", tmp_path / "four.jsonl"
    model_vqa_loader.main(args + ["--answers-file", str(one)])
    model_vqa_loader.main(args + ["--answers-file", str(four), "--batch-size", "4"])
    pick = lambda p: [(json.loads(l)["question_id"], json.loads(l)["text"]) for l in p.read_text().splitlines()]
    assert pick(four) == pick(one) and len(pick(one)) == 5
    out = capsys.readouterr().out
    assert "Average number of visual tokens: " + ("576.00" if extra or method == "divprune" else "58.00") in out
    notes = {"divprune": "divprune prunes inside the LLM: all of these tokens enter it; 58 per image crop remain "
                         "from decoder layer 0 on",
             "pdrop": "the stages from decoder layers 1 keep λ = 0.5 of the previous stage's image tokens per crop",
             "sparsevlm": "after decoder layers 0, 58 image tokens per crop remain"}
    assert (notes[method] in out) if method in notes else "prunes inside the LLM" not in out


# --------------------------------------------------------------------------- show_kept


@needs_toy
def test_show_kept_draws_each_method_and_budget(tmp_path):
    from PIL import Image

    from llava.analysis import show_kept

    toy_world.render(toy_world.sample(1, "eval-textvqa", 0)[0]).save(tmp_path / "img.png")
    kept = show_kept.main(["--image", str(tmp_path / "img.png"), "--methods", "fastervlm", "vispruner",
                           "--tokens", "58", "29", "--out", str(tmp_path / "kept.png"), "--device", "cpu"])
    assert sorted(kept) == [("fastervlm", 29), ("fastervlm", 58), ("vispruner", 29), ("vispruner", 58)]
    assert all(len(v) == t and v == sorted(v) for (_, t), v in kept.items())
    assert kept["fastervlm", 58] != kept["vispruner", 58]
    assert Image.open(tmp_path / "kept.png").size[0] > Image.open(tmp_path / "kept.png").size[1] / 2  # 2 × 2 panels


# --------------------------------------------------------------------------- summarize --methods


def test_summarize_methods_rows_are_relative_to_one_unpruned_run(tmp_path, capsys):
    from llava.eval import summarize as summ
    from llava.eval.provenance import write_score

    scores = {("fastervlm", 576): (80.0, 60.0), ("fastervlm", 58): (72.0, 54.0), ("vispruner", 58): (76.0, 57.0),
              ("vispruner", 29): (60.0, 45.0), ("visionzip", 58): (40.0, 30.0), ("visionzip", 576): (1.0, 1.0)}
    for (method, t), (pope, textvqa) in scores.items():
        write_score(summ.score_path(tmp_path, "pope", "ck", method, t), "pope", pope, "f1")
        write_score(summ.score_path(tmp_path, "textvqa", "ck", method, t), "textvqa", textvqa, "acc")
    summ.main(["--eval-dir", str(tmp_path), "--ckpt", "ck", "--methods", "fastervlm", "vispruner", "visionzip",
               "--tokens", "58", "29", "--format", "csv"])
    rows = [line.split(",") for line in capsys.readouterr().out.splitlines()]
    assert rows[0][:2] == ["Method", "Tokens"] and rows[0][-1] == "Average %"
    avg = {(r[0], r[1]): r[-1] for r in rows[1:]}
    assert avg == {("unpruned (fastervlm)", "576"): "100.00", ("fastervlm", "58"): "90.00",
                   ("fastervlm", "29"): "-", ("vispruner", "58"): "95.00", ("vispruner", "29"): "75.00",
                   ("visionzip", "58"): "50.00", ("visionzip", "29"): "-"}  # visionzip's own n_576 is not used


# --------------------------------------------------------------------------- LLaVA-NeXT


@requires_in_llm
@pytest.mark.parametrize("method, params", [
    ("vispruner", {}), ("visionzip", {}), ("divprune", {}), ("pdrop", {"layers": "1", "ratio": 0.5}),
    ("sparsevlm", {"layers": "0", "keeps": "58"})])
def test_llava_next_prunes_per_crop(tmp_path_factory, method, params):
    """On a tiny LLaVA-NeXT every crop (base included) keeps its own T (before-LLM methods and DivPrune: exactly
    the crop's own choice); PyramidDrop and SparseVLM rank the whole image as one span."""
    from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("next") / "llava-v1.6-tiny", seed=0, arch="next")
    tokenizer, model, processor, _ = load_pretrained_model(str(ckpt), device="cpu")
    image = make_image(3, size=(500, 300))
    pixels = process_images([image], processor, model.config)  # (1, crops, 3, 336, 336)
    ids = prompt_ids(tokenizer, "What is it?")
    model.set_pruning_method(method, **params)
    model.set_visual_token_num(58)
    with torch.no_grad():
        model(ids, images=pixels, image_sizes=[image.size])
    kept = model.last_pruning.kept_indices
    crops = pixels.shape[1]
    assert len(kept) == crops > 1
    if method in ("vispruner", "visionzip", "divprune"):
        assert all(len(k) == 58 for k in kept)
    if method in ("vispruner", "visionzip"):  # each crop's tower outputs alone choose the same patches
        with torch.no_grad():
            out = model.get_vision_tower()(pixels[0], request=model.get_pruning_method().tower_request)
            for c in range(crops):
                one = type(out)(*(None if t is None else t[c:c + 1] for t in
                                  (out.features, out.cls_attn, out.keys, out.patch_attn)))
                assert torch.equal(kept[c], model.get_pruning_method().select_patches(one, 58)[1][0])
    if method == "pdrop":
        assert sum(len(k) for k in kept) <= int(0.5 * (crops * 576 + 1000))


def test_show_kept_method_params():
    from llava.analysis.show_kept import method_params

    assert method_params(["pdrop.layers=1", "pdrop.ratio=0.5", "vispruner.important_ratio=0.75"]) == {
        "pdrop": {"layers": "1", "ratio": 0.5}, "vispruner": {"important_ratio": 0.75}}
    with pytest.raises(SystemExit, match="expected METHOD.NAME=VALUE"):
        method_params(["pdrop.nope=1"])
