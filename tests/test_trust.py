"""Nothing mixes, nothing is lost: one writer per answers file, resumes only on the same weights and pictures,
bookkeeping that may change, odd text, odd inputs named at the flag or file at fault, kept patches recorded."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_error, requires_in_llm
from llava.eval import model_vqa_loader, model_vqa_science
from llava.eval.merge_chunks import merge
from llava.eval.provenance import manifest_path, read_manifest
from llava.eval.tasks import TASKS, get_task
from llava.eval.utils import InputError
from llava.tools.make_sample_data import make_sample_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_sample_data(tmp_path_factory.mktemp("eval"), questions=4)


def textvqa(ckpt, answers, *extra, questions=None, images=None, data=None):
    return ["--model-path", str(ckpt), "--question-file", str(questions or data / "textvqa/llava_textvqa_val_v051_ocr.jsonl"),
            "--image-folder", str(images or data / "textvqa/train_images"), "--answers-file", str(answers),
            "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "3", "--device", "cpu", *extra]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


# ------------------------------------------------------------------ one writer per answers file

HOLDER = """
import sys, time
from pathlib import Path
from llava.eval.answers_file import exclusive
with exclusive(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_stops_at_once_naming_the_holder_and_a_dead_holder_holds_nothing(tiny_ckpt, data, tmp_path):
    answers = tmp_path / "a.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(answers)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.monotonic()
        with pytest.raises(InputError, match=rf"a.jsonl: another run is writing it \(pid {holder.pid} on \S+ since "):
            model_vqa_loader.main(textvqa(tiny_ckpt, answers, data=data))
        assert time.monotonic() - start < 30 and not answers.exists()
        with pytest.raises(InputError, match="another run is writing it"):  # merging a chunk in progress neither
            merge([str(answers)], str(tmp_path / "m.jsonl"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    model_vqa_loader.main(textvqa(tiny_ckpt, answers, data=data))  # the killed holder's lock is gone with it
    assert len(read(answers)) == 4


def test_two_runs_started_together_leave_one_run_whole(tiny_ckpt, data, tmp_path):
    answers = tmp_path / "a.jsonl"
    procs = [subprocess.Popen([sys.executable, "-m", "llava.eval.model_vqa_loader",
                               *textvqa(tiny_ckpt, answers, "--visual-token-num", tokens, data=data)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
             for tokens in ("58", "144")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    # Usually the lock stops the second at once; on a slow machine the first may have finished before the second
    # started, and then its other budget is refused: either way nothing mixes.
    assert loser.startswith("error: ") and "Traceback" not in loser
    assert "another run is writing it (pid" in loser or "made with other settings" in loser
    manifest = read_manifest(answers)
    lines = read(answers)
    assert len(lines) == 4 and {l["metadata"]["manifest"] for l in lines} == {manifest["fingerprint"]}


# ------------------------------------------------------------------ bookkeeping may change, results may not

def test_a_limited_trial_then_the_full_run_at_another_batch_size_continues(tiny_ckpt, data, tmp_path):
    reference = tmp_path / "reference.jsonl"
    model_vqa_loader.main(textvqa(tiny_ckpt, reference, data=data))
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(textvqa(tiny_ckpt, answers, "--limit", "2", "--batch-size", "2", data=data))
    assert len(read(answers)) == 2
    model_vqa_loader.main(textvqa(tiny_ckpt, answers, data=data))
    pick = lambda path: [(l["question_id"], l["prompt"], l["text"]) for l in read(path)]
    assert pick(answers) == pick(reference)
    manifest = read_manifest(answers)
    assert manifest["fingerprint"] == read_manifest(reference)["fingerprint"]
    assert manifest["info"]["batch_sizes"] == [1, 2] and manifest["chunk"]["questions"] == 4


def test_a_manifest_deleted_while_the_model_loads_is_written_again(tiny_ckpt, data, tmp_path, monkeypatch):
    import llava.model.builder as builder

    answers = tmp_path / "a.jsonl"
    load = builder.load_pretrained_model

    def load_and_delete(*args, **kwargs):
        manifest_path(answers).unlink()
        return load(*args, **kwargs)

    monkeypatch.setattr(builder, "load_pretrained_model", load_and_delete)
    model_vqa_loader.main(textvqa(tiny_ckpt, answers, "--limit", "1", data=data))
    assert read_manifest(answers)["fingerprint"] == read(answers)[0]["metadata"]["manifest"]


# ------------------------------------------------------------------ other weights, other pictures

def test_resume_or_merge_over_other_pictures_or_weights_is_refused(tiny_ckpt, data, tmp_path):
    questions = data / "textvqa/llava_textvqa_val_v051_ocr.jsonl"
    images = data / "textvqa/train_images"
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(textvqa(tiny_ckpt, answers, "--limit", "2", data=data))

    same = tmp_path / "copy of images"  # the same pictures elsewhere: the folder is bookkeeping
    shutil.copytree(images, same)
    for path in same.iterdir():
        os.utime(path, (1, 1))  # a copy without the times
    other = tmp_path / "other images"
    shutil.copytree(images, other)
    victim = sorted(other.iterdir())[3]
    victim.write_bytes(sorted(images.iterdir())[0].read_bytes())  # another picture under the same name
    with pytest.raises(InputError, match=r"other settings[\s\S]*settings.task.media.sha256"):
        model_vqa_loader.main(textvqa(tiny_ckpt, answers, images=other, data=data))

    weights = tmp_path / "ckpt" / tiny_ckpt.name  # another checkpoint under the same name and config
    shutil.copytree(tiny_ckpt, weights)
    shard = max(weights.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    raw = bytearray(shard.read_bytes())
    raw[-5000] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"other settings[\s\S]*settings.model.fingerprint"):
        model_vqa_loader.main(textvqa(weights, answers, data=data))

    model_vqa_loader.main(textvqa(tiny_ckpt, answers, images=same, data=data))
    assert len(read(answers)) == 4

    parts = [tmp_path / f"2_{i}.jsonl" for i in range(2)]
    model_vqa_loader.main(textvqa(tiny_ckpt, parts[0], "--num-chunks", "2", "--chunk-idx", "0", data=data))
    model_vqa_loader.main(textvqa(tiny_ckpt, parts[1], "--num-chunks", "2", "--chunk-idx", "1", images=other,
                                  data=data))
    with pytest.raises(InputError, match=r"2_1.jsonl: made with other settings[\s\S]*settings.task.media.sha256"):
        merge([str(p) for p in parts], str(tmp_path / "merge.jsonl"))


def test_an_edited_manifest_is_refused_by_resume_and_merge(tiny_ckpt, data, tmp_path):
    answers = tmp_path / "1_0.jsonl"
    model_vqa_loader.main(textvqa(tiny_ckpt, answers, "--visual-token-num", "58", "--limit", "2", data=data))
    doc = json.loads(manifest_path(answers).read_text())
    doc["settings"]["pruning"]["visual_token_num"] = 144
    manifest_path(answers).write_text(json.dumps(doc))
    for action in (lambda: model_vqa_loader.main(textvqa(tiny_ckpt, answers, "--visual-token-num", "144", data=data)),
                   lambda: merge([str(answers)], str(tmp_path / "merge.jsonl"), allow_partial=True)):
        with pytest.raises(InputError, match="no longer matches its fingerprint"):
            action()


def test_merge_resolves_the_task_by_name_from_the_registry():
    assert get_task("vqa") is model_vqa_loader.TASK and get_task("science_qa") is model_vqa_science.TASK
    assert get_task("mmbench").answers.key_fields == ("question_id", "round_id")
    assert get_task("video_qa").answers.text_field == "pred" and set(TASKS) >= {"vqa", "science_qa", "mmbench", "video_qa"}
    with pytest.raises(InputError, match="unknown task 'llava.eval.model_vqa_loader'"):
        get_task("llava.eval.model_vqa_loader")


PLUGIN_TASK = """
from llava.eval import model_vqa_loader as vqa
from llava.eval.runner import parse_args, run
from llava.eval.tasks import AnswerFormat, Task, register

TASK = register(Task("my-vqa", vqa.add_args, vqa.load_samples, AnswerFormat(vqa.VQA_KEY)))


def main(argv=None):
    run(parse_args(vqa.build_parser("my task", max_new_tokens=128), argv), TASK)
"""


@pytest.mark.parametrize("recorded", [True, False])
def test_merge_imports_a_plugin_task(tiny_ckpt, data, tmp_path, monkeypatch, recorded):
    """A plugin task's chunks merge in a process that has never imported it once merge_chunks is given ``--import``;
    without it one error says what to pass (and which modules the run imported): a manifest never imports code."""
    from llava.eval import merge_chunks

    (tmp_path / "my_task.py").write_text(PLUGIN_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_task

    chunks = [tmp_path / f"2_{i}.jsonl" for i in range(2)]
    for i, chunk in enumerate(chunks):
        my_task.main(textvqa(tiny_ckpt, chunk, "--num-chunks", "2", "--chunk-idx", str(i), data=data)
                     + (["--import", "my_task"] if recorded else []))
    monkeypatch.delitem(TASKS, "my-vqa")  # as in a fresh process
    monkeypatch.delitem(sys.modules, "my_task")
    out = tmp_path / "merge.jsonl"
    hint = "; the run imported my_task$" if recorded else "it\\)$"
    with pytest.raises(InputError, match="unknown task 'my-vqa'.*--import the module.*" + hint):
        merge([str(c) for c in chunks], str(out))
    assert not out.exists() and "my_task" not in sys.modules
    merge_chunks.main([*map(str, chunks), "--out", str(out), "--import", "my_task"])
    assert len(read(out)) == 4 and "my-vqa" in TASKS


# ------------------------------------------------------------------ odd text

def test_any_unicode_round_trips_and_a_bom_is_accepted(tiny_ckpt, data, tmp_path):
    rows = [json.loads(l) for l in (data / "textvqa/llava_textvqa_val_v051_ocr.jsonl").read_text().splitlines()]
    rows[0]["text"] = "What\u2028is\u2029this\x85\x1c sign? \U0001F600"
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(textvqa(tiny_ckpt, answers, "--limit", "2", questions=questions, data=data))
    answers.write_bytes(b"\xef\xbb\xbf" + answers.read_bytes())  # saved again by an editor that adds a BOM
    model_vqa_loader.main(textvqa(tiny_ckpt, answers, "--batch-size", "2", questions=questions, data=data))
    lines = read(answers)
    assert [l["prompt"] for l in lines] == [r["text"] for r in rows] and len(lines) == 4
    assert merge([str(answers)], str(tmp_path / "merge.jsonl")) == 4


def test_a_lone_surrogate_in_a_question_is_named(tiny_ckpt, data, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "image": "a.jpg", "text": "ok"}\n'
                         '{"question_id": 2, "image": "a.jpg", "text": "bad \\ud800 text"}\n')
    with pytest.raises(InputError, match=r"q.jsonl:2: question 2: holds a lone surrogate"):
        model_vqa_loader.main(textvqa(tiny_ckpt, tmp_path / "a.jsonl", questions=questions, data=data))


# ------------------------------------------------------------------ bad flags and inputs, named

@pytest.mark.parametrize("flags, message", [
    (["--temperature", "nan"], "argument --temperature: expected a finite number, got 'nan'"),
    (["--top_p", "inf"], "argument --top_p: expected a finite number"),
    (["--device", "gpu"], "argument --device: gpu: expected one of cpu, cuda, cuda:N, auto, mps"),
    (["--device", "cuda:0"], "argument --device: cuda:0: no CUDA GPU is visible here"),
    (["--visual-token 5"], "unrecognized arguments: --visual-token 5"),
])
def test_bad_flag_values_are_named_at_the_flag(tiny_ckpt, data, tmp_path, flags, message):
    import torch

    if "cuda:0" in flags and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    result = subprocess.run([sys.executable, "-m", "llava.eval.model_vqa_loader",
                             *textvqa(tiny_ckpt, tmp_path / "a.jsonl", data=data)[:-2], *flags], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "a.jsonl").exists()


def test_an_answers_file_that_is_a_folder_is_named(tiny_ckpt, data, tmp_path):
    err = cli_error("llava.eval.model_vqa_loader", *textvqa(tiny_ckpt, tmp_path, data=data))
    assert f"--answers-file {tmp_path}: is a folder" in err


def test_a_missing_tokenizer_is_named(tiny_ckpt, data, tmp_path):
    ckpt = tmp_path / tiny_ckpt.name
    shutil.copytree(tiny_ckpt, ckpt)
    for name in ("tokenizer.model", "tokenizer.json"):
        (ckpt / name).unlink(missing_ok=True)
    err = cli_error("llava.eval.model_vqa_loader", *textvqa(ckpt, tmp_path / "a.jsonl", data=data))
    assert f"{ckpt / 'tokenizer.model'}: not found" in err


@requires_in_llm
def test_a_fastv_layer_beyond_the_llm_is_named(tiny_ckpt, data, tmp_path):
    err = cli_error("llava.eval.model_vqa_loader", *textvqa(tiny_ckpt, tmp_path / "a.jsonl", "--pruning-method", "fastv",
                                                            "--visual-token-num", "58", "--fastv-k", "5", data=data))
    assert "--pruning-method fastv prunes before LLM layer 5 (--fastv-k)" in err and "has 2 layers" in err


def test_an_image_that_padding_would_blow_up_is_named(tiny_ckpt, tmp_path, data):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (60000, 2), (200, 10, 10)).save(folder / "strip.png")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "image": "strip.png", "text": "What is it?"}\n')
    result = subprocess.run([sys.executable, "-m", "llava.eval.model_vqa_loader",
                             *textvqa(tiny_ckpt, tmp_path / "a.jsonl", questions=questions, images=folder, data=data)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]  # after the loading progress bars
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(errors) == 1
    assert "q.jsonl:1: question 1: image too large to preprocess safely" in errors[0] and "strip.png: 60000×2" in errors[0]


# ------------------------------------------------------------------ ScienceQA batches, kept patches

def test_science_qa_mixes_image_and_text_only_questions_at_batch_size_two(tiny_ckpt, data, tmp_path):
    sqa = ["--model-path", str(tiny_ckpt), "--question-file", str(data / "sqa/llava_test_CQM-A.json"),
           "--image-folder", str(data / "sqa/images/test"), "--temperature", "0", "--max_new_tokens", "2",
           "--device", "cpu", "--single-pred-prompt"]
    items = json.loads((data / "sqa/llava_test_CQM-A.json").read_text())
    assert {"image" in item for item in items} == {True, False}
    one, two = tmp_path / "b1.jsonl", tmp_path / "b2.jsonl"
    model_vqa_science.main([*sqa, "--answers-file", str(one)])
    model_vqa_science.main([*sqa, "--answers-file", str(two), "--batch-size", "2"])
    assert [(l["question_id"], l["text"]) for l in read(two)] == [(l["question_id"], l["text"]) for l in read(one)]


@pytest.mark.parametrize("tokens", ["58", None])
def test_record_kept_lists_each_rows_own_patches(tiny_ckpt, data, tmp_path, tokens):
    budget = ["--visual-token-num", tokens] if tokens else []
    one, four = tmp_path / "b1.jsonl", tmp_path / "b4.jsonl"
    model_vqa_loader.main(textvqa(tiny_ckpt, one, "--record-kept", *budget, data=data))
    model_vqa_loader.main(textvqa(tiny_ckpt, four, "--record-kept", "--batch-size", "4", *budget, data=data))
    lines = read(one)
    for line in lines:
        crop, = line["kept"]  # LLaVA-1.5: one crop per image
        assert crop == sorted(set(crop)) and len(crop) == int(tokens or 576) and 0 <= crop[0] and crop[-1] < 576
    assert [l["kept"] for l in read(four)] == [l["kept"] for l in lines]
    if tokens:
        assert len({json.dumps(l["kept"]) for l in lines}) > 1  # each row its own image's patches
    assert read_manifest(one)["settings"]["task"]["record_kept"] is True


def test_record_kept_on_llava_next_gives_each_row_its_crops(data, tmp_path):
    from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "llava-v1.6-tiny", arch="next")
    one, two = tmp_path / "b1.jsonl", tmp_path / "b2.jsonl"
    model_vqa_loader.main(textvqa(ckpt, one, "--record-kept", "--visual-token-num", "58", data=data))
    model_vqa_loader.main(textvqa(ckpt, two, "--record-kept", "--visual-token-num", "58", "--batch-size", "2",
                                  data=data))
    lines = read(one)
    assert all(len(l["kept"]) == 5 and all(len(crop) == 58 for crop in l["kept"]) for l in lines)  # 2×2 grid + base
    assert [l["kept"] for l in read(two)] == [l["kept"] for l in lines]
