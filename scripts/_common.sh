# Shared by every scripts/*/eval/*.sh: argument parsing, paths, sharded inference and merging.
# A benchmark script sets MODEL_FAMILY (v1_5, v1_6 or video), sources this file, calls
# `fastervlm_init "$@"`, then `run_sharded` and its scorer.
#
# Environment (all optional):
#   CKPT            checkpoint folder name        (default: llava-v1.5-7b / llava-v1.6-vicuna-7b / Video-LLaVA-7B)
#   CKPT_DIR        folder holding the checkpoints (default: ./checkpoints)
#   MODEL_PATH      full checkpoint path           (default: $CKPT_DIR/$CKPT)
#   METHOD          pruning method                 (default: fastervlm; or pass it as the 2nd argument)
#   EVAL_DIR        benchmark data root            (default: ./playground/data/eval)
#   CUDA_VISIBLE_DEVICES  one inference shard per listed GPU. Unset: one shard per GPU that `nvidia-smi -L`
#                   lists. Set but empty, or no GPU listed: one CPU process (the script says so, and why).
#   PYTHON          interpreter                    (default: python)
#   EXTRA_ARGS      extra flags for the inference CLI (e.g. "--batch-size 8", "--device cpu", "--import my_method"),
#                   split on whitespace (no globbing). Flags the script sets itself (--visual-token-num,
#                   --pruning-method, --model-path, --answers-file, --num-chunks, --chunk-idx) are refused there:
#                   the folder must say what ran. Every answers file records its settings
#                   (<answers>.manifest.json): a rerun with other settings into the same folder stops with the list
#                   of differences instead of reusing answers; pass "--overwrite" to redo the run, or set RUN_TAG
#                   to keep it beside the first.
#   RUN_TAG         suffix of the answers/score folder, e.g. RUN_TAG=bs8 -> n_58-bs8 (default: none; no "/")
#   NUM_NODES, NODE_RANK, GPUS_PER_NODE, STAGE  several machines: see run_sharded below
#   ALLOW_PARTIAL   1: merge and score even if some questions have no answer (e.g. unreadable images skipped
#                   with --skip-missing-images); every score is then marked partial (default: 0, an error)
set -euo pipefail

# Flags run_sharded and the benchmark functions set; EXTRA_ARGS may not set them again.
SCRIPT_FLAGS=(--visual-token-num --pruning-method --model-path --answers-file --num-chunks --chunk-idx)

