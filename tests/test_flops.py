"""Tests for llava.bench.flops: hand-checked formulas and the paper's efficiency tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llava.bench import flops as F

TOL = 0.01  # the brief's 1 % bound; the worst row is at 0.74 % (two-decimal rounding)

# table file -> (preset, vision encoder counted?). Table 6's unpruned row (41.65 T) is exactly
# table 13's (43.58 T) minus 5 CLIP-L/336 passes, so table 6 is LLM-only.
TABLES: dict[str, tuple[str, bool]] = {
    "table6_efficiency_llava_next_7b_sqa.csv": ("llava-v1.6-vicuna-7b", False),
    "table11_efficiency_llava15_7b.csv": ("llava-v1.5-7b", True),
    "table12_efficiency_llava15_13b.csv": ("llava-v1.5-13b", True),
    "table13_efficiency_llava_next_7b.csv": ("llava-v1.6-vicuna-7b", True),
}
# Paper erratum: table 6's "95 %" rows list 145 tokens, but both methods' FLOPs *and* KV match
# 288 tokens (= 2880 x 10 %, the accuracy table's 90 % budget) and miss 145 by ~50 %.
TABLE6_95_TOKENS = 288


def _predict(model: F.ModelConfig, method: str, tokens: int, vision: bool) -> tuple[float, float]:
    """(FLOPs in T, KV in MB) the paper's conventions give for one table row."""
    n_vis = model.visual_tokens
    vis = F.vision_encoder_flops(model) if vision else 0.0
    if method.startswith("FastV"):
        fl = F.fastv_prefill_flops(model, 0, n_vis, tokens, 2) + vis
        kv = F.fastv_kv_cache_mb(model, n_vis, tokens, 2)
    else:  # FasterVLM rows and the unpruned baseline
        fl = F.llm_prefill_flops(model, tokens) + vis
        kv = F.kv_cache_mb(model, tokens)
    return fl / F.TERA, kv


