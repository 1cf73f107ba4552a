"""The GPU check (llava/bench/gpu_check.py) through its CPU dry run: structure and sanity of what it writes,
and the pieces that the dry run cannot reach (no GPU, the flash-attn install, the time budget)."""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import replace

import pytest
import torch

from llava.bench import flops, gpu_check, latency
from llava.eval.runner import generate_batch

LATENCY_PATHS = ("ours", "upstream", "ours_fp16_tower")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    result = gpu_check.main(["--dry-run", "--out", str(out), "--fp16-tower"])
    return result, json.loads((out / gpu_check.JSON_NAME).read_text()), (out / gpu_check.MARKDOWN_NAME).read_text()


@pytest.fixture(scope="module")
def dry_model():
    """The dry run's stand-in for LLaVA-1.5-7B, fp32 on the CPU: ``(model, image_processor, facts)``."""
    return gpu_check.build_model(gpu_check.MODELS["llava-v1.5-7b"], torch.device("cpu"), torch.float32, "sdpa",
                                 dry_run=True, seed=0)


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def flops_config(section: dict) -> flops.ModelConfig:
    m = section["model"]
    return flops.ModelConfig(m["name"], flops.LLMConfig(**m["llm"]), flops.VisionConfig(**m["vision"]), m["num_crops"])


def test_json_is_the_result_and_complete(dry_run):
    result, written, _ = dry_run
    assert written == json.loads(json.dumps(result))
    assert written["status"] == "complete" and written["dry_run"] is True
    assert {name: s["status"] for name, s in written["sections"].items()} == {s.name: "ok" for s in gpu_check.SECTIONS}
    env = written["env"]
    for key in ("torch", "transformers", "python", "llm_dtype", "llm_attention", "tower_attention", "sdpa_backends"):
        assert env[key], key
    assert env["gpu"] is None and env["llm_dtype"] == "float32" and env["llm_attention"] == "sdpa"
    assert isinstance(env["flash_attn"]["importable"], bool) and env["flash_attn"]["install"] is None
    assert finite_positive(env["ceilings"]["matmul_tflop_s"]) and finite_positive(env["ceilings"]["copy_gb_s"])
    settings = written["settings"]
    assert (settings["repeats"], settings["warmup"], settings["new_tokens"]) == (1, 0, 2)


@pytest.mark.parametrize("name", [n for n in gpu_check.MODELS])
def test_latency_sections(dry_run, name):
    s = dry_run[1]["sections"][f"{name}.latency"]
    spec = gpu_check.MODELS[name]
    n = gpu_check.dry_shape(spec).vision.num_patches
    expected = [k * spec.crops for k in (n, 32, 16, 6, 3)]  # 64 patches per 112-px crop: 50/75/90/95 % rounded half-up
    assert s["crops"] == spec.crops and s["timed_runs"] == 1 and s["build_s"] >= 0 and s["weights_mib"] > 0
    assert s["tower_dtype"] == "float32" and s["llm_dtype"] == "float32"
    assert sorted(s["rows"]) == sorted(LATENCY_PATHS)  # the dry run's fp32 tower differs from fp16, so all three
    for path, rows in s["rows"].items():
        assert [r["visual_tokens"] for r in rows] == expected, path
        assert [r["kept_per_crop"] for r in rows] == [n, 32, 16, 6, 3], path
        assert rows[0]["flops_limit_speedup"] == rows[0]["prefill_speedup"] == rows[0]["e2e_speedup"] == 1.0
        for r in rows:
            for key in ("prefill_ms", "e2e_ms", "samples_per_s", "prefill_speedup", "e2e_speedup",
                        "flops_limit_speedup"):
                assert finite_positive(r[key]), (path, key)
            assert r["batch_size"] == 1 and (r["peak_mem_mib"] is None or r["peak_mem_mib"] >= 0)
            assert (r["tpot_ms"] is None) == (path != "ours"), path  # only ours times the decode steps apart
            assert len(r["prefill_runs_ms"]) == len(r["e2e_runs_ms"]) == 1
        assert all(a["flops_limit_speedup"] < b["flops_limit_speedup"] for a, b in zip(rows, rows[1:])), path
    for r in s["rows"]["ours"]:
        assert finite_positive(r["tpot_ms"]) and finite_positive(r["tpot_speedup"])
    assert [x["visual_tokens"] for x in s["ours_over_upstream"]] == expected
    for x in s["ours_over_upstream"]:
        assert finite_positive(x["prefill_per_sample_speedup"]) and finite_positive(x["samples_per_s_ratio"])
    tower = s["tower_alone"]
    assert tower["crops"] == spec.crops
    assert all(finite_positive(tower[k]) for k in ("plain_sdpa_ms", "upstream_eager_ms", "ours_ms"))
    assert any("scaled_dot_product" in op for op in s["attention_ops"]), s["attention_ops"]


