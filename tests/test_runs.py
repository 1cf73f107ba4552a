"""Runs that cannot mix or lose work: manifests, refused resumes, complete merges, errors that name the fault."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llava.eval import model_vqa_loader, model_vqa_mmbench, model_vqa_science
from llava.eval.merge_chunks import merge
from llava.eval.provenance import manifest_path, read_manifest
from llava.eval.utils import InputError
from llava.tools.make_sample_data import make_sample_data
from conftest import requires_in_llm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_sample_data(tmp_path_factory.mktemp("eval"), questions=4)


def args_for(ckpt, questions: Path, images: Path, answers: Path, *extra: str) -> list[str]:
    return ["--model-path", str(ckpt), "--question-file", str(questions), "--image-folder", str(images),
            "--answers-file", str(answers), "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "3",
            "--device", "cpu", *extra]


def textvqa_args(ckpt, data, answers, *extra):
    return args_for(ckpt, data / "textvqa/llava_textvqa_val_v051_ocr.jsonl", data / "textvqa/train_images", answers, *extra)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished(tiny_ckpt, data, tmp_path_factory) -> Path:
    """A finished run at 58 tokens: its answers file (with manifest)."""
    answers = tmp_path_factory.mktemp("run") / "a.jsonl"
    model_vqa_loader.main(textvqa_args(tiny_ckpt, data, answers, "--visual-token-num", "58"))
    return answers


def test_manifest_records_how_the_answers_were_made(finished, tiny_ckpt):
    manifest = read_manifest(finished)
    settings = manifest["settings"]
    assert settings["pruning"] == {"visual_token_num": 58, "method": "fastervlm", "params": {}}
    assert settings["model"]["checkpoint"] == tiny_ckpt.name and len(settings["model"]["fingerprint"]) == 16
    assert settings["model"]["dtype"] == "float32" and settings["model"]["attn_implementation"] == "sdpa"
    assert settings["decoding"] == {"conv_mode": "vicuna_v1", "temperature": 0.0, "top_p": None, "num_beams": 1,
                                    "max_new_tokens": 3, "seed": 0}
    assert settings["task"]["name"] == "vqa" and settings["task"]["record_kept"] is False
    assert settings["task"]["media"]["files"] == 4 and settings["task"]["media"]["missing"] == 0
    assert manifest["info"]["batch_sizes"] == [1] and manifest["info"]["limit"] is None
    assert set(manifest["environment"]) >= {"fastervlm", "code_sha256", "torch", "transformers", "device"}
    assert manifest["chunk"] == {"num_chunks": 1, "chunk_idx": 0, "questions": 4}
    assert {line["metadata"]["manifest"] for line in read(finished)} == {manifest["fingerprint"]}


@pytest.mark.parametrize("flags, differing", [
    (["--visual-token-num", "144"], "settings.pruning.visual_token_num: 58 -> 144"),
    (["--visual-token-num", "58", "--pruning-method", "random"], "settings.pruning.method"),
    (["--visual-token-num", "58", "--temperature", "0.5"], "settings.decoding.temperature: 0.0 -> 0.5"),
    (["--visual-token-num", "58", "--anyres-protocol", "vanilla"], "settings.model.anyres_protocol"),
    (["--visual-token-num", "58", "--seed", "3"], "settings.decoding.seed: 0 -> 3"),
    (["--visual-token-num", "58", "--record-kept"], "settings.task.record_kept: false -> true"),
    (["--visual-token-num", "58", "--num-chunks", "2"], "chunk.num_chunks: 1 -> 2"),
    pytest.param(["--visual-token-num", "58", "--pruning-method", "fastv", "--fastv-k", "1"], "settings.pruning.params.layer",
                 marks=requires_in_llm),
])
def test_resuming_under_other_settings_is_refused(finished, tiny_ckpt, data, tmp_path, monkeypatch, flags, differing):
    import llava.model.builder as builder

    monkeypatch.setattr(builder, "load_pretrained_model", lambda *a, **k: pytest.fail("model was loaded"))
    answers = tmp_path / finished.name
    answers.write_bytes(finished.read_bytes())
    manifest_path(answers).write_bytes(manifest_path(finished).read_bytes())
    before = answers.read_bytes()
    with pytest.raises(InputError, match="made with other settings") as err:
        model_vqa_loader.main(textvqa_args(tiny_ckpt, data, answers, *flags))
    assert differing in str(err.value) and "--overwrite" in str(err.value)
    assert answers.read_bytes() == before


def test_half_finished_run_resumed_with_another_budget_is_refused_and_overwrite_starts_afresh(tiny_ckpt, data, tmp_path):
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(textvqa_args(tiny_ckpt, data, answers, "--visual-token-num", "58", "--limit", "2"))
    with pytest.raises(InputError, match="visual_token_num: 58 -> 144"):
        model_vqa_loader.main(textvqa_args(tiny_ckpt, data, answers, "--visual-token-num", "144"))
    model_vqa_loader.main(textvqa_args(tiny_ckpt, data, answers, "--visual-token-num", "144", "--overwrite"))
    lines = read(answers)
    assert len(lines) == 4 and read_manifest(answers)["settings"]["pruning"]["visual_token_num"] == 144
    assert {l["metadata"]["manifest"] for l in lines} == {read_manifest(answers)["fingerprint"]}


def test_answers_without_a_manifest_or_from_another_run_are_refused(finished, tiny_ckpt, data, tmp_path):
    orphan = tmp_path / "orphan.jsonl"
    orphan.write_bytes(finished.read_bytes())
    with pytest.raises(InputError, match="no manifest"):
        model_vqa_loader.main(textvqa_args(tiny_ckpt, data, orphan, "--visual-token-num", "58"))
    mixed = tmp_path / "mixed.jsonl"
    lines = finished.read_text().splitlines()
    stranger = json.loads(lines[1])
    stranger["metadata"]["manifest"] = "0" * 16
    mixed.write_text(lines[0] + "\n" + json.dumps(stranger) + "\n")
    manifest_path(mixed).write_bytes(manifest_path(finished).read_bytes())
    with pytest.raises(InputError, match=r"mixed.jsonl:2: made by another run"):
        model_vqa_loader.main(textvqa_args(tiny_ckpt, data, mixed, "--visual-token-num", "58"))


def test_last_line_without_newline_is_completed_not_glued(finished, tiny_ckpt, data, tmp_path):
    answers = tmp_path / "a.jsonl"
    lines = finished.read_text().splitlines()
    answers.write_text("\n".join(lines[:2]))  # two complete answers, the second without its newline
    manifest_path(answers).write_bytes(manifest_path(finished).read_bytes())
    model_vqa_loader.main(textvqa_args(tiny_ckpt, data, answers, "--visual-token-num", "58"))
    assert [(l["question_id"], l["text"]) for l in read(answers)] == [(l["question_id"], l["text"]) for l in read(finished)]
    model_vqa_loader.main(textvqa_args(tiny_ckpt, data, answers, "--visual-token-num", "58"))  # a rerun is fine too


@pytest.mark.parametrize("chunks", [5, 3])
def test_more_shards_than_questions_merge_and_rerun(tiny_ckpt, data, tmp_path, chunks):
    """4 questions on 5 chunks (one empty), or on 3 chunks of 2, 2, 0: every chunk writes its file."""
    parts = [tmp_path / f"{chunks}_{i}.jsonl" for i in range(chunks)]
    for rerun in range(2):
        for i, part in enumerate(parts):
            model_vqa_loader.main(textvqa_args(tiny_ckpt, data, part, "--num-chunks", str(chunks), "--chunk-idx", str(i)))
        assert merge([str(p) for p in parts], str(tmp_path / "merge.jsonl")) == 4
    assert any(p.read_text() == "" for p in parts)
    merged = read_manifest(tmp_path / "merge.jsonl")
    assert merged["chunk"]["partial"] is None and merged["chunk"]["questions"] == 4


def test_merge_refuses_gaps_duplicates_and_mixed_settings(tiny_ckpt, data, tmp_path):
    parts = [tmp_path / f"2_{i}.jsonl" for i in range(2)]
    model_vqa_loader.main(textvqa_args(tiny_ckpt, data, parts[0], "--num-chunks", "2", "--chunk-idx", "0"))
    model_vqa_loader.main(textvqa_args(tiny_ckpt, data, parts[1], "--num-chunks", "2", "--chunk-idx", "1",
                                       "--limit", "1"))
    out = str(tmp_path / "merge.jsonl")
    with pytest.raises(InputError, match="1 of 4 questions have no answer"):
        merge([str(p) for p in parts], out)
    assert merge([str(p) for p in parts], out, allow_partial=True) == 3
    assert read_manifest(out)["chunk"]["partial"] == {"answered": 3, "expected": 4, "missing": 1}
    with pytest.raises(InputError, match="given as chunk 0 of 2"):
        merge([str(parts[1]), str(parts[0])], out)

    duplicate = tmp_path / "dup" / "2_1.jsonl"
    duplicate.parent.mkdir()
    duplicate.write_text(parts[1].read_text() + parts[1].read_text().splitlines()[0] + "\n")
    manifest_path(duplicate).write_bytes(manifest_path(parts[1]).read_bytes())
    with pytest.raises(InputError, match="answered twice"):
        merge([str(parts[0]), str(duplicate)], out)

    other = tmp_path / "other" / "2_1.jsonl"
    model_vqa_loader.main(textvqa_args(tiny_ckpt, data, other, "--num-chunks", "2", "--chunk-idx", "1",
                                       "--visual-token-num", "29"))
    with pytest.raises(InputError, match=r"made with other settings[\s\S]*visual_token_num: null -> 29"):
        merge([str(parts[0]), str(other)], out)
    with pytest.raises(InputError, match="no run manifest"):
        manifest_path(other).unlink()
        merge([str(parts[0]), str(other)], out)


# ------------------------------------------------------------------------ errors that name the fault

def write_questions(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rows, message", [
    ([{"question_id": 1, "image": "a.jpg", "text": 7}], r"q.jsonl:1: 'text' must be a string"),
    ([{"question_id": 1, "image": None, "text": "hi"}], r"q.jsonl:1: 'image' must be a string"),
    ([{"question_id": None, "image": "a.jpg", "text": "hi"}], r"q.jsonl:1: question_id must be"),
    ([{"question_id": 1, "image": "a.jpg", "text": "hi"}, {"question_id": 2, "image": "b.jpg", "text": "x"},
      {"question_id": 1, "image": "c.jpg", "text": "hi"}], r"q.jsonl:3: question 1 repeats .*q.jsonl:1"),
])
def test_bad_question_lines_name_file_and_line(tiny_ckpt, tmp_path, rows, message):
    questions = write_questions(tmp_path / "q.jsonl", rows)
    with pytest.raises(InputError, match=message):
        model_vqa_loader.main(args_for(tiny_ckpt, questions, tmp_path, tmp_path / "a.jsonl"))


def test_science_item_without_human_turn_and_mmbench_bad_index(tiny_ckpt, data, tmp_path):
    items = json.loads((data / "sqa/llava_test_CQM-A.json").read_text())
    items[1]["conversations"] = [{"from": "gpt", "value": "A"}]
    (tmp_path / "sqa.json").write_text(json.dumps(items))
    with pytest.raises(InputError, match=r"sqa.json: item 1 .*must start with a human turn"):
        model_vqa_science.main(args_for(tiny_ckpt, tmp_path / "sqa.json", tmp_path, tmp_path / "s.jsonl"))
    tsv = (data / "mmbench/mmbench_dev_20230712.tsv").read_text().splitlines()
    tsv[2] = "abc" + tsv[2][tsv[2].index("\t"):]
    (tmp_path / "mmb.tsv").write_text("\n".join(tsv) + "\n")
    with pytest.raises(InputError, match=r"mmb.tsv:3: 'index' must be an integer, got 'abc'"):
        model_vqa_mmbench.main(["--model-path", str(tiny_ckpt), "--question-file", str(tmp_path / "mmb.tsv"),
                                "--answers-file", str(tmp_path / "m.jsonl")])


def test_oversized_or_unreadable_image_is_named_or_skipped(tiny_ckpt, data, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the sample images (96×72) are then "decompression bombs"
    answers = tmp_path / "a.jsonl"
    with pytest.raises(InputError, match=r"llava_textvqa_val_v051_ocr.jsonl:1: question .*too large"):
        model_vqa_loader.main(textvqa_args(tiny_ckpt, data, answers))
    monkeypatch.undo()
    images = tmp_path / "images"
    images.mkdir()
    for i, src in enumerate(sorted((data / "textvqa/train_images").iterdir())):
        (images / src.name).write_bytes(b"not an image" if i == 2 else src.read_bytes())
    args = args_for(tiny_ckpt, data / "textvqa/llava_textvqa_val_v051_ocr.jsonl", images, answers, "--overwrite",
                    "--skip-missing-images")
    model_vqa_loader.main(args)
    assert len(read(answers)) == 3
    assert "skipped question" in capsys.readouterr().err
    missing = read(answers.with_name("a.jsonl.missing.jsonl"))
    assert len(missing) == 1 and "cannot read image" in missing[0]["error"]
    with pytest.raises(InputError, match="1 of 4 questions have no answer"):
        merge([str(answers)], str(tmp_path / "merge.jsonl"))


def damaged_copy(ckpt: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(ckpt, dest)
    return dest


def test_damaged_checkpoint_files_are_named(tiny_ckpt, data, tmp_path):
    empty = damaged_copy(tiny_ckpt, tmp_path / "empty")
    (empty / "config.json").write_text("")
    with pytest.raises(InputError, match=r"empty/config.json: not valid JSON"):
        model_vqa_loader.main(textvqa_args(empty, data, tmp_path / "a.jsonl"))
    truncated = damaged_copy(tiny_ckpt, tmp_path / "truncated")
    text = (truncated / "config.json").read_text()
    (truncated / "config.json").write_text(text[:len(text) // 2])
    with pytest.raises(InputError, match=r"truncated/config.json: not valid JSON"):
        model_vqa_loader.main(textvqa_args(truncated, data, tmp_path / "b.jsonl"))
    shard_ckpt = damaged_copy(tiny_ckpt, tmp_path / "shard")
    shard = sorted(shard_ckpt.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(InputError, match=rf"{shard.name}: truncated"):
        model_vqa_loader.main(textvqa_args(shard_ckpt, data, tmp_path / "c.jsonl"))


def run_cli(module: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}, timeout=300)


def test_user_errors_print_one_line_without_traceback(tiny_ckpt, tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", [{"question_id": 1, "image": "a.jpg", "text": 5}])
    args = args_for(tiny_ckpt, questions, tmp_path, tmp_path / "a.jsonl")
    result = run_cli("llava.eval.model_vqa_loader", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "q.jsonl:1: 'text' must be a string" in result.stderr
    debug = run_cli("llava.eval.model_vqa_loader", *args, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_run_llava_takes_an_image_name_with_a_comma(tiny_ckpt, data, tmp_path):
    image = tmp_path / "a,b.jpg"
    image.write_bytes(sorted((data / "textvqa/train_images").iterdir())[0].read_bytes())
    result = run_cli("llava.eval.run_llava", "--model-path", str(tiny_ckpt), "--image-file", str(image), "--query",
                     "What is it?", "--device", "cpu", "--max_new_tokens", "2", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert "[visual tokens kept: 576]" in result.stdout
    plain = sorted((data / "textvqa/train_images").iterdir())[0]
    missing = run_cli("llava.eval.run_llava", "--model-path", str(tiny_ckpt), "--image-file", f"{plain},{tmp_path}/x.jpg",
                      "--query", "What is it?", "--device", "cpu")
    assert missing.returncode == 2 and "x.jpg" in missing.stderr and "Traceback" not in missing.stderr


# ------------------------------------------------------------------------ kill -9 and resume

def test_kill_nine_at_five_points_then_resume_equals_an_uninterrupted_run(tiny_ckpt, tmp_path):
    """SIGKILL while loading, after the manifest, after 1 and 3 answers, and after the last one; each resume
    continues where the run stopped, and the final answers equal an uninterrupted run's."""
    data = make_sample_data(tmp_path / "eval", questions=8)
    reference = tmp_path / "reference.jsonl"
    model_vqa_loader.main(textvqa_args(tiny_ckpt, data, reference, "--max_new_tokens", "6"))
    answers = tmp_path / "killed.jsonl"
    args = ["-m", "llava.eval.model_vqa_loader", *textvqa_args(tiny_ckpt, data, answers, "--max_new_tokens", "6")]

    def kill_when(ready) -> None:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        deadline = time.monotonic() + 240
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()

    lines = lambda: len(answers.read_text().splitlines()) if answers.is_file() else 0
    kill_when(lambda: True)  # while importing or loading
    kill_when(lambda: manifest_path(answers).is_file())
    kill_when(lambda: lines() >= 1)
    kill_when(lambda: lines() >= 3)
    kill_when(lambda: lines() >= 8)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True)
    pick = lambda path: [(l["question_id"], l["prompt"], l["text"]) for l in read(path)]
    assert pick(answers) == pick(reference)
    assert read_manifest(answers)["fingerprint"] == read_manifest(reference)["fingerprint"]
