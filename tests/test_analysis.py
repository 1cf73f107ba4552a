"""Attention analyses (llava/analysis) on the tiny checkpoint against an independent recomputation.

The reference side uses HF's ``LlamaForCausalLM`` with eager attention on ``inputs_embeds`` spliced from
eager-CLIP features (tests/reference.py), the image span taken from the prompt, and each quantity
written as a plain mean over the rows the causal mask lets attend to a visual token.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llava.analysis import attn_dispersion, attn_shift
from llava.analysis.data import build_prompt, first_turn_question, load_samples
from llava.analysis.plotting import log_axis
from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images, tokenizer_image_token
from reference import reference_llama, reference_tower, reference_visual_tokens, splice

# (stored first human turn, the question text the prompt must carry); sample 1 has its tag at the end.
TURNS = [("<image>\nWhat is the color of the bus?", "What is the color of the bus?"),
         ("How many people are there?\n<image>", "How many people are there?"),
         ("<image>\nIs there a dog in the image?\nAnswer the question using a single word or phrase.",
          "Is there a dog in the image?\nAnswer the question using a single word or phrase.")]
SIZES = [(90, 60), (50, 120), (84, 84)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three samples with images, plus a fourth whose image is missing."""
    root = tmp_path_factory.mktemp("analysis_data")
    (root / "images" / "coco").mkdir(parents=True)
    lines = []
    for i, ((turn, _), (w, h)) in enumerate(zip(TURNS, SIZES)):
        pixels = (np.random.RandomState(i).rand(h, w, 3) * 255).astype("uint8")
        Image.fromarray(pixels).save(root / "images" / "coco" / f"{i}.png")
        lines.append({"id": i, "image": f"coco/{i}.png",
                      "conversations": [{"from": "human", "value": turn}, {"from": "gpt", "value": "Red"},
                                        {"from": "human", "value": "And the sky?"}]})
    lines.append({"id": "gone", "image": "coco/missing.png",
                  "conversations": [{"from": "human", "value": "<image>\nHi"}]})
    (root / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def cli_args(ckpt: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model-path", str(ckpt), "--question-file", str(data / "data.jsonl"),
            "--image-folder", str(data / "images"), "--output-folder", str(out), "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def reference(tiny_ckpt, tiny_model, data) -> list[dict]:
    """Per sample: image span, head-mean attention matrices of every layer, [CLS] scores (independent path)."""
    tokenizer, model, processor, _ = tiny_model
    llama = reference_llama(tiny_ckpt)
    llama.set_attn_implementation("eager")
    tower = reference_tower(tiny_ckpt)
    out = []
    for i, (_, question) in enumerate(TURNS):
        prompt = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions. "
                  f"USER: <image>\n{question} ASSISTANT:")
        ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
        image = Image.open(data / "images" / "coco" / f"{i}.png").convert("RGB")
        pixels = process_images([image], processor, model.config)
        with torch.no_grad():
            visual, _, scores = reference_visual_tokens(tiny_ckpt, tower, pixels, None)
            attentions = llama(inputs_embeds=splice(llama, ids, visual[0]), output_attentions=True).attentions
        out.append({"start": int((ids[0] == IMAGE_TOKEN_INDEX).nonzero()), "visual": visual.shape[1],
                    "attn": [a[0].mean(dim=0) for a in attentions], "cls": scores[0]})
    return out


@pytest.fixture(scope="module")
def shift(tiny_ckpt, data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("shift")
    attn_shift.main(cli_args(tiny_ckpt, data, out))
    return json.loads((out / "attn_shift.json").read_text()), out


@pytest.fixture(scope="module")
def dispersion(tiny_ckpt, data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("dispersion")
    attn_dispersion.main(cli_args(tiny_ckpt, data, out, "--bins", "20"))
    return json.loads((out / "attn_dispersion.json").read_text()), out


def reference_shift(sample: dict, layer: int) -> dict[str, np.ndarray]:
    """Each quantity as a mean over the rows that can attend to visual token j (causal mask)."""
    a, s, v = sample["attn"][layer], sample["start"], sample["visual"]
    last = a.shape[0] - 1
    out = {name: np.zeros(v) for name in ("full", "image", "text", "last")}
    for j in range(v):
        col = a[:, s + j]
        out["full"][j] = col[s + j:].mean()
        out["image"][j] = col[s + j:s + v].mean()
        out["text"][j] = col[s + v:last].mean()
        out["last"][j] = col[last]
    return out


def test_shift_numbers_match_reference(shift, reference, tiny_model):
    result, _ = shift
    side = tiny_model[1].get_vision_tower().num_patches_per_side
    assert result["num_layers"] == 2 and result["visual_tokens"] == side ** 2 and result["grid_side"] == side
    per_sample = result["samples"]["per_sample"]
    assert [p["image_start"] for p in per_sample] == [r["start"] for r in reference]
    assert [p["prompt_len"] for p in per_sample] == [r["attn"][0].shape[0] for r in reference]
    for layer in range(2):
        refs = [reference_shift(r, layer) for r in reference]
        for name in ("full", "image", "text", "last"):
            expected = np.mean([r[name] for r in refs], axis=0)
            np.testing.assert_allclose(result["layers"][layer][name], expected, atol=1e-6, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(result["cls"], torch.stack([r["cls"] for r in reference]).mean(0), atol=1e-6)


def test_text_divisor_counts_the_rows_summed():
    """Attention 1 wherever the causal mask allows: every quantity must average to exactly 1.

    Upstream's text divisor (Q − V instead of Q − V − 1) gives 5/6 here."""
    q = attn_shift.shift_quantities(torch.ones(10, 4).tril())  # (Q, V): row r sees visual tokens 0..r
    for name in ("full", "image", "text", "last"):
        torch.testing.assert_close(q[name], torch.ones(4), msg=name)
    assert attn_shift.shift_quantities(torch.ones(5, 4).tril())["text"] is None  # only the last row follows the image


def test_missing_image_is_recorded_and_plots_written(shift):
    result, out = shift
    samples = result["samples"]
    assert samples["requested"] == 4 and samples["processed"] == 3
    assert [s["id"] for s in samples["skipped"]] == ["gone"] and "not found" in samples["skipped"][0]["reason"]
    expected = [out / "cls_attn" / "dist.png", out / "cls_attn" / "map.png"]
    expected += [out / f"{n}_attn" / k / f"layer_{i}.png" for n in attn_shift.QUANTITIES for k in ("dist", "map")
                 for i in range(2)]
    for path in expected:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_strict_stops_at_missing_image(tiny_ckpt, data, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        attn_shift.main(cli_args(tiny_ckpt, data, tmp_path, "--strict"))


def test_limit(tiny_ckpt, data, tmp_path):
    result = attn_dispersion.main(cli_args(tiny_ckpt, data, tmp_path, "--limit", "1"))
    assert result["samples"]["requested"] == 1 and result["samples"]["processed"] == 1


def test_dispersion_numbers_match_reference(dispersion, reference):
    result, out = dispersion
    vectors = {"cls": [r["cls"].numpy() for r in reference],
               "last": [r["attn"][1][-1, r["start"]:r["start"] + r["visual"]].numpy() for r in reference]}
    for name, vs in vectors.items():
        shares = np.mean([np.sort(v)[::-1] / v.sum() for v in vs], axis=0)
        cdf = result["cdf"][name]
        np.testing.assert_allclose(cdf["cumulative_attention_pct"], 100 * np.concatenate([[0], np.cumsum(shares)]),
                                   atol=1e-4)
        np.testing.assert_allclose(cdf["token_proportion_pct"], np.linspace(0, 100, len(shares) + 1), atol=1e-9)
        values = np.concatenate(vs)
        counts, edges = np.histogram(values / values.max(), bins=20)
        hist = result["histograms"][name]
        assert sum(hist["counts"]) == len(values) == 3 * len(vs[0])
        # fp rounding may move a value sitting on a bin edge into the neighbouring bin
        assert np.abs(np.asarray(hist["counts"]) - counts).sum() <= 2
        np.testing.assert_allclose(hist["bin_edges"], edges, atol=1e-5)
        np.testing.assert_allclose(hist["proportions"], np.asarray(hist["counts"]) / len(values))
    for png in ("CDF.png", "cls_attn_dist.png", "last_attn_dist.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_log_axis_labels_are_the_proportions_at_their_heights():
    base, ticks, labels = log_axis(np.array([0.0, 0.0004, 0.2, 0.7996]))
    assert labels == ["$10^{-4}$", "$10^{-3}$", "$10^{-2}$", "$10^{-1}$", "$10^{0}$"]
    np.testing.assert_allclose(np.exp(ticks), [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert math.isclose(base, math.log(1e-4))


def test_multicrop_checkpoint_does_not_crash(tiny_ckpt, tiny_model, data, tmp_path):
    """An anyres (LLaVA-NeXT style) config: every sample is either analysed or skipped with a reason."""
    import shutil

    ckpt = tmp_path / "next"
    shutil.copytree(tiny_ckpt, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    c = tiny_model[1].get_vision_tower().config.image_size  # crop size
    cfg.update(image_aspect_ratio="anyres", image_grid_pinpoints=[[c, 2 * c], [2 * c, c], [2 * c, 2 * c]])
    (ckpt / "config.json").write_text(json.dumps(cfg))
    try:
        attn_shift.main(cli_args(ckpt, data, tmp_path / "out", "--limit", "2"))
    except SystemExit as e:
        assert "no sample could be analysed" in str(e)
    samples = json.loads((tmp_path / "out" / "attn_shift.json").read_text())["samples"]
    assert samples["processed"] + len(samples["skipped"]) == samples["requested"] == 2


@pytest.mark.parametrize("module", [attn_shift, attn_dispersion])
def test_every_flag_has_help(module):
    for action in module.build_parser()._actions:
        assert action.help, action.option_strings


def test_first_turn_extraction_on_shared_1k_file(shared_dir, tiny_model):
    tokenizer = tiny_model[0]
    samples = load_samples(shared_dir / "analysis" / "llava_v1_5_mix1k.jsonl")
    assert len(samples) == 1000
    for sample in samples:
        question = first_turn_question(sample)
        assert question.startswith("<image>\n") and question.count("<image>") == 1
        assert question[len("<image>\n"):].strip() == question[len("<image>\n"):] != ""
        ids = tokenizer_image_token(build_prompt(question), tokenizer)
        assert ids.count(IMAGE_TOKEN_INDEX) == 1
    assert len(load_samples(shared_dir / "analysis" / "llava_v1_5_mix1k.jsonl", limit=7)) == 7


@pytest.mark.parametrize("kind", ["shift", "dispersion"])
def test_shell_wrappers_run(tiny_ckpt, data, tmp_path, kind):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MODEL_PATH": str(tiny_ckpt), "QUESTIONS": str(data / "data.jsonl"),
           "IMAGES": str(data / "images"), "OUTPUT": str(tmp_path / kind), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(root / f"scripts/analyze_attn_{kind}.sh"), "--device", "cpu", "--limit", "2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((tmp_path / kind).rglob("*.json")) and list((tmp_path / kind).rglob("*.png"))