def test_flops_limit_is_each_rows_own_budget(dry_run):
    """Every row's FLOPs-limit × is llava.bench.flops' speed-up at that row's own visual tokens, in the JSON and in
    the markdown row that names those tokens."""
    _, written, markdown = dry_run
    text = written["settings"]["text_tokens"]
    for name in gpu_check.MODELS:
        s = written["sections"][f"{name}.latency"]
        rows = s["rows"]["ours"]
        table = flops.efficiency_rows(flops_config(s), [r["visual_tokens"] for r in rows[1:]], fastv_k=None,
                                      n_text=text)
        for path in LATENCY_PATHS:
            for row, ref in zip(s["rows"][path], table):
                assert row["visual_tokens"] == ref.tokens
                assert row["flops_limit_speedup"] == pytest.approx(ref.speedup, rel=1e-12), (name, path)
        block = markdown.split(f"## {name}: latency")[1].split("\n## ")[0]
        header = next(line for line in block.splitlines() if line.startswith("| Visual tokens | Reduction"))
        column = [c.strip() for c in header.split("|")].index("FLOPs-limit ×")
        shown = {}
        for line in block.splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) == len(header.split("|")) and re.fullmatch(r"\d+( \(unpruned\))?", cells[1]):
                shown.setdefault(int(cells[1].split()[0]), cells[column])
        assert shown == {r["visual_tokens"]: f"{r['flops_limit_speedup']:.2f}x" for r in rows}, name


