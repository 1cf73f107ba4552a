"""Average % and the Table-1 layout of llava.eval.summarize, checked against the paper's tables."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llava.eval import provenance
from llava.eval import summarize as summ
from llava.eval.provenance import write_score
from llava.eval.utils import BENCHMARKS, InputError

IMAGE_TABLES = ("table7_llava15_7b.csv", "table8_llava15_13b.csv", "table9_llava_next_7b.csv")
# Rows whose printed average does not follow from their printed scores (see the report).
# FastV@432 (7B): 100.5946 vs 100.60, within what 2-decimal rounding of the inputs allows.
# SparseVLM rows: 0.16-0.27 points off, far beyond rounding; no benchmark subset explains them.
KNOWN_MISMATCHES = {
    ("table7_llava15_7b.csv", "FastV", "432"),
    ("table7_llava15_7b.csv", "SparseVLM", "288"),
    ("table7_llava15_7b.csv", "SparseVLM", "144"),
    ("table7_llava15_7b.csv", "SparseVLM", "58"),
    ("table9_llava_next_7b.csv", "SparseVLM", "720"),
}


def _rows(shared_dir: Path, name: str) -> list[dict[str, str]]:
    with open(shared_dir / "paper" / name, newline="") as f:
        return list(csv.DictReader(f))


def _baseline(rows: list[dict[str, str]]) -> dict[str, str]:
    """The unpruned model: the row with 0 % reduction."""
    (base,) = [r for r in rows if r["reduction"] == "0"]
    return base


def _scores(row: dict[str, str], keys) -> dict[str, float]:
    return {k: float(row[k]) for k in keys}


@pytest.mark.parametrize("name", IMAGE_TABLES)
def test_fastervlm_rows_reproduce_paper_average(shared_dir, name):
    rows = _rows(shared_dir, name)
    base = _scores(_baseline(rows), BENCHMARKS)
    checked = 0
    for row in rows:
        if row["method"] == "FasterVLM":
            assert f"{summ.average_pct(_scores(row, BENCHMARKS), base):.2f}" == row["average_pct"], row
            checked += 1
    assert checked == 5


@pytest.mark.parametrize("name", IMAGE_TABLES)
def test_other_rows_reproduce_except_known(shared_dir, name):
    rows = _rows(shared_dir, name)
    base = _scores(_baseline(rows), BENCHMARKS)
    mismatches = {(name, r["method"], r["tokens"]) for r in rows
                  if f"{summ.average_pct(_scores(r, BENCHMARKS), base):.2f}" != r["average_pct"]}
    assert mismatches == {k for k in KNOWN_MISMATCHES if k[0] == name}


def test_video_table_average(shared_dir):
    """Table 10: the accuracy average is the same ratio mean over 4 datasets; the score one only
    within the rounding of its 2-decimal GPT scores (e.g. 100.28 computed vs 100.24 printed)."""
    rows = _rows(shared_dir, "table10_video_llava.csv")
    base = _baseline(rows)
    datasets = ("tgif", "msvd", "msrvtt", "anet")
    for row in rows:
        acc = [f"{d}_acc" for d in datasets]
        assert f"{summ.average_pct(_scores(row, acc), _scores(base, acc)):.2f}" == row["avg_acc_pct"], row
        sc = [f"{d}_score" for d in datasets]
        r, b = _scores(row, sc), _scores(base, sc)
        lo = summ.average_pct({k: v - 0.005 for k, v in r.items()}, {k: v + 0.005 for k, v in b.items()})
        hi = summ.average_pct({k: v + 0.005 for k, v in r.items()}, {k: v - 0.005 for k, v in b.items()})
        assert lo - 0.005 <= float(row["avg_score_pct"]) <= hi + 0.005, row


def test_average_pct_uses_common_benchmarks():
    assert summ.average_pct({"a": 50.0, "b": 30.0, "c": 1.0}, {"a": 100.0, "b": 20.0}) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no benchmark"):
        summ.average_pct({"a": 1.0}, {"b": 1.0})
    with pytest.raises(ValueError, match="baseline score of a is 0"):
        summ.average_pct({"a": 1.0}, {"a": 0.0})


def test_table_layout():
    scores = {576: {"gqa": 60.0, "pope": 80.0}, 58: {"gqa": 30.0, "mme": 1000.0}}
    header, rows, notes = summ.table(scores, [576, 58, 0], 576)
    assert header[0] == "Tokens" and header[-1] == "Average %" and len(header) == 12
    assert rows[0] == ["576", "-", "60.00", "-", "-", "-", "80.00", "-", "-", "-", "-", "100.00"]
    assert rows[1][2] == "30.00" and rows[1][7] == "1000.00" and rows[1][-1] == "50.00"
    assert rows[2] == ["0"] + ["-"] * 11
    assert notes[2] == "n_0: no scores"
    assert notes[1].startswith("n_58: average over 1/10 benchmarks; missing vqav2 (no score)")
    assert "mme (no baseline)" in notes[1]
    assert summ.render(header, rows[:1], "csv").splitlines()[1] == "576,-,60.00,-,-,-,80.00,-,-,-,-,100.00"
    assert summ.render(header, rows[:1], "markdown").splitlines()[1] == "|" + "---|" * 12


def test_parse_set():
    assert summ.parse_set("vqav2@58=75.1") == ("vqav2", 58, 75.1)
    for bad, message in [("vqav2=75", "expected bench@tokens=value"), ("vqa@58=1", "unknown benchmark"),
                         ("gqa@x=1", "expected"), ("gqa@58=nan", "finite")]:
        with pytest.raises(InputError, match=message):
            summ.parse_set(bad)
    with pytest.raises(SystemExit):
        summ.main(["--ckpt", "x", "--set", "bad"])


def fake_run(folder: Path, temperature: float = 0.0, tokens: int = 576, **environment) -> Path:
    """An answers file with a run manifest, as the runner writes it (only the fields summarize compares)."""
    from llava.eval import provenance

    answers = folder / f"answers_{temperature}_{tokens}.jsonl"
    answers.parent.mkdir(parents=True, exist_ok=True)
    answers.write_text("")
    manifest = {"format": provenance.FORMAT,
                "settings": {"model": {"checkpoint": "llava-v1.5-7b"}, "task": {"module": "x"},
                             "pruning": {"visual_token_num": tokens, "method": "fastervlm", "params": {}},
                             "decoding": {"temperature": temperature, "max_new_tokens": 128}},
                "environment": {"torch": "2.13", **environment}, "chunk": {}, "info": {}}
    manifest["fingerprint"] = provenance.fingerprint(manifest)
    provenance.write_manifest(answers, manifest)
    return answers


def test_cli_reads_score_files(tmp_path, capsys):
    """Scores from paper Table 7 (7B) written as score files reproduce its FasterVLM averages."""
    base = dict(zip(BENCHMARKS, (78.52, 61.94, 50.06, 69.51, 58.21, 85.88, 1506.47, 64.69, 58.08, 31.30)))
    at58 = dict(zip(BENCHMARKS, (71.92, 54.91, 53.01, 68.91, 55.28, 75.85, 1348.63, 60.57, 54.90, 30.10)))
    server = ("vqav2", "vizwiz", "mmb", "mmb_cn", "mmvet")
    for tokens, scores in ((576, base), (58, at58)):
        for bench, value in scores.items():
            if bench not in server:
                write_score(summ.score_path(tmp_path, bench, "llava-v1.5-7b", "fastervlm", tokens),
                            bench, value, "accuracy", answers_file=fake_run(tmp_path / "runs", tokens=tokens))
    sets = [f"{b}@{t}={s[b]}" for t, s in ((576, base), (58, at58)) for b in server]
    summ.main(["--eval-dir", str(tmp_path), "--ckpt", "llava-v1.5-7b", "--tokens", "576", "58", "--set", *sets])
    out = capsys.readouterr().out.splitlines()
    assert out[2].endswith("| 100.00 |") and out[3].endswith("| 94.24 |")
    assert "| 78.52† |" in out[2] and "| 61.94 |" in out[2]   # --set values are marked, recorded runs are not
    assert out[4:] == ["", "† entered with --set"]             # nothing missing, nothing mixed
    assert (tmp_path / "MME/scores/llava-v1.5-7b/fastervlm/n_58.json").is_file()

    summ.main(["--eval-dir", str(tmp_path), "--ckpt", "llava-v1.5-7b", "--tokens", "58", "--format", "csv"])
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].split(",")[0] == "58"
    assert "missing vqav2 (no score)" in captured.err


def test_score_file_for_wrong_benchmark(tmp_path):
    write_score(summ.score_path(tmp_path, "pope", "m", "fastervlm", 576), "mme", 1.0, "f1")
    with pytest.raises(InputError, match=r"n_576.json: expected a score file for benchmark 'pope'"):
        summ.load_scores(tmp_path, "m", "fastervlm", [576])


def test_cells_of_other_runs_are_refused_or_marked(tmp_path, capsys):
    runs = tmp_path / "runs"
    for bench in ("pope", "textvqa"):  # two cells of the most common run: the reference
        write_score(summ.score_path(tmp_path, bench, "m", "fastervlm", 576), bench, 86.0, "f1",
                    answers_file=fake_run(runs))
    write_score(summ.score_path(tmp_path, "gqa", "m", "fastervlm", 576), "gqa", 62.0, "acc",
                answers_file=fake_run(runs, tokens=576, transformers="5.0"),
                partial={"answered": 9, "expected": 10, "missing": 1})
    write_score(summ.score_path(tmp_path, "pope", "m", "fastervlm", 58), "pope", 80.0, "f1",
                answers_file=fake_run(runs, temperature=0.2, tokens=58))
    write_score(summ.score_path(tmp_path, "gqa", "m", "fastervlm", 58), "gqa", 55.0, "acc")
    argv = ["--eval-dir", str(tmp_path), "--ckpt", "m", "--tokens", "576", "58"]
    with pytest.raises(InputError, match=r"pope/scores/m/fastervlm/n_58.json: made under other settings"
                                         r"[\s\S]*settings.decoding.temperature: 0.0 -> 0.2"):
        summ.main(argv)
    summ.main(argv + ["--allow-mixed"])
    out = capsys.readouterr().out
    assert "| 62.00‡* |" in out and "| 80.00‡ |" in out and "| 55.00? |" in out and "| 86.00 |" in out
    assert "environment.transformers: null -> \"5.0\"" in out and "PARTIAL, 9 of 10 questions scored" in out
    assert "records no run manifest" in out


def test_score_files_with_edited_or_broken_manifests_are_refused(tmp_path):
    path = summ.score_path(tmp_path, "pope", "m", "fastervlm", 576)
    write_score(path, "pope", 86.0, "f1", answers_file=fake_run(tmp_path / "runs"))
    doc = json.loads(path.read_text())
    cases = [("settings", "visual_token_num", 144, "no longer matches its fingerprint"),
             (None, "settings", None, "not a fastervlm-run/1 run manifest"),
             (None, "partial", "yes", "'partial' must be null")]
    for part, key, value, message in cases:
        edited = json.loads(json.dumps(doc))
        if key == "partial":
            edited["partial"] = value
        elif part is None:
            del edited["manifest"][key]
        else:
            edited["manifest"][part]["pruning"][key] = value
        path.write_text(json.dumps(edited))
        with pytest.raises(InputError, match=message):
            summ.load_cells(tmp_path, "m", "fastervlm", [576])


def test_rows_from_other_weights_are_refused_or_marked(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_score(summ.score_path(tmp_path, "pope", "m", "fastervlm", 576), "pope", 86.0, "f1",
                answers_file=fake_run(runs))
    other = fake_run(runs / "other", tokens=58)
    manifest = json.loads((other.parent / (other.name + ".manifest.json")).read_text())
    manifest["settings"]["model"]["fingerprint"] = "other-weights"
    manifest["fingerprint"] = provenance.fingerprint(manifest)
    provenance.write_manifest(other, manifest)
    write_score(summ.score_path(tmp_path, "pope", "m", "fastervlm", 58), "pope", 80.0, "f1", answers_file=other)
    argv = ["--eval-dir", str(tmp_path), "--ckpt", "m", "--tokens", "576", "58"]
    with pytest.raises(InputError, match=r"made under other settings[\s\S]*settings.model.fingerprint"):
        summ.main(argv)
    summ.main(argv + ["--allow-mixed"])
    assert "| 80.00‡ |" in capsys.readouterr().out
