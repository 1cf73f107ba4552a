"""The latency harness (llava/bench/latency.py) on tiny models: structure and ratios, never wall-clock limits."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from llava.bench import flops, latency

FAST = ["--repeats", "1", "--warmup", "0", "--new-tokens", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_run(tiny_ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("latency") / "latency.json"
    result = latency.main(["--model-path", str(tiny_ckpt), *FAST, "--json", str(path)])
    return result, json.loads(path.read_text())


def test_rows_and_ratios(tiny_run, tiny_model, capsys):
    result, written = tiny_run
    assert written == json.loads(json.dumps(result))
    n = tiny_model[1].get_vision_tower().num_patches
    per_crop = flops.ModelConfig("tiny", flops.VICUNA_7B, replace(flops.CLIP_L14_336, image_size=14 * math.isqrt(n)))
    expected = [n] + [flops.kept_from_reduction(per_crop, r) for r in (50, 75, 90, 95)]
    rows = result["rows"]
    assert [r["kept_per_crop"] for r in rows] == [r["visual_tokens"] for r in rows] == expected
    base = rows[0]
    for key in ("prefill_speedup", "tpot_speedup", "e2e_speedup", "flops_limit_speedup"):
        assert base[key] == 1.0, key
        assert all(math.isfinite(r[key]) and r[key] > 0 for r in rows), key
    for r in rows:
        assert len(r["prefill_runs_ms"]) == len(r["tpot_runs_ms"]) == len(r["e2e_runs_ms"]) == 1
        assert r["batch_size"] == 1 and r["samples_per_s"] == pytest.approx(1e3 / r["e2e_ms"])
        assert r["peak_mem_mib"] is None or r["peak_mem_mib"] >= 0
        assert r["mem_ratio"] is None or math.isfinite(r["mem_ratio"])
    assert result["compare_upstream"] is None and result["compare_upstream_e2e"] is None


def test_flops_limit_matches_the_flops_calculator(tiny_run):
    """The FLOPs-limit column equals llava.bench.flops' own speed-up for the same shapes and text tokens."""
    result, _ = tiny_run
    m = result["model"]
    cfg = flops.ModelConfig(m["name"], flops.LLMConfig(**m["llm"]), flops.VisionConfig(**m["vision"]), m["num_crops"])
    rows = result["rows"]
    table = flops.efficiency_rows(cfg, [r["visual_tokens"] for r in rows[1:]], fastv_k=None,
                                  n_text=result["settings"]["text_tokens"])
    for ours, ref in zip(rows, table):
        assert ours["flops_limit_speedup"] == pytest.approx(ref.speedup, rel=1e-12)
        assert ours["reduction_pct"] == pytest.approx(ref.reduction_pct)
    assert rows[-1]["flops_limit_speedup"] > 1


def test_markdown_table(tiny_run):
    result, _ = tiny_run
    rows = [latency.Row(**{k: tuple(v) if k.endswith("_runs_ms") else v for k, v in r.items()})
            for r in result["rows"]]
    table = latency.to_markdown(rows).splitlines()
    assert len(table) == 2 + len(rows) and "(unpruned)" in table[2] and table[2].count("1.00x") == 4


def test_tiny_flag_and_compare_upstream(capsys):
    result = latency.main(["--tiny", "--kept", "9", "--compare", "upstream", *FAST])
    assert [r["kept_per_crop"] for r in result["rows"]][1:] == [9]
    cmp = result["compare_upstream"]
    for key in ("plain_sdpa_ms", "upstream_eager_ms", "ours_ms", "upstream_eager_overhead_pct", "ours_overhead_pct"):
        assert math.isfinite(cmp[key]), key
    out = capsys.readouterr().out
    assert "| upstream: eager CLIP" in out and "| 9 |" in out


@pytest.mark.parametrize("kept", [None, 58, 9])
def test_upstream_style_tower_keeps_the_same_patches(tiny_model, kept):
    """The swapped-in upstream forward (eager CLIP, attentions[-2]) selects exactly what this project's tower does."""
    _, model, processor, _ = tiny_model
    ids, images, sizes = latency.make_inputs(model, processor, 60, seed=0)
    tower = model.get_vision_tower()
    model.set_visual_token_num(kept)
    try:
        with torch.inference_mode():
            ours = model(ids, images=images, image_sizes=sizes).logits
            ours_kept = model.last_pruning.kept_indices
            with latency.upstream_style_tower(model):
                assert tower.vision_tower.config._attn_implementation == "eager"
                upstream = model(ids, images=images, image_sizes=sizes).logits
                upstream_kept = model.last_pruning.kept_indices
    finally:
        model.set_visual_token_num(None)
    assert [k.tolist() for k in upstream_kept] == [k.tolist() for k in ours_kept]
    assert len(ours_kept[0]) == (kept or tower.num_patches)
    torch.testing.assert_close(upstream, ours, atol=1e-4, rtol=1e-4)
    assert "forward" not in vars(tower) and tower.vision_tower.config._attn_implementation != "eager"  # restored