fastervlm_init() {
    if [[ $# -lt 1 || ! "$1" =~ ^[0-9]{1,6}$ ]]; then
        echo "usage: bash $0 TOKENS [METHOD]   (TOKENS: visual tokens kept per image, e.g. 576 432 288 144 58 29 0)" >&2
        exit 2
    fi
    TOKENS=$((10#$1))  # canonical: "058" is 58, so the folder is n_58, where summarize looks
    METHOD=${2:-${METHOD:-fastervlm}}
    if [[ ! $METHOD =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]]; then
        echo "error: METHOD '$METHOD': expected a pruning method name (letters, digits, '_', '-', '.')" >&2
        exit 2
    fi
    if [[ ${RUN_TAG:-} == */* ]]; then
        echo "error: RUN_TAG '$RUN_TAG' must not contain '/'" >&2
        exit 2
    fi
    EXTRA=()
    read -r -d '' -a EXTRA <<< "${EXTRA_ARGS:-}" || true  # every blank (newlines too) separates words; no globbing
    local word flag
    for word in ${EXTRA[@]+"${EXTRA[@]}"}; do
        for flag in "${SCRIPT_FLAGS[@]}"; do
            if [[ $word == "$flag" || $word == "$flag="* ]]; then
                echo "error: EXTRA_ARGS sets $flag, which this script sets itself (TOKENS=$TOKENS, METHOD=$METHOD," \
                     "one answers file per shard); pass the budget and method as the script's arguments" >&2
                exit 2
            fi
        done
    done
    case "${MODEL_FAMILY:?MODEL_FAMILY must be set by the calling script}" in
        v1_5) CKPT=${CKPT:-llava-v1.5-7b} ;;
        v1_6) CKPT=${CKPT:-llava-v1.6-vicuna-7b} ;;
        video) CKPT=${CKPT:-Video-LLaVA-7B} ;;
        *) echo "unknown MODEL_FAMILY $MODEL_FAMILY" >&2; exit 2 ;;
    esac
    CKPT_DIR=${CKPT_DIR:-./checkpoints}
    MODEL_PATH=${MODEL_PATH:-$CKPT_DIR/$CKPT}
    EVAL_DIR=${EVAL_DIR:-./playground/data/eval}
    PYTHON=${PYTHON:-python}
    PARAM=n_${TOKENS}${RUN_TAG:+-$RUN_TAG}
    PARTIAL=()
    [[ ${ALLOW_PARTIAL:-0} == 1 ]] && PARTIAL=(--allow-partial)
    export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
}

# Folder for one run's answers: $EVAL_DIR/<bench>/answers/<ckpt>/<method>/n_<tokens>
answers_dir() { echo "$EVAL_DIR/$1/answers/$CKPT/$METHOD/$PARAM"; }

# Score file read by `python -m llava.eval.summarize`.
score_file() { echo "$EVAL_DIR/$1/scores/$CKPT/$METHOD/$PARAM.json"; }

# score MODULE [ARGS...]: run a scorer or converter, passing --allow-partial when ALLOW_PARTIAL=1.
score() {
    local module=$1
    shift
    "$PYTHON" -m "$module" "$@" ${PARTIAL[@]+"${PARTIAL[@]}"}
}

# run_sharded OUT_DIR MODULE [ARGS...]
# One process per GPU in CUDA_VISIBLE_DEVICES (one CPU process without GPUs), each answering a contiguous chunk
# of the questions into OUT_DIR/<chunks>_<idx>.jsonl (appending and resuming), then OUT_DIR/merge.jsonl in chunk
# order. Over several machines (NUM_NODES > 1) the chunks are numbered across all nodes, node NODE_RANK answers
# its own GPUS_PER_NODE of them (STAGE=infer), and one later run with STAGE=merge merges them and scores;
# scripts/slurm/submit_eval.sh does both with a SLURM job array (scripts/slurm/eval_task.sbatch).
# SIGTERM or SIGINT (timeout, a scheduler, Ctrl-C) is passed on to every shard, and the script waits for them:
# no shard keeps writing after the script has ended, and a rerun resumes.
run_sharded() {
    local out_dir=$1 module=$2
    shift 2
    local gpus=()
    visible_gpus
    local local_chunks=${GPUS_PER_NODE:-${#gpus[@]}}
    (( local_chunks > 0 )) || local_chunks=1
    if (( ${#gpus[@]} > 0 && local_chunks > ${#gpus[@]} )); then
        echo "error: GPUS_PER_NODE=$local_chunks, but only ${#gpus[@]} GPU(s) are visible (${gpus[*]}): one shard per GPU" >&2
        exit 2
    fi
    local nodes=${NUM_NODES:-1} rank=${NODE_RANK:-0}
    local stage=${STAGE:-$( (( nodes > 1 )) && echo infer || echo all)}
    if [[ ! $nodes =~ ^[1-9][0-9]*$ || ! $rank =~ ^[0-9]+$ ]] || (( rank >= nodes )); then
        echo "NODE_RANK=$rank must lie in [0, NUM_NODES=$nodes)" >&2
        exit 2
    fi
    case $stage in all|infer|merge) ;; *) echo "STAGE=$stage: expected all, infer or merge" >&2; exit 2 ;; esac
    local chunks=$(( nodes * local_chunks ))
    mkdir -p "$out_dir"
    if [[ $stage != merge ]]; then
        SHARD_PIDS=()
        trap 'stop_shards TERM 143' TERM
        trap 'stop_shards INT 130' INT
        local j
        for (( j = 0; j < local_chunks; j++ )); do
            local idx=$(( rank * local_chunks + j ))
            CUDA_VISIBLE_DEVICES=${gpus[$j]:-} "$PYTHON" -m "$module" "$@" \
                --model-path "$MODEL_PATH" --pruning-method "$METHOD" \
                --answers-file "$out_dir/${chunks}_${idx}.jsonl" --num-chunks "$chunks" --chunk-idx "$idx" \
                ${EXTRA[@]+"${EXTRA[@]}"} &
            SHARD_PIDS+=($!)
        done
        local failed=0 pid
        for pid in "${SHARD_PIDS[@]}"; do wait "$pid" || failed=1; done
        trap - TERM INT
        if (( failed )); then
            echo "inference failed in at least one shard; finished answers are kept in $out_dir, rerun to resume" >&2
            exit 1
        fi
        if [[ $stage == infer ]]; then
            echo "node $rank of $nodes: chunks answered in $out_dir; once every node has finished, rerun with STAGE=merge"
            exit 0
        fi
    fi
    local parts=() idx
    for (( idx = 0; idx < chunks; idx++ )); do parts+=("$out_dir/${chunks}_${idx}.jsonl"); done
    "$PYTHON" -m llava.eval.merge_chunks --out "$out_dir/merge.jsonl" ${PARTIAL[@]+"${PARTIAL[@]}"} "${parts[@]}"
}

# visible_gpus: fill the caller's `gpus` array with the GPUs the shards go to (one shard each). Unset
# CUDA_VISIBLE_DEVICES: every GPU `nvidia-smi -L` lists (its indices). Without any, say once why the run is on the
# CPU. Every shard gets CUDA_VISIBLE_DEVICES set (empty on the CPU), so none sees another shard's GPU.
visible_gpus() {
    local why
    if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
        IFS=',' read -ra gpus <<< "$CUDA_VISIBLE_DEVICES"
        why="CUDA_VISIBLE_DEVICES is set but empty"
    elif ! command -v nvidia-smi > /dev/null 2>&1; then
        why="CUDA_VISIBLE_DEVICES is unset and nvidia-smi is not on PATH"
    else
        local line n=0
        while IFS= read -r line; do
            if [[ $line == GPU\ * ]]; then gpus+=("$n"); n=$(( n + 1 )); fi
        done < <(nvidia-smi -L 2> /dev/null || true)
        why="CUDA_VISIBLE_DEVICES is unset and nvidia-smi -L lists no GPU"
    fi
    if (( ${#gpus[@]} == 0 )); then
        echo "running on the CPU: $why (set CUDA_VISIBLE_DEVICES=0,1,... to choose GPUs)" >&2
    fi
}

# stop_shards SIGNAL STATUS: pass SIGNAL on to every running shard, wait for them, exit with STATUS.
stop_shards() {
    trap - TERM INT
    echo "received SIG$1: stopping ${#SHARD_PIDS[@]} shard(s); finished answers are kept, rerun to resume" >&2
    # Background jobs of a non-interactive shell ignore SIGINT, so every shard gets SIGTERM.
    kill -TERM "${SHARD_PIDS[@]}" 2> /dev/null || true
    local pid
    for pid in "${SHARD_PIDS[@]}"; do wait "$pid" 2> /dev/null || true; done
    exit "$2"
}