@pytest.mark.parametrize("spec, kept, paper_ratio", [
    (flops.PRESETS["llava-v1.5-7b"], 58, 8.02 / 1.13),  # table 11: unpruned vs FasterVLM at 90 %
    (flops.PRESETS["llava-v1.5-13b"], 29, 15.28 / 1.12),  # table 12, 95 %
    (flops.PRESETS["llava-v1.6-vicuna-7b"], 290, 43.58 / 5.71),  # table 13, 90 %: 5 crops x 58
])
def test_flops_limit_at_real_shapes_matches_the_paper(spec, kept, paper_ratio):
    """The ratio the check reports, on real shapes with the paper's zero text tokens, whatever the row order."""
    def row(tokens: int) -> latency.Row:
        return latency.Row(kept_per_crop=tokens // spec.num_crops, visual_tokens=tokens, reduction_pct=0.0,
                           batch_size=1, prefill_ms=10.0, tpot_ms=1.0, e2e_ms=20.0, samples_per_s=50.0,
                           peak_mem_mib=None)

    rows = [row(spec.visual_tokens), row(spec.visual_tokens // 2), row(kept), row(spec.visual_tokens // 4)]
    latency.add_ratios(rows, spec, 0)
    assert rows[2].flops_limit_speedup == pytest.approx(paper_ratio, rel=0.01)
    assert rows[1].flops_limit_speedup < rows[3].flops_limit_speedup < rows[2].flops_limit_speedup
    assert [r.prefill_speedup for r in rows] == [1.0] * 4  # equal times: the measured column cannot mask the FLOPs one


def test_kept_sets(dry_run):
    s = dry_run[1]["sections"]["llava-v1.5-7b.kept_sets"]
    assert s["images"] == 8 and s["low_precision"] == "float16" and s["tower_dtype"] == "float32"
    assert [b["kept_per_crop"] for b in s["budgets"]] == [64, 32, 16, 6, 3]
    for b in s["budgets"]:
        for variant in ("fp16_tower", "fp32_tower_fp16_io"):
            x = b[variant]
            assert 0 <= x["exact_set_fraction"] <= 1 and 0 <= x["mean_overlap"] <= 1
            assert x["mean_overlap"] >= x["exact_set_fraction"]
    assert s["budgets"][0]["fp16_tower"] == {"exact_set_fraction": 1.0, "mean_overlap": 1.0}  # all patches kept


def test_set_agreement():
    reference = torch.tensor([[0, 1, 2], [0, 1, 2]])
    other = torch.tensor([[0, 1, 2], [0, 1, 5]])
    assert gpu_check.set_agreement(reference, other, 6) == pytest.approx(
        {"exact_set_fraction": 0.5, "mean_overlap": (1 + 2 / 3) / 2})


def test_batching(dry_run):
    s = dry_run[1]["sections"]["llava-v1.5-7b.batching"]
    assert [(r["visual_tokens"], r["batch_size"]) for r in s["rows"]] == [(64, 1), (64, 4), (64, 8),
                                                                            (6, 1), (6, 4), (6, 8)]
    for r in s["rows"]:
        assert finite_positive(r["samples_per_s"]) and finite_positive(r["prefill_ms"])
        assert r["samples_per_s"] == pytest.approx(r["batch_size"] * 1e3 / r["e2e_ms"])
        assert r["tpot_ms"] is None and (r["peak_mem_mib"] is None or r["peak_mem_mib"] >= 0)
        assert finite_positive(r["flops_limit_speedup"])
    assert [r["samples_per_s_vs_smallest_batch"] for r in s["rows"] if r["batch_size"] == 1] == [1.0, 1.0]
    assert [a["kept_per_crop"] for a in s["answers"]] == [64, 6]
    for a in s["answers"]:
        same, padded = a["same_length"], a["padded"]
        assert same["prompts"] == padded["prompts"] == 4
        assert len(set(same["prompt_lengths"])) == 1 and len(set(padded["prompt_lengths"])) == 4
        for x in (same, padded):
            for key in ("identical_fraction", "first_token_identical_fraction", "mean_matching_prefix_fraction",
                        "kept_sets_identical_fraction"):
                assert 0 <= x[key] <= 1, key
            assert x["identical_fraction"] <= x["mean_matching_prefix_fraction"]


def test_markdown_report(dry_run):
    markdown = dry_run[2]
    assert markdown.startswith("# FasterVLM GPU check (dry run)")
    headers = {"latency": "latency, batch 1", "kept_sets": "kept sets", "batching": "batched generation"}
    for section in gpu_check.SECTIONS:
        model, kind = section.name.rsplit(".", 1)
        assert f"## {model}: {headers[kind]}" in markdown, section.name
    assert markdown.count("| Visual tokens | Reduction | FLOPs-limit ×") == 3
    assert "| 64 | 8 |" in markdown and "(padded)" in markdown and "| Kept per crop | float16 tower" in markdown
    for line in markdown.splitlines():
        cells = {c.strip().lower().removesuffix("x") for c in line.split("|")}
        assert not cells & {"nan", "inf", "-inf"}, line


class _Ids:
    """A tokenizer stand-in for generate_batch: the generated ids, as text."""

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(map(str, row)) for row in ids.tolist()]


def test_generate_left_padded_is_the_eval_loops_generation(dry_model):
    """The batching section's generation equals llava.eval.runner.generate_batch's on the same prompts."""
    model, processor, _ = dry_model
    prompts = [latency.make_prompt(model.config.vocab_size, 60 + 5 * i, seed=i) for i in range(3)]
    ids, images = [p for p, _ in prompts], [image for _, image in prompts]
    for batch in (ids[:1], ids):
        ours, counts = gpu_check.generate_left_padded(model, batch, gpu_check.pixels_of(images[:len(batch)], model), 4)
        kwargs = dict(do_sample=False, num_beams=1, max_new_tokens=4, min_new_tokens=4, use_cache=True,
                      pad_token_id=latency.PAD_ID)
        texts, loop_counts = generate_batch(model, _Ids(), processor, batch, images[:len(batch)], kwargs)
        assert texts == _Ids().batch_decode(ours) and counts == loop_counts
        assert ours.shape == (len(batch), 4)


def test_fp16_llm_with_an_fp32_tower():
    """The real run's dtypes (the dry run is fp32 throughout): an fp16 LLM fed by an fp32 tower, on every path."""
    model, processor, facts = gpu_check.build_model(gpu_check.MODELS["llava-v1.5-7b"], torch.device("cpu"),
                                                    torch.float16, "sdpa", dry_run=True, seed=0)
    assert (facts["llm_dtype"], facts["tower_dtype"]) == ("float16", "float32")
    ids, images, sizes = latency.make_inputs(model, processor, 40, seed=0)
    model.set_visual_token_num(6)
    prefill, tpot, e2e, visual = gpu_check.prefill_generate(model, ids, images, sizes, 2,
                                                            lambda: latency.upstream_style_tower(model))
    assert visual == [6] and tpot is None and prefill > 0 and e2e > 0
    out, counts = gpu_check.generate_left_padded(model, [ids[0].tolist()] * 2, torch.cat([images] * 2), 2)
    assert counts == [6, 6] and out.shape == (2, 2) and torch.equal(out[0], out[1])


def test_budget_skips_sections_and_still_writes(tmp_path):
    result = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--budget-s", "0"])
    assert {s["status"] for s in result["sections"].values()} == {gpu_check.SKIPPED}
    assert json.loads((tmp_path / gpu_check.JSON_NAME).read_text())["status"] == "complete"
    assert gpu_check.SKIPPED in (tmp_path / gpu_check.MARKDOWN_NAME).read_text()


def test_budget_scales_estimates_by_what_sections_took():
    budget = gpu_check.Budget(100)
    assert budget.fits(150) and not budget.fits(250)
    budget.record(estimate_s=50, took_s=100)  # this machine runs at half the estimated speed
    assert not budget.fits(150) and budget.fits(90)


def test_interleave_stops_at_the_deadline():
    calls = []
    results, _ = latency.interleave([lambda: calls.append(1), lambda: calls.append(2)], warmup=1, repeats=5,
                                    deadline=0.0)
    assert calls == [1, 2, 1, 2] and [len(r) for r in results] == [1, 1]  # the warm-up and one timed round


def test_sections_can_be_selected(tmp_path):
    result = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--sections", "llava-v1.5-7b.kept_sets"])
    statuses = {name: s["status"] for name, s in result["sections"].items()}
    assert statuses.pop("llava-v1.5-7b.kept_sets") == "ok" and set(statuses.values()) == {"not selected"}


def test_no_gpu_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: no CUDA GPU") and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_flash_attn_install_failure_and_timeout_are_recorded():
    failed = gpu_check.try_install_flash_attn(30, [sys.executable, "-c", "print('no index'); raise SystemExit(3)"])
    assert failed["ok"] is False and failed["outcome"] == "failed (exit 3)" and "no index" in failed["output_tail"]
    slow = gpu_check.try_install_flash_attn(0.5, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert slow["ok"] is False and slow["outcome"].startswith("timed out") and slow["elapsed_s"] < 30
    missing = gpu_check.try_install_flash_attn(5, ["/nonexistent/pip"])
    assert missing["ok"] is False and missing["outcome"].startswith("could not start")


@pytest.mark.parametrize("requested, device, importable, expected", [
    ("auto", "cpu", True, "sdpa"), ("auto", "cuda", False, "sdpa"), ("auto", "cuda", True, "flash_attention_2"),
    ("eager", "cuda", True, "eager"), ("sdpa", "cuda", True, "sdpa")])
def test_choose_attention(requested, device, importable, expected):
    assert gpu_check.choose_attention(requested, torch.device(device), {"importable": importable}) == expected


@pytest.mark.parametrize("flags, message", [(["--new-tokens", "1"], "at least 2"),
                                            (["--compare-batch", "64"], "--compare-batch"),
                                            (["--text-tokens", "10"], "--text-tokens")])
def test_bad_flags(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        gpu_check.main(["--dry-run", "--out", str(tmp_path), *flags])


def test_dry_shapes_keep_the_real_structure():
    for spec in gpu_check.MODELS.values():
        dry = gpu_check.dry_shape(spec)
        assert dry.crops == spec.crops and dry.fp32_tower == spec.fp32_tower and dry.vision.patch_size == 14
        assert replace(dry, llm=spec.llm, vision=spec.vision, vision_heads=spec.vision_heads) == spec
    assert gpu_check.MODELS["llava-v1.5-13b"].llm == flops.VICUNA_13B
    assert gpu_check.MODELS["llava-v1.6-vicuna-7b"].crops == 5