def test_compare_upstream_e2e(tiny_ckpt, capsys):
    result = latency.main(["--model-path", str(tiny_ckpt), "--kept", "58", "--compare", "upstream-e2e",
                           "--batch-size", "2", *FAST])
    e2e = result["compare_upstream_e2e"]
    for path, batch in (("upstream", 1), ("ours", 2)):
        rows = e2e[path]
        assert [(r["visual_tokens"], r["batch_size"]) for r in rows] == [(576, batch), (58, batch)], path
        assert [r["flops_limit_speedup"] for r in rows] == [r["flops_limit_speedup"] for r in result["rows"]]
        for r in rows:
            for key in ("prefill_ms", "e2e_ms", "samples_per_s", "prefill_speedup", "e2e_speedup"):
                assert math.isfinite(r[key]) and r[key] > 0, (path, key)
            assert r["tpot_ms"] is None and r["tpot_speedup"] is None  # decode is not timed apart here
            assert r["samples_per_s"] == pytest.approx(batch * 1e3 / r["e2e_ms"])
    ratios = e2e["ours_over_upstream"]
    assert [x["visual_tokens"] for x in ratios] == [576, 58]
    for x in ratios:
        assert math.isfinite(x["prefill_per_sample_speedup"]) and math.isfinite(x["samples_per_s_ratio"])
        assert x["mem_ratio"] is None or math.isfinite(x["mem_ratio"])
    table = capsys.readouterr().out.split("Upstream-style")[1].splitlines()
    header = next(line for line in table if line.startswith("| Visual tokens"))
    assert "Samples/s up / ours" in header and "Peak mem (MiB) up / ours" in header and "FLOPs-limit" in header
    body = [line for line in table if line.startswith("| 576") or line.startswith("| 58 ")]
    assert len(body) == 2 and all(line.count("|") == header.count("|") for line in body)


def test_random_arch_is_built_in_memory(monkeypatch):
    """--random-arch with a small stand-in preset: the requested layer counts, no checkpoint on disk."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    small = (flops.LLMConfig(64, 160, num_layers=32, num_heads=4), replace(flops.CLIP_L14_336, hidden_size=32,
             intermediate_size=64, image_size=56), 4)
    monkeypatch.setitem(latency.RANDOM_ARCHS, "small", small)
    result = latency.main(["--random-arch", "small", "--layers", "3", "--kept", "4", *FAST])
    assert result["model"]["llm"]["num_layers"] == 3 and result["model"]["llm"]["hidden_size"] == 64
    # 24 tower layers scaled by 3/32 LLM layers, at least 2
    assert result["model"]["vision"]["num_layers"] == 2 and result["model"]["vision"]["hidden_size"] == 32
    assert [r["visual_tokens"] for r in result["rows"]] == [16, 4]


def test_random_arch_model_matches_requested_shapes():
    llm, vision, heads = latency.RANDOM_ARCHS["llama-7b"]
    assert (llm.hidden_size, llm.intermediate_size, llm.num_heads) == (4096, 11008, 32)
    assert (vision.hidden_size, vision.image_size, vision.patch_size, heads) == (1024, 336, 14, 16)
    model, processor = latency.build_random_llava(flops.LLMConfig(32, 48, 32, 2), vision.__class__(
        "v", 24, 16, 32, 28, 14), 2, layers=1, vision_layers=2, device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and len(model.model.layers) == 1
    assert model.get_vision_tower().num_patches == 4 and processor.crop_size["height"] == 28


@pytest.mark.parametrize("flags, message", [(["--new-tokens", "1"], "at least 2"), (["--kept", "999"], "in \\[0, "),
                                            (["--batch-size", "0"], "--batch-size must be")])
def test_bad_flags(tiny_ckpt, flags, message):
    with pytest.raises(SystemExit, match=message):
        latency.main(["--model-path", str(tiny_ckpt), "--device", "cpu", "--repeats", "1", *flags])


def test_every_flag_has_help():
    for action in latency.build_parser()._actions:
        assert action.help, action.option_strings


@pytest.mark.gpu
def test_checkpoint_keeps_the_evaluation_tower_dtype_and_times_any_method(tiny_ckpt, device, dtype, recwarn):
    """A real checkpoint runs its tower as evaluation does (fp32 for LLaVA-1.5) whatever --dtype the LLM takes, the
    method comes from --pruning-method and its flags, and decoding passes the KV cache under the installed name
    (no deprecation warning per step)."""
    # A reduced-precision LLM, so that a tower following --dtype would show.
    flag, low = ("fp16", torch.float16) if dtype == torch.float16 else ("bf16", torch.bfloat16)
    result = latency.main(["--model-path", str(tiny_ckpt), "--device", str(device), "--dtype", flag,
                           "--repeats", "1", "--warmup", "0", "--new-tokens", "3", "--kept", "29",
                           "--pruning-method", "adaptprune-cls", "--adaptprune-radius", "4"])
    assert result["tower_dtype"] == "float32" and result["dtype"] == str(low).removeprefix("torch.")
    assert result["pruning_method"].startswith("AdaptPruneCLS(") and "radius=4.0" in result["pruning_method"]
    assert not [w for w in recwarn if "past_key_values" in str(w.message)]


def test_flag_of_another_method_is_one_error_line():
    from conftest import ROOT

    result = subprocess.run([sys.executable, "-m", "llava.bench.latency", "--tiny", "--device", "cpu",
                             "--fastv-k", "1"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("error: --fastv-k applies to --pruning-method")
