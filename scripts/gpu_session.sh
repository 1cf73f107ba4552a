#!/usr/bin/env bash
# One prepared session on a lent GPU machine: at most 8 minutes, nothing downloaded, every result under $OUT.
#
#   bash scripts/gpu_session.sh             # on the GPU machine (the device tool sets $OUT)
#   bash scripts/gpu_session.sh --dry-run   # on a CPU: every step shrunk, CPU only (tests/test_stack.py runs it)
#
# The lent machine (.library/device/KINDS.md): Python 3.12, torch 2.11+cu130, transformers 5.17, no network. It runs
# from the working tree (PYTHONPATH=.). Of the dependencies, only shortuuid is missing from its image: carry it as a
# wheel in .whl/ (`pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl shortuuid`, as the
# device README says) and name .whl in the call's carry; it is installed into /tmp/site here. PyAV, openpyxl and
# openai are absent too: the tests that need them skip.
#
# Steps, in order, each under its own timeout; a failed step is recorded in $OUT/steps.tsv and the next one runs:
#   0 versions   torch / transformers / flash_attn versions and nvidia-smi
#   1 gpu_tests  the gpu-marked tests on CUDA in fp16
#   2 clis       every method x fp16/bf16 x batch 1/4 x SDPA (and FlashAttention 2 where it imports) through the
#                real loader and `python -m llava.eval.model_vqa_loader`'s main, on the tiny checkpoint
#   3 tie_check  CPU fp32 <-> CUDA kept sets and answers on the toy checkpoint; the tie rule against plain CUDA topk
#   4 textvqa    bash scripts/v1_5/eval/textvqa.sh 58 on the toy checkpoint with CUDA_VISIBLE_DEVICES unset
#   5 gpu_check  python -m llava.bench.gpu_check in the time left
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
[[ $# -gt 0 && $DRY == 0 ]] && { echo "error: unknown argument $1 (expected --dry-run)" >&2; exit 2; }
OUT=${OUT:?error: set OUT to the folder for the results}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PY=${PYTHON:-python3}
TOTAL_S=${SESSION_S:-470}  # the whole session, under the 8-minute call
START=$(date +%s)
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [[ $DRY == 1 ]]; then
    DEVICE=cpu DTYPES="bfloat16" BATCHES="1 2" METHODS="fastervlm fastv" QUESTIONS=2
else
    DEVICE=cuda DTYPES="float16 bfloat16" BATCHES="1 4" METHODS="" QUESTIONS=8  # METHODS empty: all registered
fi

printf 'step\trc\tseconds\n' > "$OUT/steps.tsv"
# step NAME SECONDS CMD...: run CMD under a timeout (at most the session's time left), its output in $OUT/NAME.log.
step() {
    local name=$1 limit=$2; shift 2
    local left=$(( TOTAL_S - ($(date +%s) - START) ))
    (( limit > left )) && limit=$left
    if (( limit < 5 )); then printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"; return; fi
    local t0=$(date +%s)
    echo "== $name (limit ${limit} s)"
    timeout --kill-after=5 "$limit" bash -c '"$@"' _ "$@" > "$OUT/$name.log" 2>&1  # functions: exported below
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$OUT/steps.tsv"
    tail -3 "$OUT/$name.log"
}

versions() {
    "$PY" - <<'EOF'
import platform, torch, transformers
from llava.compat import stack_facts
try:
    import flash_attn
    flash = flash_attn.__version__
except Exception as e:  # absence is a result here
    flash = f"not importable ({type(e).__name__})"
print(stack_facts())
print("flash_attn", flash, "| cuda", torch.version.cuda, "| gpus", torch.cuda.device_count(),
      "| tf32 conv", torch.backends.cudnn.allow_tf32)
EOF
    nvidia-smi || echo "nvidia-smi: not available"
}

gpu_tests() {
    if [[ $DRY == 1 ]]; then
        FASTERVLM_TEST_DEVICE=cpu FASTERVLM_TEST_DTYPE=bfloat16 "$PY" -m pytest -q -p no:cacheprovider -m gpu \
            tests/test_model_parity.py --junitxml "$OUT/gpu_tests.xml"
    else
        FASTERVLM_TEST_DEVICE=cuda FASTERVLM_TEST_DTYPE=float16 "$PY" -m pytest -q -p no:cacheprovider -m gpu -n 4 \
            --junitxml "$OUT/gpu_tests.xml"
    fi
}

clis() {
    "$PY" -m llava.tools.make_tiny_checkpoint "$WORK/llava-v1.5-tiny" > /dev/null
    "$PY" -m llava.tools.make_sample_data "$WORK/eval" --questions "$QUESTIONS" > /dev/null
    "$PY" - "$WORK" "$OUT/clis.tsv" "$DEVICE" "$DTYPES" "$BATCHES" "$METHODS" <<'EOF'
import json, sys, time, traceback
from pathlib import Path
from llava.eval import model_vqa_loader
from llava.pruning import available_methods, check_installed, get_method

work, table, device, dtypes, batches, methods = Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]
attentions = ["sdpa"]
try:
    import flash_attn  # noqa: F401
    attentions.append("flash_attention_2")
except ImportError:
    pass
data = work / "eval" / "textvqa"
failed = 0
with table.open("w") as out:
    out.write("method\tdtype\tbatch\tattention\tresult\tseconds\tanswers\n")
    for method in methods.split() or available_methods():
        params = {"fastv": ["--fastv-k", "1"], "adaptprune": ["--adaptprune-k", "1"]}.get(method, [])
        if method == "cls-llm-layer2":  # it prunes before layer 2, and the tiny LLM has 2 layers
            out.write(f"{method}\t-\t-\t-\tnot run: the tiny LLM has 2 layers\t0\t[]\n")
            continue
        try:
            check_installed(get_method(method))
        except NotImplementedError as e:  # an in-LLM method under an older transformers
            out.write(f"{method}\t-\t-\t-\tnot run: {e}\t0\t[]\n")
            continue
        for dtype in dtypes.split():
            for batch in batches.split():
                for attention in attentions:
                    answers = work / f"{method}-{dtype}-{batch}-{attention}.jsonl"
                    t0 = time.time()
                    try:
                        model_vqa_loader.main([
                            "--model-path", str(work / "llava-v1.5-tiny"), "--question-file",
                            str(data / "llava_textvqa_val_v051_ocr.jsonl"), "--image-folder", str(data / "train_images"),
                            "--answers-file", str(answers), "--temperature", "0", "--conv-mode", "vicuna_v1",
                            "--max_new_tokens", "4", "--device", device, "--dtype", dtype, "--batch-size", batch,
                            "--attn-implementation", attention, "--visual-token-num", "29", "--pruning-method", method,
                            *params])
                        texts = [json.loads(l)["text"] for l in answers.read_text().splitlines()]
                        result = "ok"
                    except BaseException as e:  # every cell is a result; the table records the failure
                        failed += 1
                        texts, result = [], f"{type(e).__name__}: {str(e)[:200]}"
                        traceback.print_exc()
                    out.write(f"{method}\t{dtype}\t{batch}\t{attention}\t{result}\t{time.time() - t0:.1f}\t"
                              f"{json.dumps(texts)}\n")
                    out.flush()
sys.exit(1 if failed else 0)
EOF
}

textvqa() {
    "$PY" -c "from llava.tools.toy_world import make_toy_benchmarks; make_toy_benchmarks('$WORK/toy_eval', questions=$(( QUESTIONS * 3 )))"
    local extra="--max_new_tokens 4"
    [[ $DRY == 1 ]] && extra="$extra --device cpu"
    # CUDA_VISIBLE_DEVICES unset, as in the README's example: the script must find the GPU(s) itself.
    env -u CUDA_VISIBLE_DEVICES CKPT_DIR=llava/toy CKPT=llava-v1.5-toy EVAL_DIR="$WORK/toy_eval" PYTHON="$PY" \
        EXTRA_ARGS="$extra" bash scripts/v1_5/eval/textvqa.sh 58
    local rc=$?
    find "$WORK/toy_eval/textvqa" -name '*.json' -path '*scores*' -exec cp {} "$OUT/" \;
    find "$WORK/toy_eval/textvqa" -name '*.manifest.json' -exec cp {} "$OUT/" \;
    return $rc
}

export DRY PY OUT WORK DEVICE DTYPES BATCHES METHODS QUESTIONS
export -f versions gpu_tests clis textvqa
step versions 60 versions
step gpu_tests 150 gpu_tests
step clis 90 clis
if [[ $DRY == 1 ]]; then
    step tie_check 60 "$PY" -m llava.bench.tie_check --device cpu --images 4 --questions 1 --budgets 58 \
        --out "$OUT/tie_check.json"
else
    step tie_check 60 "$PY" -m llava.bench.tie_check --device cuda --out "$OUT/tie_check.json"
fi
step textvqa 60 textvqa
left=$(( TOTAL_S - ($(date +%s) - START) - 20 ))
if [[ $DRY == 1 ]]; then
    step gpu_check 120 "$PY" -m llava.bench.gpu_check --dry-run --out "$OUT/gpu_check" \
        --sections llava-v1.5-7b.kept_sets
else
    step gpu_check "$(( left + 15 ))" "$PY" -m llava.bench.gpu_check --out "$OUT/gpu_check" --budget-s "$left" --repeats 5
fi
rm -rf "$WORK"
cat "$OUT/steps.tsv"
# Exit 1 when a step failed or was skipped, so that a caller sees it; the results of the others are in $OUT.
awk -F'\t' 'NR > 1 && $2 != "0" { bad = 1 } END { exit bad }' "$OUT/steps.tsv"
