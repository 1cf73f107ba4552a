"""lmms-eval's ``fastervlm`` model (``llava.eval.lmms_model``) on the tiny checkpoints and small tasks built here.

Skipped without lmms-eval (the ``[lmms]`` extra). Nothing is downloaded: the tasks read a JSON-lines file of local
images (``dataset_path: json``), and the hubs are switched off. lmms-eval finds the model through its own
registration mechanism, the ``lmms_eval.models`` entry point group, declared here by a distribution folder on the
path, exactly as the package's installed metadata declares it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install '.[lmms]')")

from lmms_eval.api.instance import Instance  # noqa: E402

from llava.eval import model_vqa_loader  # noqa: E402
from llava.eval.lmms_model import MODEL_NAME, FasterVLM  # noqa: E402
from llava.eval.utils import InputError  # noqa: E402
from llava.tools.convert_checkpoint import to_transformers  # noqa: E402
from test_model_parity import make_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is the color of the bus?", "Is there a dog in the image?", "How many people are there?"]
POST_PROMPT = "\nAnswer the question using a single word or phrase."
MAX_NEW_TOKENS = 6
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

UTILS = '''from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + (lmms_eval_specific_kwargs or {}).get("post_prompt", "")


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
'''


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    """A three-question VQA task (``fastervlm_tiny_vqa``), its images, the same questions as a LLaVA question file,
    and a distribution folder declaring the entry point."""
    root = tmp_path_factory.mktemp("lmms")
    (root / "images").mkdir()
    docs, llava_questions = [], []
    for i, question in enumerate(QUESTIONS):
        make_image(i, size=(90, 60) if i % 2 == 0 else (50, 120)).save(root / "images" / f"{i}.png")
        docs.append({"question_id": i, "question": question, "image": str(root / "images" / f"{i}.png"), "answer": "red"})
        llava_questions.append({"question_id": i, "image": f"{i}.png", "text": question + POST_PROMPT})
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in llava_questions))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    (tasks / "tiny_vqa.yaml").write_text(f'''task: fastervlm_tiny_vqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "docs.jsonl"}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  until: ["ASSISTANT:"]
  max_new_tokens: {MAX_NEW_TOKENS}
  temperature: 0
process_results: !function utils.process_results
lmms_eval_specific_kwargs:
  default:
    post_prompt: {json.dumps(POST_PROMPT)}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
''')
    dist = root / "site" / "fastervlm_entry_point-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fastervlm-entry-point\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[lmms_eval.models]\n{MODEL_NAME} = llava.eval.lmms_model:manifest\n")
    return {"root": root, "tasks": tasks, "site": root / "site", "questions": root / "questions.jsonl"}


def response(sample: dict) -> str:
    """A logged sample's answer (lmms-eval 0.7 logs the filtered response itself, older releases a list of them)."""
    resp = sample["filtered_resps"]
    return resp if isinstance(resp, str) else resp[0]


def runner_answers(ckpt: Path, task: dict, tmp_path: Path, *extra: str) -> list[str]:
    """Our own CLI's answers to the same questions."""
    answers = tmp_path / "runner.jsonl"
    model_vqa_loader.main(["--model-path", str(ckpt), "--question-file", str(task["questions"]), "--image-folder",
                           str(task["root"] / "images"), "--answers-file", str(answers), "--temperature", "0",
                           "--conv-mode", "vicuna_v1", "--max_new_tokens", str(MAX_NEW_TOKENS), "--device", "cpu",
                           "--overwrite", *extra])
    return [json.loads(line)["text"] for line in answers.read_text().splitlines()]


