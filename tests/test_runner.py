"""The shared inference loop: answer lines, resume, chunks, batching, and clear errors on bad input."""
from __future__ import annotations

import json
import shutil

import pytest

from llava.eval import model_vqa_loader, model_vqa_mmbench, model_vqa_science
from llava.eval.merge_chunks import merge
from llava.eval.runner import get_chunk
from llava.eval.utils import InputError
from llava.tools.make_sample_data import make_sample_data
from conftest import DEVICE_ARGS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_sample_data(tmp_path_factory.mktemp("eval"), questions=5)


def loader_args(tiny_ckpt, data, answers, *extra):
    return ["--model-path", str(tiny_ckpt), "--question-file", str(data / "textvqa/llava_textvqa_val_v051_ocr.jsonl"),
            "--image-folder", str(data / "textvqa/train_images"), "--answers-file", str(answers),
            "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "6", *DEVICE_ARGS, *extra]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answer_lines_have_upstream_format(tiny_ckpt, data, tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(loader_args(tiny_ckpt, data, answers, "--visual-token-num", "7"))
    lines = read(answers)
    questions = read(data / "textvqa/llava_textvqa_val_v051_ocr.jsonl")
    assert [l["question_id"] for l in lines] == [q["question_id"] for q in questions]
    assert [l["prompt"] for l in lines] == [q["text"] for q in questions]
    for line in lines:
        assert set(line) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert line["model_id"] == tiny_ckpt.name and isinstance(line["text"], str)
        assert line["metadata"] == {"manifest": json.loads((tmp_path / "a.jsonl.manifest.json").read_text())["fingerprint"]}
    assert "Average number of visual tokens: 7.00" in capsys.readouterr().out


def test_resume_after_a_killed_run(tiny_ckpt, data, tmp_path):
    full = tmp_path / "full.jsonl"
    model_vqa_loader.main(loader_args(tiny_ckpt, data, full, "--visual-token-num", "3"))
    lines = full.read_text().splitlines()
    killed = tmp_path / "killed.jsonl"
    killed.write_text("\n".join(lines[:2]) + "\n" + lines[2][:17])  # two answers done, the third torn mid-write
    shutil.copy(tmp_path / "full.jsonl.manifest.json", tmp_path / "killed.jsonl.manifest.json")
    model_vqa_loader.main(loader_args(tiny_ckpt, data, killed, "--visual-token-num", "3"))
    resumed = read(killed)
    assert [(l["question_id"], l["text"]) for l in resumed] == [(l["question_id"], l["text"]) for l in read(full)]
    assert [l["answer_id"] for l in resumed[:2]] == [json.loads(l)["answer_id"] for l in lines[:2]]  # kept, not redone


def test_chunks_merge_to_the_single_run(tiny_ckpt, data, tmp_path):
    single = tmp_path / "single.jsonl"
    model_vqa_loader.main(loader_args(tiny_ckpt, data, single))
    parts = []
    for idx in range(2):
        part = tmp_path / f"2_{idx}.jsonl"
        model_vqa_loader.main(loader_args(tiny_ckpt, data, part, "--num-chunks", "2", "--chunk-idx", str(idx)))
        parts.append(str(part))
    assert merge(parts, str(tmp_path / "merge.jsonl")) == 5
    key = lambda l: (l["question_id"], l["prompt"], l["text"])
    assert [key(l) for l in read(tmp_path / "merge.jsonl")] == [key(l) for l in read(single)]
    assert get_chunk(list(range(5)), 2, 0) == [0, 1, 2] and get_chunk(list(range(5)), 2, 1) == [3, 4]


@pytest.mark.parametrize("tokens", [None, "4"])
def test_batched_answers_equal_batch_one(tiny_ckpt, data, tmp_path, tokens):
    extra = ["--visual-token-num", tokens] if tokens else []
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    model_vqa_loader.main(loader_args(tiny_ckpt, data, one, *extra))
    model_vqa_loader.main(loader_args(tiny_ckpt, data, many, "--batch-size", "3", *extra))
    pick = lambda p: [(l["question_id"], l["text"]) for l in read(p)]
    assert pick(many) == pick(one)


@pytest.mark.gpu
def test_batch_four_equals_batch_one_on_forty_questions(tiny_model, tmp_path):
    """40 questions of four benchmarks (prompt lengths 52-65 tokens, so batches are padded), 32 new tokens, CPU fp32.

    Equality is what the arithmetic gives here, not a guarantee: a padded batch multiplies matrices of other shapes,
    whose sums may round differently in the last bits (more so in fp16 on GPU); that flips a greedy token only where
    two logits tie to within that rounding.
    """
    from llava.eval.runner import build_prompt, generate_batch
    from llava.mm_utils import load_image, tokenizer_image_token

    tokenizer, model, processor, _ = tiny_model
    root = make_sample_data(tmp_path / "eval", questions=10)
    questions = []
    for rel, folder in [("pope/llava_pope_test.jsonl", "pope/val2014"), ("gqa/llava_gqa_testdev_balanced.jsonl",
                        "gqa/data/images"), ("mm-vet/llava-mm-vet.jsonl", "mm-vet/images"),
                        ("textvqa/llava_textvqa_val_v051_ocr.jsonl", "textvqa/train_images")]:
        questions += [(q["text"], root / folder / q["image"]) for q in read(root / rel)][:10]
    prompts = [tokenizer_image_token(build_prompt(text, 1, "vicuna_v1", False), tokenizer) for text, _ in questions]
    images = [load_image(path) for _, path in questions]
    assert len(prompts) == 40 and len({len(p) for p in prompts}) > 3
    gen = dict(max_new_tokens=32, num_beams=1, use_cache=True, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    model.set_visual_token_num(58)
    try:
        one = [generate_batch(model, tokenizer, processor, [p], [im], gen)[0][0] for p, im in zip(prompts, images)]
        order = sorted(range(40), key=lambda i: -len(prompts[i]))  # the runner's batches: longest first
        batched = {}
        for start in range(0, 40, 4):
            rows = order[start:start + 4]
            texts, _ = generate_batch(model, tokenizer, processor, [prompts[i] for i in rows], [images[i] for i in rows], gen)
            batched.update(zip(rows, texts))
    finally:
        model.set_visual_token_num(None)
    assert [batched[i] for i in range(40)] == one


@pytest.mark.gpu
def test_science_text_only_and_image_items(tiny_ckpt, data, tmp_path):
    answers = tmp_path / "sqa.jsonl"
    model_vqa_science.main(["--model-path", str(tiny_ckpt), "--question-file", str(data / "sqa/llava_test_CQM-A.json"),
                            "--image-folder", str(data / "sqa/images/test"), "--answers-file", str(answers),
                            "--single-pred-prompt", "--temperature", "0", "--max_new_tokens", "4", *DEVICE_ARGS])
    lines = read(answers)
    assert len(lines) == 5
    assert lines[0]["prompt"].startswith("<image>\n") and not lines[1]["prompt"].startswith("<image>")
    assert all(l["prompt"].endswith("Answer with the option's letter from the given choices directly.") for l in lines)


@pytest.mark.gpu
def test_mmbench_rounds_and_fields(tiny_ckpt, data, tmp_path):
    answers = tmp_path / "mmb.jsonl"
    model_vqa_mmbench.main(["--model-path", str(tiny_ckpt), "--question-file", str(data / "mmbench/mmbench_dev_20230712.tsv"),
                            "--answers-file", str(answers), "--single-pred-prompt", "--all-rounds", "--temperature", "0",
                            "--max_new_tokens", "2", *DEVICE_ARGS, "--limit", "2"])
    first, second = read(answers)
    assert (first["question_id"], first["round_id"]) == (0, 0) and (second["question_id"], second["round_id"]) == (0, 1)
    assert first["options"][1:] + first["options"][:1] == second["options"]
    assert first["option_char"] == ["A", "B", "C", "D"] and second["option_char"] == ["B", "C", "D", "A"]
    assert second["prompt"].endswith("\nA. green\nB. blue\nC. yellow\nD. red")


def test_token_count_out_of_range_fails_before_loading(tiny_ckpt, data, tmp_path, monkeypatch):
    import llava.model.builder as builder

    monkeypatch.setattr(builder, "load_pretrained_model", lambda *a, **k: pytest.fail("model was loaded"))
    for bad, message in [("577", "exceeds the 576 patches"), ("-1", "must be >= 0")]:
        with pytest.raises(ValueError, match=message):
            model_vqa_loader.main(loader_args(tiny_ckpt, data, tmp_path / "x.jsonl", "--visual-token-num", bad))


def test_missing_image_names_the_file_or_is_recorded(tiny_ckpt, data, tmp_path):
    broken = tmp_path / "eval"
    shutil.copytree(data / "textvqa", broken)
    victim = sorted((broken / "train_images").iterdir())[1]
    victim.unlink()
    args = loader_args(tiny_ckpt, broken.parent, tmp_path / "a.jsonl")
    args[args.index("--question-file") + 1] = str(broken / "llava_textvqa_val_v051_ocr.jsonl")
    args[args.index("--image-folder") + 1] = str(broken / "train_images")
    with pytest.raises(InputError, match=victim.name):
        model_vqa_loader.main(args)
    model_vqa_loader.main(args + ["--skip-missing-images"])
    assert len(read(tmp_path / "a.jsonl")) == 4
    missing = read(tmp_path / "a.jsonl.missing.jsonl")
    assert len(missing) == 1 and missing[0]["media"].endswith(victim.name)


def test_malformed_question_line_names_the_line(tiny_ckpt, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "image": "a.jpg", "text": "hi"}\n{"question_id": 2, "image": \n')
    with pytest.raises(InputError, match=r"q.jsonl:2: malformed JSON"):
        model_vqa_loader.main(["--model-path", str(tiny_ckpt), "--question-file", str(questions), "--image-folder",
                               str(tmp_path), "--answers-file", str(tmp_path / "a.jsonl")])


def test_question_keys_are_unique_in_real_question_files(shared_dir):
    from llava.eval.model_vqa_loader import vqa_samples

    for rel in ["textvqa/llava_textvqa_val_v051_ocr.jsonl", "MME/llava_mme.jsonl", "pope/llava_pope_test.jsonl",
                "vizwiz/llava_test.jsonl", "gqa/llava_gqa_testdev_balanced.jsonl", "mm-vet/llava-mm-vet.jsonl"]:
        samples = vqa_samples(str(shared_dir / "llava-eval" / rel), "images")
        assert len({s.key for s in samples}) == len(samples), rel
