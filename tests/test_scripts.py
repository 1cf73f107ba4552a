"""Every image benchmark script, end to end on CPU: tiny checkpoint + sample data in the real layouts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_in_llm
from llava.tools.make_sample_data import make_sample_data

ROOT = Path(__file__).resolve().parents[1]
TOKENS = "58"


@pytest.fixture(scope="module")
def env(tiny_ckpt, tmp_path_factory):
    work = tmp_path_factory.mktemp("scripts")
    ckpt_dir = work / "checkpoints"
    shutil.copytree(tiny_ckpt, ckpt_dir / "llava-v1.5-tiny")
    eval_dir = make_sample_data(work / "eval", questions=3)
    environ = {**os.environ, "CKPT": "llava-v1.5-tiny", "CKPT_DIR": str(ckpt_dir), "EVAL_DIR": str(eval_dir),
               "PYTHON": sys.executable, "EXTRA_ARGS": "--device cpu --max_new_tokens 8", "CUDA_VISIBLE_DEVICES": ""}
    return eval_dir, environ


def run_script(bench: str, environ: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts/v1_5/eval" / f"{bench}.sh"), *args], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def score(eval_dir: Path, folder: str) -> dict:
    return json.loads((eval_dir / folder / "scores/llava-v1.5-tiny/fastervlm" / f"n_{TOKENS}.json").read_text())


ANSWERS = "answers/llava-v1.5-tiny/fastervlm/n_58/merge.jsonl"
SCORED = {"gqa": ("gqa", "gqa"), "sqa": ("sqa", "sqa_img"), "textvqa": ("textvqa", "textvqa"), "pope": ("pope", "pope"),
          "mme": ("MME", "mme"), "mmbench": ("mmbench", "mmb"), "mmbench_cn": ("mmbench_cn", "mmb_cn")}


@pytest.mark.parametrize("bench", sorted(SCORED))
def test_scored_benchmarks_write_a_score(env, bench):
    eval_dir, environ = env
    result = run_script(bench, environ, TOKENS)
    assert result.returncode == 0, result.stderr[-3000:]
    folder, key = SCORED[bench]
    recorded = score(eval_dir, folder)
    assert recorded["benchmark"] == key and isinstance(recorded["score"], (int, float))
    assert "Average number of visual tokens" in result.stdout
    assert (eval_dir / folder / ANSWERS).is_file()


def test_vqav2_submission_covers_the_full_test_set(env):
    eval_dir, environ = env
    result = run_script("vqav2", environ, TOKENS)
    assert result.returncode == 0, result.stderr[-3000:]
    upload = json.loads((eval_dir / "vqav2/answers_upload/llava-v1.5-tiny/fastervlm/n_58.json").read_text())
    full = [json.loads(l)["question_id"] for l in (eval_dir / "vqav2/llava_vqav2_mscoco_test2015.jsonl").read_text().splitlines()]
    assert [u["question_id"] for u in upload] == full
    assert upload[-1]["answer"] == "" and all(set(u) == {"question_id", "answer"} for u in upload)


def test_vizwiz_submission_format(env):
    eval_dir, environ = env
    result = run_script("vizwiz", environ, TOKENS)
    assert result.returncode == 0, result.stderr[-3000:]
    upload = json.loads((eval_dir / "vizwiz/answers_upload/llava-v1.5-tiny/fastervlm/n_58.json").read_text())
    assert [u["image"] for u in upload] == [f"VizWiz_test_{i:08d}.jpg" for i in range(3)]
    assert all(set(u) == {"image", "answer"} for u in upload)


def test_mmvet_submission_format(env):
    eval_dir, environ = env
    result = run_script("mmvet", environ, TOKENS)
    assert result.returncode == 0, result.stderr[-3000:]
    upload = json.loads((eval_dir / "mm-vet/results/llava-v1.5-tiny/fastervlm/n_58.json").read_text())
    assert sorted(upload) == ["v1_0", "v1_1", "v1_2"] and all(isinstance(v, str) for v in upload.values())


def test_rerun_resumes_without_duplicates(env):
    eval_dir, environ = env
    first = run_script("pope", environ, TOKENS)
    again = run_script("pope", environ, TOKENS)
    assert first.returncode == again.returncode == 0
    assert "all 9 questions of this chunk are answered" in again.stdout
    lines = (eval_dir / "pope" / ANSWERS).read_text().splitlines()
    assert len(lines) == len({(json.loads(l)["question_id"]) for l in lines}) == 9


def test_bad_arguments_fail_fast(env):
    _, environ = env
    usage = run_script("textvqa", environ)
    assert usage.returncode == 2 and "usage: bash" in usage.stderr
    too_many = run_script("textvqa", environ, "999")
    assert too_many.returncode != 0 and "exceeds the 576 patches" in too_many.stderr


def test_llava_next_script_with_the_paper_protocol(tiny_ckpt, tmp_path):
    """scripts/v1_6 on a tiny LLaVA-NeXT checkpoint: 5 crops of the fixed 2×2 grid, 58 tokens each."""
    from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

    make_tiny_checkpoint(tmp_path / "checkpoints" / "llava-v1.6-tiny", arch="next")
    eval_dir = make_sample_data(tmp_path / "eval", questions=2)
    environ = {**os.environ, "CKPT": "llava-v1.6-tiny", "CKPT_DIR": str(tmp_path / "checkpoints"), "EVAL_DIR": str(eval_dir),
               "PYTHON": sys.executable, "EXTRA_ARGS": "--device cpu --max_new_tokens 4", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(ROOT / "scripts/v1_6/eval/pope.sh"), "58"], env=environ, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Average number of visual tokens: 290.00" in result.stdout
    recorded = json.loads((eval_dir / "pope/scores/llava-v1.6-tiny/fastervlm/n_58.json").read_text())
    assert recorded["benchmark"] == "pope"


@pytest.mark.parametrize("method", [pytest.param("fastv", marks=requires_in_llm), "random"])
def test_method_argument_selects_the_pruning_method(env, method):
    eval_dir, environ = env
    if method == "fastv":  # the tiny LLM has 2 layers, so FastV prunes after layer 1
        environ = {**environ, "EXTRA_ARGS": environ["EXTRA_ARGS"] + " --fastv-k 1"}
    result = run_script("pope", environ, TOKENS, method)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = eval_dir / "pope/answers/llava-v1.5-tiny" / method / f"n_{TOKENS}/merge.jsonl"
    assert len(answers.read_text().splitlines()) == 9
    assert json.loads((eval_dir / "pope/scores/llava-v1.5-tiny" / method / f"n_{TOKENS}.json").read_text())["benchmark"] == "pope"


# ------------------------------------------------------------------ several machines, reruns under other settings

def fresh_env(tiny_ckpt, tmp_path, questions: int = 5) -> tuple[Path, dict]:
    ckpt_dir = tmp_path / "checkpoints"
    shutil.copytree(tiny_ckpt, ckpt_dir / "llava-v1.5-tiny")
    eval_dir = make_sample_data(tmp_path / "eval", questions=questions)
    return eval_dir, {**os.environ, "CKPT": "llava-v1.5-tiny", "CKPT_DIR": str(ckpt_dir), "EVAL_DIR": str(eval_dir),
                      "PYTHON": sys.executable, "EXTRA_ARGS": "--device cpu --max_new_tokens 4", "CUDA_VISIBLE_DEVICES": ""}


def merged_texts(eval_dir: Path, param: str = "n_58") -> list[tuple]:
    path = eval_dir / "textvqa/answers/llava-v1.5-tiny/fastervlm" / param / "merge.jsonl"
    return [(l["question_id"], l["text"]) for l in map(json.loads, path.read_text().splitlines())]


def test_two_nodes_then_one_merge_equal_a_single_machine_run(tiny_ckpt, tmp_path):
    """NUM_NODES=2: each "node" (a separate process) answers its own chunk, a third run merges and scores."""
    eval_dir, environ = fresh_env(tiny_ckpt, tmp_path)
    single = run_script("textvqa", environ, TOKENS)
    assert single.returncode == 0, single.stderr[-3000:]
    expected = merged_texts(eval_dir)
    nodes = {**environ, "NUM_NODES": "2", "RUN_TAG": "nodes"}
    for rank in ("0", "1"):
        result = run_script("textvqa", {**nodes, "NODE_RANK": rank}, TOKENS)  # STAGE defaults to infer on 2 nodes
        assert result.returncode == 0 and "rerun with STAGE=merge" in result.stdout, result.stderr[-3000:]
    answers = eval_dir / "textvqa/answers/llava-v1.5-tiny/fastervlm/n_58-nodes"
    assert sorted(p.name for p in answers.glob("*.jsonl")) == ["2_0.jsonl", "2_1.jsonl"]
    assert not (eval_dir / "textvqa/scores/llava-v1.5-tiny/fastervlm/n_58-nodes.json").exists()
    result = run_script("textvqa", {**nodes, "STAGE": "merge"}, TOKENS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert merged_texts(eval_dir, "n_58-nodes") == expected
    recorded = json.loads((eval_dir / "textvqa/scores/llava-v1.5-tiny/fastervlm/n_58-nodes.json").read_text())
    assert recorded["manifest"]["chunk"]["merged_from"][1].endswith("2_1.jsonl")
    early = run_script("textvqa", {**nodes, "STAGE": "merge", "NUM_NODES": "3"}, TOKENS)
    assert early.returncode != 0 and "3_0.jsonl" in early.stderr  # nothing answered for 3 nodes: no merge


FAKE_SBATCH = """#!/usr/bin/env bash
# sbatch stand-in: runs the job (each array index in turn) at once, with the --export variables set.
array= exports=ALL args=()
while (( $# )); do
    case $1 in
        --array=*) array=${1#--array=} ;; --export=*) exports=${1#--export=} ;; --parsable|--gres=*|--dependency=*) ;;
        *) args+=("$1") ;;
    esac
    shift
done
echo "sbatch $array $exports ${args[*]}" >> "$SBATCH_LOG"
IFS=, read -ra pairs <<< "${exports#ALL,}"
if [[ -z $array ]]; then
    env "${pairs[@]}" SLURM_SUBMIT_DIR="$PWD" bash "${args[@]}" >> "$SBATCH_LOG" 2>&1 || exit 1
else
    for (( i = ${array%-*}; i <= ${array#*-}; i++ )); do
        env "${pairs[@]}" SLURM_ARRAY_TASK_ID=$i SLURM_SUBMIT_DIR="$PWD" bash "${args[@]}" >> "$SBATCH_LOG" 2>&1 || exit 1
    done
fi
echo "4242"
"""


def test_slurm_submission_runs_an_array_then_a_merge(tiny_ckpt, tmp_path):
    eval_dir, environ = fresh_env(tiny_ckpt, tmp_path, questions=3)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    log = tmp_path / "sbatch.log"
    environ = {**environ, "PATH": f"{bin_dir}:{environ['PATH']}", "SBATCH_LOG": str(log), "CHUNKS": "3"}
    result = subprocess.run(["bash", "scripts/slurm/submit_eval.sh", "scripts/v1_5/eval/textvqa.sh", TOKENS],
                            env=environ, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:] + log.read_text()[-3000:]
    calls = [line for line in log.read_text().splitlines() if line.startswith("sbatch ")]
    assert calls[0].startswith("sbatch 0-2 ALL,NUM_NODES=3,GPUS_PER_NODE=1,STAGE=infer")
    assert calls[1].startswith("sbatch  ALL,NUM_NODES=3,GPUS_PER_NODE=1,STAGE=merge")
    assert len(merged_texts(eval_dir)) == 3
    recorded = json.loads((eval_dir / "textvqa/scores/llava-v1.5-tiny/fastervlm/n_58.json").read_text())
    assert len(recorded["manifest"]["chunk"]["merged_from"]) == 3


def test_rerun_with_other_extra_args_never_reuses_answers(tiny_ckpt, tmp_path):
    eval_dir, environ = fresh_env(tiny_ckpt, tmp_path, questions=2)
    assert run_script("textvqa", environ, TOKENS).returncode == 0
    before = merged_texts(eval_dir)
    changed = run_script("textvqa", {**environ, "EXTRA_ARGS": environ["EXTRA_ARGS"] + " --temperature 0.7"}, TOKENS)
    assert changed.returncode != 0 and "decoding.temperature: 0.0 -> 0.7" in changed.stderr
    assert "Traceback" not in changed.stderr and merged_texts(eval_dir) == before
    tagged = run_script("textvqa", {**environ, "RUN_TAG": "t07",
                                    "EXTRA_ARGS": environ["EXTRA_ARGS"] + " --temperature 0.7"}, TOKENS)
    assert tagged.returncode == 0, tagged.stderr[-3000:]
    assert (eval_dir / "textvqa/scores/llava-v1.5-tiny/fastervlm/n_58-t07.json").is_file()


# ------------------------------------------------------------------ devices, signals, arguments (stand-in processes)

FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stand-in interpreter: records each process's CUDA_VISIBLE_DEVICES and arguments; inference shards can be made slow.
# One write per record: shards run concurrently, and several small writes of two shards interleave in the log.
record="CVD=${CUDA_VISIBLE_DEVICES-unset}$(printf ' %q' "$@")"
printf '%s\n' "$record" >> "$FAKE_LOG"
if [[ -n ${FAKE_SLEEP:-} && $2 != llava.eval.merge_chunks && $2 != llava.eval.eval_* ]]; then
    trap 'echo "TERM $$" >> "$FAKE_LOG"; kill "$child" 2> /dev/null; exit 143' TERM
    sleep "$FAKE_SLEEP" & child=$!
    echo "started $$" >> "$FAKE_LOG"
    wait "$child"
    echo "finished $$" >> "$FAKE_LOG"
fi
"""

FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
[[ $1 == -L ]] || exit 9
for (( i = 0; i < ${FAKE_GPUS:-0}; i++ )); do
    echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-0000000$i)"
    echo "  MIG 1g.10gb     Device  0: (UUID: MIG-0000000$i)"
done
"""


@pytest.fixture
def stand_ins(tmp_path):
    """A stand-in $PYTHON and `nvidia-smi` on PATH; returns (environment, log path, eval dir with odd characters)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("python", FAKE_PYTHON), ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    eval_dir = tmp_path / "eval dir 'quoted' \"x\""
    log = tmp_path / "calls.log"
    environ = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    environ.update(PATH=f"{bin_dir}:/usr/bin:/bin", PYTHON=str(bin_dir / "python"), FAKE_LOG=str(log),
                   EVAL_DIR=str(eval_dir), CKPT_DIR=str(tmp_path / "ckpts"))
    return environ, log, eval_dir


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.is_file() else []


def shards(log: Path) -> list[str]:
    return [c for c in calls(log) if "model_vqa_loader" in c]


def test_unset_cuda_visible_devices_uses_every_listed_gpu(stand_ins):
    environ, log, eval_dir = stand_ins
    result = run_script("textvqa", {**environ, "FAKE_GPUS": "2"}, "058")
    assert result.returncode == 0, result.stderr
    started = shards(log)
    assert sorted(c.split()[0] for c in started) == ["CVD=0", "CVD=1"]
    assert all("--num-chunks 2" in c for c in started) and "running on the CPU" not in result.stderr
    # The budget is canonical: 058 is 58, in the flag and in the folder summarize reads.
    assert all("--visual-token-num 58" in c for c in started)
    merge = next(c for c in calls(log) if "merge_chunks" in c)
    assert "/n_58/2_0.jsonl" in merge and "/n_58/2_1.jsonl" in merge


@pytest.mark.parametrize("gpus, visible, reason", [
    ("0", None, "nvidia-smi -L lists no GPU"),
    (None, None, "nvidia-smi is not on PATH"),
    ("2", "", "CUDA_VISIBLE_DEVICES is set but empty"),
])
def test_no_gpu_says_once_that_the_run_is_on_the_cpu(stand_ins, tmp_path, gpus, visible, reason):
    environ, log, _ = stand_ins
    if gpus is None:
        (tmp_path / "bin" / "nvidia-smi").unlink()
    else:
        environ["FAKE_GPUS"] = gpus
    if visible is not None:
        environ["CUDA_VISIBLE_DEVICES"] = visible
    result = run_script("textvqa", environ, "58")
    assert result.returncode == 0, result.stderr
    assert [c.split()[0] for c in shards(log)] == ["CVD="]
    cpu_lines = [l for l in result.stderr.splitlines() if "running on the CPU" in l]
    assert len(cpu_lines) == 1 and reason in cpu_lines[0]


def test_more_shards_per_node_than_gpus_is_an_error(stand_ins):
    environ, log, _ = stand_ins
    result = run_script("textvqa", {**environ, "FAKE_GPUS": "2", "GPUS_PER_NODE": "3"}, "58")
    assert result.returncode == 2 and "GPUS_PER_NODE=3" in result.stderr and "2 GPU(s)" in result.stderr
    assert shards(log) == []
    explicit = run_script("textvqa", {**environ, "CUDA_VISIBLE_DEVICES": "4,6"}, "58")
    assert explicit.returncode == 0 and sorted(c.split()[0] for c in shards(log)) == ["CVD=4", "CVD=6"]


@pytest.mark.parametrize("extra", ["--visual-token-num 576", "--device cpu --pruning-method=random",
                                   "--answers-file x.jsonl", "--num-chunks 3"])
def test_extra_args_that_contradict_the_script_are_refused(stand_ins, extra):
    environ, log, _ = stand_ins
    result = run_script("textvqa", {**environ, "EXTRA_ARGS": extra}, "58")
    assert result.returncode == 2 and result.stderr.startswith("error: EXTRA_ARGS sets --")
    assert calls(log) == []


@pytest.mark.parametrize("tokens", ["5x", "-1", "", "1e3"])
def test_budgets_that_are_not_numbers_are_refused(stand_ins, tokens):
    environ, log, _ = stand_ins
    result = run_script("textvqa", environ, tokens)
    assert result.returncode == 2 and "usage: bash" in result.stderr and calls(log) == []


def test_extra_args_pass_through_word_by_word_and_odd_paths_survive(stand_ins):
    environ, log, eval_dir = stand_ins
    environ = {**environ, "EXTRA_ARGS": " --import  my_method --batch-size 2 *", "RUN_TAG": "a b'c",
               "CUDA_VISIBLE_DEVICES": ""}
    result = run_script("textvqa", environ, "58", "my-method")
    assert result.returncode == 0, result.stderr
    shard, = shards(log)
    assert shard.endswith(r"--import my_method --batch-size 2 \*")  # split on blanks, never globbed
    folder = str(eval_dir / "textvqa/answers/llava-v1.5-7b/my-method/n_58-a b'c")
    merge = next(c for c in calls(log) if "merge_chunks" in c)
    assert subprocess.run(["bash", "-c", f"printf '%s\\n' {merge.split(' ', 1)[1]}"], capture_output=True,
                          text=True).stdout.splitlines()[-1] == f"{folder}/1_0.jsonl"


def test_sigterm_and_sigint_reach_every_shard_and_the_script_waits(stand_ins):
    import signal
    import time

    environ, log, _ = stand_ins
    for sig, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        log.unlink(missing_ok=True)
        proc = subprocess.Popen(["bash", str(ROOT / "scripts/v1_5/eval/textvqa.sh"), "58"], cwd=ROOT,
                                env={**environ, "FAKE_GPUS": "2", "FAKE_SLEEP": "60"}, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while sum(c.startswith("started") for c in calls(log)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == status, err
        assert sum(c.startswith("TERM") for c in calls(log)) == 2  # both shards were told
        assert not any(c.startswith("finished") for c in calls(log)) and "merge_chunks" not in log.read_text()
        assert "stopping 2 shard(s)" in err
