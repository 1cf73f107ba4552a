"""The stack pyproject.toml admits, the facts a run manifest records, and selection that ties break the same way on
every device, dtype and batch size."""
from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from llava import compat
from llava.pruning import available_methods, get_method
from llava.pruning.base import InLLMPruningMethod, select_topk_raster, topk_indices
from conftest import IN_LLM_SUPPORTED, ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement(name: str) -> Requirement:
    return next(r for r in map(Requirement, PROJECT["dependencies"]) if r.name == name)


# --------------------------------------------------------------------------- the stack


def test_floors_admit_the_lent_gpu_stack_and_no_caps():
    """torch 2.11 (the lent GPU machines') through any newer release; transformers from its floor up."""
    torch_req, tf_req = requirement("torch"), requirement("transformers")
    assert Version("2.11.0") in torch_req.specifier and Version("2.10.0") not in torch_req.specifier
    assert all(s.operator == ">=" for s in [*torch_req.specifier, *tf_req.specifier])
    for release in ["4.56.0", "5.17.0", "5.25.0", "6.0.0"]:
        assert Version(release) in tf_req.specifier
    assert Version("99.0") in torch_req.specifier


def test_python_3_10_through_3_13_admitted():
    python = SpecifierSet(PROJECT["requires-python"])
    assert all(Version(v) in python for v in ["3.10", "3.11", "3.12", "3.13"]) and Version("3.9") not in python


def test_stack_facts_flag_releases_beyond_the_tested(monkeypatch):
    facts = compat.stack_facts()
    assert facts.torch == torch.__version__ and facts.topk_tie_rule == compat.TOPK_TIE_RULE
    monkeypatch.setattr(compat, "TORCH_VERSION", Version("2.99.0+cu130"))
    monkeypatch.setattr(compat, "TRANSFORMERS_VERSION", Version(compat.NEWEST_TESTED_TRANSFORMERS + "+local"))
    assert compat.stack_facts().beyond_tested == ("torch",)
    monkeypatch.setattr(compat, "TORCH_VERSION", Version(compat.NEWEST_TESTED_TORCH + ".post1"))
    assert compat.stack_facts().beyond_tested == ()  # the same release, rebuilt: within


def test_untested_stack_note_is_one_line_once_per_process(monkeypatch, capsys):
    monkeypatch.setattr(compat, "TORCH_VERSION", Version("9.0.0"))
    compat.note_untested_stack.cache_clear()
    try:
        for _ in range(3):
            compat.note_untested_stack()
    finally:
        compat.note_untested_stack.cache_clear()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(compat.BEYOND_TESTED_PREFIX)
    assert torch.__version__ in lines[0] and compat.transformers.__version__ in lines[0]


# --------------------------------------------------------------------------- deterministic ties


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ties_go_to_the_lower_patch_index(dtype):
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5, 0.5, 0.2, 0.5]], dtype=dtype)
    assert topk_indices(scores, 3).tolist() == [[1, 3, 4]]
    assert select_topk_raster(scores, 5).tolist() == [[1, 2, 3, 4, 6]]
    assert select_topk_raster(torch.zeros(1, 9, dtype=dtype), 4).tolist() == [[0, 1, 2, 3]]


def test_without_ties_equals_topk():
    g = torch.Generator().manual_seed(0)
    scores = torch.randperm(576, generator=g).float().view(1, -1).repeat(3, 1) / 576  # distinct values
    for k in [0, 1, 29, 58, 144, 576]:
        assert torch.equal(topk_indices(scores, k), scores.topk(k).indices)


@pytest.mark.gpu
def test_selection_is_batch_and_device_invariant(device):
    """fp16-rounded softmax-like scores with many ties: every row of a batch keeps what it keeps alone, on the
    test device as on the CPU."""
    g = torch.Generator().manual_seed(1)
    scores = torch.softmax(torch.randn(16, 577, generator=g) * 0.3, -1)[:, 1:].half()  # many fp16 ties
    assert any(row.unique().numel() < row.numel() for row in scores)
    alone = torch.cat([select_topk_raster(row[None], 58) for row in scores])
    assert torch.equal(select_topk_raster(scores, 58), alone)
    assert torch.equal(select_topk_raster(scores.to(device), 58).cpu(), alone)


# --------------------------------------------------------------------------- every method, test device and dtype