def _read(shared_dir: Path, table: str) -> list[dict[str, str]]:
    with open(shared_dir / "paper" / table, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("table", list(TABLES))
def test_paper_table_within_1pct(shared_dir: Path, table: str) -> None:
    """Every row with FLOPs/KV given (FasterVLM, unpruned, FastV) is within 1 %."""
    preset, vision = TABLES[table]
    checked, errors = 0, []
    for r in _read(shared_dir, table):
        if not r["flops_t"]:
            continue  # flash-attention rows repeat the sdpa row's FLOPs/KV as blanks
        tokens = int(r["tokens"])
        if table.startswith("table6") and r["reduction"] == "95":
            tokens = TABLE6_95_TOKENS  # erratum, see test_table6_95pct_rows_are_288_tokens
        fl, kv = _predict(F.PRESETS[preset], r["method"], tokens, vision)
        for col, got in (("flops_t", fl), ("kv_storage_mb", kv)):
            rel = abs(got / float(r[col]) - 1)
            if rel > TOL:
                where = f"{r['method']} {r['tokens']} {col}"
                errors.append(f"{where}: {got:.4f} vs {r[col]} ({rel:.2%})")
        checked += 1
    assert checked >= 5 and not errors, errors


def test_table6_95pct_rows_are_288_tokens(shared_dir: Path) -> None:
    """The listed 145 tokens cannot give table 6's 95 % values; 288 gives both columns."""
    model = F.PRESETS["llava-v1.6-vicuna-7b"]
    rows = [r for r in _read(shared_dir, "table6_efficiency_llava_next_7b_sqa.csv")
            if r["reduction"] == "95"]
    assert rows and all(r["tokens"] == "145" for r in rows)
    for r in rows:
        fl145, kv145 = _predict(model, r["method"], 145, False)
        fl288, kv288 = _predict(model, r["method"], 288, False)
        assert abs(kv145 / float(r["kv_storage_mb"]) - 1) > 0.2
        assert abs(fl145 / float(r["flops_t"]) - 1) > 0.2
        assert kv288 == pytest.approx(float(r["kv_storage_mb"]), rel=1e-3)
        assert fl288 == pytest.approx(float(r["flops_t"]), rel=2e-3)


def test_tiny_config_by_hand() -> None:
    llm = F.LLMConfig(hidden_size=4, intermediate_size=8, num_layers=2, num_heads=2)
    # per layer, n=3: 8*3*16 + 4*9*4 + 6*3*4*8 = 384 + 144 + 576 = 1104
    assert F.layer_flops(llm, 3) == 1104
    assert F.llm_prefill_flops(llm, 3) == 2208
    # FastV, K=1, 1 text + 3 visual -> 2 kept: layer(4) + layer(3)
    # layer(4) = 512 + 256 + 768 = 1536; layer(3) = 1104
    assert F.fastv_prefill_flops(llm, 1, 3, 2, 1) == 1536 + 1104
    # KV: 2 * 2 layers * 4 * 3 tokens * 2 bytes = 96 bytes
    assert F.kv_cache_mb(llm, 3) * F.MIB == 96
    assert F.fastv_kv_cache_mb(llm, 3, 1, 1) * F.MIB == 2 * 4 * 2 * (3 + 1)
    # GQA halves the K/V projections and the cache
    gqa = F.LLMConfig(4, 8, 2, num_heads=2, num_kv_heads=1)
    assert F.layer_flops(gqa, 3) == 1104 - 4 * 3 * 4 * 2  # K,V: 2nd(d - kv_dim) each
    assert F.kv_cache_mb(gqa, 3) == F.kv_cache_mb(llm, 3) / 2
    vit = F.VisionConfig("toy", num_layers=2, hidden_size=4, intermediate_size=8,
                         image_size=4, patch_size=2)
    # n = 4 patches + CLS = 5; per layer 8*5*16 + 4*25*4 + 4*5*4*8 = 640 + 400 + 640
    assert F.vision_encoder_flops(vit, 3) == 3 * 2 * 1680


def test_fastv_limits_and_budgets() -> None:
    m = F.PRESETS["llava-v1.5-7b"]
    assert F.fastv_prefill_flops(m, 10, 576, 58, 0) == F.llm_prefill_flops(m, 68)
    assert F.fastv_prefill_flops(m, 10, 576, 58, 32) == F.llm_prefill_flops(m, 586)
    assert F.kv_cache_mb(m, 576) == 288.0  # MB = MiB: 0.5 MiB per token for 7B
    assert F.kv_cache_mb(F.PRESETS["llava-v1.5-13b"], 576) == 450.0
    budgets = {"llava-v1.5-7b": [432, 288, 144, 58, 29],
               "llava-v1.6-vicuna-7b": [2160, 1440, 720, 290, 145],
               "Video-LLaVA-7B": [1536, 1024, 512, 208, 104]}
    for name, want in budgets.items():
        assert [F.kept_from_reduction(F.PRESETS[name], r) for r in F.PAPER_REDUCTIONS] == want
    with pytest.raises(ValueError):
        F.fastv_prefill_flops(m, 0, 576, 58, 33)


def test_config_json(tmp_path: Path) -> None:
    cfg = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
           "image_aspect_ratio": "anyres", "_name_or_path": "liuhaotian/llava-v1.6-vicuna-7b"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    m = F.load_config_json(path)
    assert m.llm == F.VICUNA_7B and m.visual_tokens == 2880
    assert F.vision_encoder_flops(m) == F.vision_encoder_flops(F.PRESETS["llava-v1.6-vicuna-7b"])
    cfg["mm_vision_tower"] = "some/unknown-tower"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        F.load_config_json(path)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert F.main(["--model", "llava-v1.5-13b", "--kept", "58", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    methods = [r["method"] for r in out["rows"]]
    assert methods == ["llava-v1.5-13b", "FastV (K=2)", "FasterVLM"]
    assert out["rows"][2]["kv_storage_mb"] == pytest.approx(45.3125)
    assert out["rows"][0]["speedup"] == 1.0
    assert F.main(["--model", "llava-v1.6-vicuna-7b", "--no-fastv", "--no-vision-encoder"]) == 0
    md = capsys.readouterr().out
    assert "| llava-v1.6-vicuna-7b | 2880 | 0.0 % | 41.65 | 1440.00 | 1.00x |" in md
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 2, "num_attention_heads": 4,
                               "mm_vision_tower": "mystery"}))
    with pytest.raises(SystemExit):
        F.main(["--model", str(cfg)])
    assert F.main(["--model", str(cfg), "--vision-layers", "2", "--vision-hidden", "8",
                   "--vision-intermediate", "16", "--vision-image-size", "8",
                   "--vision-patch-size", "2", "--kept", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["tokens"] == 16


def test_in_llm_method_rows_cost_like_fastv_at_their_layer(capsys: pytest.CaptureFixture[str]) -> None:
    model = F.PRESETS["llava-v1.5-7b"]
    rows = F.efficiency_rows(model, [58], fastv_k=2, in_llm=[("cls-llm-layer2", 2), ("adaptprune", 3)])
    by_method = {r.method: r for r in rows}
    fastv, cls2, adapt = by_method["FastV (K=2)"], by_method["cls-llm-layer2 (K=2)"], by_method["adaptprune (K=3)"]
    assert (cls2.flops_t, cls2.kv_storage_mb, cls2.tokens) == (fastv.flops_t, fastv.kv_storage_mb, 58)
    # One more layer over all 576 visual tokens: (3·576 + 29·58)/32 tokens of KV, 0.5 MiB each.
    assert adapt.kv_storage_mb == pytest.approx((3 * 576 + 29 * 58) / 32 * 0.5)
    assert adapt.flops_t > fastv.flops_t > by_method["FasterVLM"].flops_t
    assert F.main(["--kept", "58", "--in-llm", "adaptprune:3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["in_llm"] == {"adaptprune": 3} and [r["method"] for r in out["rows"]][2] == "adaptprune (K=3)"
    with pytest.raises(SystemExit):
        F.main(["--in-llm", "adaptprune"])


def test_comparison_methods_and_pyramid_schedules(capsys: pytest.CaptureFixture[str]) -> None:
    model = F.PRESETS["llava-v1.5-7b"]
    rows = {r.method: r for r in F.efficiency_rows(model, [192], fastv_k=None,
                                                   methods=["vispruner", "visionzip", "divprune", "pdrop"])}
    for name in ("vispruner", "visionzip", "divprune"):  # every layer sees the kept tokens, as FasterVLM
        assert (rows[name].flops_t, rows[name].kv_storage_mb) == (rows["FasterVLM"].flops_t, rows["FasterVLM"].kv_storage_mb)
    # PyramidDrop's default: 8 layers each at 576, 288, 144, 72 tokens, by hand from the layer formula.
    assert F.pdrop_schedule(576, 32) == [576] * 8 + [288] * 8 + [144] * 8 + [72] * 8
    by_hand = sum(8 * F.layer_flops(model, n) for n in (576, 288, 144, 72))
    assert F.schedule_prefill_flops(model, 0, F.pdrop_schedule(576, 32)) == by_hand
    assert F.pdrop_ratio_for_average(270, 576, 32) == pytest.approx(0.5, abs=1e-3)
    schedule = F.layer_schedule("pdrop", model, 192)
    assert sum(schedule) / 32 == pytest.approx(192, abs=1) and schedule[:8] == [576] * 8
    assert rows["pdrop"].kv_storage_mb == pytest.approx(sum(schedule) / 32 * 0.5)
    assert rows["pdrop"].flops_t > rows["FasterVLM"].flops_t  # its early layers see every token
    with pytest.raises(ValueError, match="out of reach"):  # 8·576/32 = 144 is PyramidDrop's least average
        F.layer_schedule("pdrop", model, 58)
    assert F.main(["--kept", "288", "--methods", "vispruner", "pdrop", "--no-fastv", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in out["rows"]] == ["llava-v1.5-7b", "vispruner", "pdrop", "FasterVLM"]
    with pytest.raises(SystemExit):
        F.main(["--kept", "58", "--methods", "pdrop"])


def test_sparsevlm_schedule_by_hand() -> None:
    model = F.PRESETS["llava-v1.5-7b"]
    # 64: after layer 2, 66 kept + int((int(510·0.3)+1)/10)+1 = 16 recycled; after 6, 30 + 2; after 15, 17 + 1.
    assert F.layer_schedule("sparsevlm", model, 64) == [576] * 3 + [82] * 4 + [32] * 9 + [18] * 16
    row = {r.method: r for r in F.efficiency_rows(model, [64], fastv_k=None, methods=["sparsevlm"])}["sparsevlm"]
    assert row.kv_storage_mb == pytest.approx((3 * 576 + 4 * 82 + 9 * 32 + 16 * 18) / 32 * 0.5)
    with pytest.raises(ValueError, match="SparseVLM defines"):
        F.layer_schedule("sparsevlm", model, 58)