def test_lmms_eval_cli_runs_the_registered_model_with_pruning(tiny_ckpt, task, tmp_path):
    """``python -m lmms_eval --model fastervlm``: found through the entry point, pruned, our runner's answers."""
    out = tmp_path / "results"
    env = {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join([str(task["site"]), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", MODEL_NAME, "--model_args",
         f"pretrained={tiny_ckpt},visual_token_num=58,device=cpu,dtype=float32", "--tasks", "fastervlm_tiny_vqa",
         "--include_path", str(task["tasks"]), "--batch_size", "1", "--output_path", str(out), "--log_samples"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    samples = sorted(out.rglob("*fastervlm_tiny_vqa*.jsonl"))
    assert result.returncode == 0 and samples, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(line) for line in samples[0].read_text().splitlines()]
    answers = [response(line) for line in sorted(lines, key=lambda line: line["doc_id"])]
    assert answers == runner_answers(tiny_ckpt, task, tmp_path, "--visual-token-num", "58")
    results = json.loads(next(out.rglob("*results.json")).read_text())
    assert "exact_match,none" in results["results"]["fastervlm_tiny_vqa"]


@pytest.fixture
def registered(task, monkeypatch):
    """The model class as lmms-eval's registry resolves it, from the entry point."""
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    monkeypatch.syspath_prepend(str(task["site"]))
    MODEL_REGISTRY_V2.load_entrypoint_manifests(overwrite=True)
    return get_model(MODEL_NAME)


def evaluate(lm, task: dict) -> list[str]:
    """``fastervlm_tiny_vqa`` through lmms-eval's evaluator; the answers in document order."""
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    out = evaluator.simple_evaluate(model=lm, tasks=["fastervlm_tiny_vqa"], log_samples=True,
                                    task_manager=TaskManager(include_path=str(task["tasks"])))
    samples = sorted(out["samples"]["fastervlm_tiny_vqa"], key=lambda s: s["doc_id"])
    return [response(s) for s in samples]


@pytest.mark.parametrize("layout, method, batch", [("original", "random", 1), ("transformers", "fastervlm", 2)])
def test_generate_until_equals_our_runner_in_both_layouts(registered, tiny_ckpt, task, tmp_path, monkeypatch, layout,
                                                          method, batch):
    """Through lmms-eval's evaluator, the answers of our CLI with the same settings (``random``'s draws follow the
    question order, which batches of one keep in both)."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    ckpt = tiny_ckpt if layout == "original" else to_transformers(tiny_ckpt, tmp_path / "hf", torch.float32)
    lm = registered.create_from_arg_string(f"pretrained={ckpt},visual_token_num=58,pruning_method={method},seed=3,"
                                           "device=cpu", {"batch_size": str(batch), "device": None})
    model = lm.model  # lmms-eval's clean() drops the model from lm after the run
    assert isinstance(lm, FasterVLM) and lm.batch_size == batch and model.get_visual_token_num() == 58
    answers = evaluate(lm, task)
    assert model.last_pruning.kept_indices[0].shape == (58,)
    assert answers == runner_answers(ckpt, task, tmp_path, "--visual-token-num", "58", "--pruning-method", method,
                                     "--seed", "3", "--batch-size", str(batch))


def loglikelihood_requests(lm, task: dict, continuations: list[str]) -> list[Instance]:
    """lmms-eval's loglikelihood requests for question 0 and each continuation, as its tasks build them."""
    from PIL import Image

    doc = json.loads((task["root"] / "docs.jsonl").read_text().splitlines()[0])
    lm.task_dict = {"tiny": {"test": [doc]}}
    visual = lambda d: [Image.open(d["image"]).convert("RGB")]  # noqa: E731
    return [Instance(request_type="loglikelihood", idx=i, metadata={"task": "tiny", "doc_id": 0, "repeats": 1},
                     arguments=(doc["question"] + POST_PROMPT, f" {c}", visual, 0, "tiny", "test"))
            for i, c in enumerate(continuations)]


def test_loglikelihood_with_pruning_is_the_replys_mean_nll(registered, tiny_ckpt, task):
    """lmms-eval's convention (its multiple_choice takes the argmin): the reply's mean −log p, checked against the
    model's own loss on the same sequence with the prompt's labels masked."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import process_images, tokenizer_image_token

    lm = registered(pretrained=str(tiny_ckpt), visual_token_num=29, device="cpu")
    replies = ["Red", "Two people", "No"]
    results = lm.loglikelihood(loglikelihood_requests(lm, task, replies))
    assert lm.model.last_pruning.visual_tokens == [29]
    image = make_image(0, size=(90, 60))
    pixels = process_images([image], lm.processor, lm.model.config)
    for reply, (nll, greedy) in zip(replies, results):
        context = lm._prompt(QUESTIONS[0] + POST_PROMPT, image)
        assert context.endswith("ASSISTANT:") and "<image>\n" + QUESTIONS[0] in context
        ids = tokenizer_image_token(lm._prompt(QUESTIONS[0] + POST_PROMPT, image, reply), lm.tokenizer)
        labels = torch.tensor([ids])
        labels[0, :len(tokenizer_image_token(context, lm.tokenizer))] = -100
        labels[labels == IMAGE_TOKEN_INDEX] = -100
        with torch.no_grad():
            loss = lm.model(torch.tensor([ids]), images=pixels, image_sizes=[image.size], labels=labels).loss
        assert nll == pytest.approx(float(loss), rel=1e-5) and nll > 0 and isinstance(greedy, bool)
    lm.model.set_visual_token_num(None)
    unpruned = lm.loglikelihood(loglikelihood_requests(lm, task, replies[:1]))[0][0]
    assert lm.model.last_pruning.visual_tokens == [576] and unpruned != results[0][0]


def test_bad_model_args_are_named(registered, tiny_ckpt):
    with pytest.raises(InputError, match=r"unknown model args \['visual_tokens'\]"):
        registered(pretrained=str(tiny_ckpt), visual_tokens=58, device="cpu")
    with pytest.raises(InputError, match="model args: --fastv-k applies to --pruning-method fastv"):
        registered(pretrained=str(tiny_ckpt), visual_token_num=58, fastv_k=3, device="cpu")
    with pytest.raises(InputError, match="anyres_protocol='fixed'"):
        registered(pretrained=str(tiny_ckpt), anyres_protocol="fixed", device="cpu")
    with pytest.raises(InputError, match="no 'auto'"):
        registered(pretrained=str(tiny_ckpt), batch_size="auto", device="cpu")
    with pytest.raises(ValueError, match="exceeds the 576 patches"):
        registered(pretrained=str(tiny_ckpt), visual_token_num=577, device="cpu")


def test_video_question_equals_our_video_cli(tmp_path):
    """A Video-LLaVA checkpoint: a task's video path becomes the 8-frame clip our video CLI decodes, 13 tokens each."""
    pytest.importorskip("av", reason="decoding test videos needs PyAV")
    from llava.eval.video import run_inference_video_qa as video_cli
    from llava.tools.make_tiny_video_checkpoint import make_tiny_video_checkpoint
    from test_video import QUESTION, write_video

    ckpt = make_tiny_video_checkpoint(tmp_path / "Video-LLaVA-tiny")
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos/a.mp4", 12)
    lm = FasterVLM(pretrained=str(ckpt), visual_token_num=13, device="cpu")
    lm.task_dict = {"tiny": {"test": [{"video": str(tmp_path / "videos/a.mp4")}]}}
    request = Instance(request_type="generate_until", idx=0, metadata={"task": "tiny", "doc_id": 0, "repeats": 1},
                       arguments=(QUESTION, {"max_new_tokens": 6, "temperature": 0}, lambda doc: [doc["video"]], 0,
                                  "tiny", "test"))
    answer = lm.generate_until([request])
    assert lm.model.last_pruning.visual_tokens == [8 * 13]
    (tmp_path / "q.json").write_text(json.dumps([{"video_name": "a", "question": QUESTION, "question_id": "a0"}]))
    (tmp_path / "a.json").write_text(json.dumps([{"answer": "red", "type": 3, "question_id": "a0"}]))
    video_cli.main(["--model-path", str(ckpt), "--video-dir", str(tmp_path / "videos"), "--gt-file-question",
                    str(tmp_path / "q.json"), "--gt-file-answers", str(tmp_path / "a.json"), "--answers-file",
                    str(tmp_path / "cli.jsonl"), "--device", "cpu", "--max-new-tokens", "6", "--visual-token-num", "13",
                    "--protocol", "greedy"])
    assert answer == [json.loads(line)["pred"] for line in (tmp_path / "cli.jsonl").read_text().splitlines()]


def test_accelerate_launch_rank_and_device(tiny_ckpt, monkeypatch):
    """A process of a faked two-process launch: lmms-eval reads rank and world size from the model to shard."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    lm = FasterVLM(pretrained=str(tiny_ckpt), visual_token_num=29, device="cpu")
    assert (lm.rank, lm.world_size, lm.device) == (1, 2, torch.device("cpu"))