@pytest.mark.gpu
@pytest.mark.parametrize("method", available_methods())
def test_every_method_batch_two_equals_batch_one(tiny_model, dtype, method):
    """Greedy answers and kept patches of a padded batch of two equal each question's own, for every method, on
    FASTERVLM_TEST_DEVICE in FASTERVLM_TEST_DTYPE."""
    from llava.eval.runner import build_prompt, generate_batch
    from llava.mm_utils import tokenizer_image_token
    from test_model_parity import make_image

    if isinstance(get_method(method), InLLMPruningMethod) and not IN_LLM_SUPPORTED:
        pytest.skip("in-LLM pruning needs a newer transformers")
    tokenizer, model, processor, _ = tiny_model
    # The tiny LLM has 2 layers: in-LLM methods prune before layer 1 (the multi-stage ones in one stage there).
    params = {name: 1 for name in ("k", "layer") if name in get_method(method).__dataclass_fields__}
    params.update({"pdrop": {"layers": "1", "ratio": 0.5}, "sparsevlm": {"layers": "1", "keeps": "29"}}.get(method, {}))
    model.set_pruning_method(method, **params)
    model.set_visual_token_num(29)
    prompts = [tokenizer_image_token(build_prompt(q, 1, "vicuna_v1", False), tokenizer)
               for q in ["What is in the image?", "Which colour is the large square in the upper left corner?"]]
    images = [make_image(20), make_image(21)]
    gen = dict(max_new_tokens=5, num_beams=1, use_cache=True, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    one, kept = [], []
    for p, im in zip(prompts, images):
        one += generate_batch(model, tokenizer, processor, [p], [im], gen)[0]
        kept += model.last_pruning.kept_indices
    model.set_pruning_method(method, **params)  # random: the same seed, so the batch draws what the two runs drew
    batched = generate_batch(model, tokenizer, processor, prompts, images, gen)[0]
    assert all(torch.equal(a, b) for a, b in zip(model.last_pruning.kept_indices, kept))
    if dtype == torch.float32:
        assert batched == one
    else:
        # In fp16/bf16 a padded batch rounds differently from batch 1, and on a random tiny model a later decode step
        # can flip between near-tied logits (pdrop did in bf16): the kept sets and the start of each answer must agree.
        assert [text[:2] for text in batched] == [text[:2] for text in one]


# --------------------------------------------------------------------------- lmms-eval under accelerate launch


def test_lmms_model_placement_follows_the_launcher():
    """accelerate launch / torchrun set RANK, WORLD_SIZE and LOCAL_RANK: each process takes its rank (lmms-eval
    shards requests by it) and its own GPU; an explicit device is taken as given."""
    from llava.eval.lmms_model import Placement, placement
    from llava.eval.utils import InputError

    two = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert placement(None, two, True) == Placement(3, 4, torch.device("cuda", 1))
    assert placement("cuda", two, True) == Placement(3, 4, torch.device("cuda", 1))
    assert placement("cuda:0", two, True).device == torch.device("cuda", 0)
    assert placement(None, two, False) == Placement(3, 4, torch.device("cpu"))
    assert placement(None, {}, True) == Placement(0, 1, torch.device("cuda", 0))
    with pytest.raises(InputError, match="RANK=4 is outside WORLD_SIZE=4"):
        placement(None, {**two, "RANK": "4"}, True)
    with pytest.raises(InputError, match="device='gpu'"):
        placement("gpu", {}, True)


def test_tie_check_on_the_cpu(tmp_path):
    """The GPU session's CPU↔device check, run on the CPU alone: every number present and in [0, 1]."""
    from llava.bench import tie_check

    result = tie_check.main(["--device", "cpu", "--images", "4", "--questions", "1", "--budgets", "58",
                             "--out", str(tmp_path / "t.json")])
    [row] = result["budgets"]
    assert row["kept_per_image"] == 58 and row["tie_at_boundary"]["cpu_fp32"] == 0.0
    numbers = [*row["kept_same_as_cpu_fp32"].values(), *row["rule_differs_from_topk"].values(),
               *result["answers_same_as_cpu_fp32"].values()]
    assert numbers and all(0 <= v <= 1 for v in numbers)
    assert (tmp_path / "t.json").is_file()


def test_gpu_session_dry_run(tmp_path):
    """scripts/gpu_session.sh --dry-run: every step of the GPU session, shrunk, on the CPU; results under $OUT."""
    import csv
    import json
    import os
    import subprocess
    import sys

    result = subprocess.run(["bash", "scripts/gpu_session.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = list(csv.DictReader((tmp_path / "steps.tsv").open(), delimiter="\t"))
    assert [(s["step"], s["rc"]) for s in steps] == [(name, "0") for name in
                                                     ("versions", "gpu_tests", "clis", "tie_check", "textvqa",
                                                      "gpu_check")]
    cells = list(csv.DictReader((tmp_path / "clis.tsv").open(), delimiter="\t"))
    ran = ("fastervlm", "fastv") if IN_LLM_SUPPORTED else ("fastervlm",)
    assert [c["method"] for c in cells if c["result"] == "ok"] == [m for m in ran for _ in range(2)]
    assert IN_LLM_SUPPORTED or cells[-1]["result"].startswith("not run: in-LLM pruning")
    for method in ran:  # batch 2 answers what batch 1 answers
        assert len({c["answers"] for c in cells if c["method"] == method}) == 1
    assert json.loads((tmp_path / "tie_check.json").read_text())["budgets"][0]["kept_per_image"] == 58
    assert (tmp_path / "n_58.json").is_file() and (tmp_path / "gpu_check" / "gpu_check.json").is_file()
