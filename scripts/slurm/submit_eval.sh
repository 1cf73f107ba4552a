#!/usr/bin/env bash
# Spread one benchmark over a SLURM cluster: a job array of CHUNKS one-GPU tasks, each answering one chunk of the
# questions, then one CPU job that merges the chunks and scores once every task has succeeded (afterok).
#
#   CHUNKS=16 bash scripts/slurm/submit_eval.sh scripts/v1_5/eval/textvqa.sh 58 [METHOD]
#
# Environment: CHUNKS (default 8), SBATCH_ARGS (extra sbatch options, e.g. "--partition=gpu --account=me"), and
# everything scripts/_common.sh reads (CKPT, EVAL_DIR, EXTRA_ARGS, ...), which the jobs inherit. The jobs must see
# the same EVAL_DIR and checkpoint paths (a shared file system). A failed task leaves its finished answers: rerun
# this command and every chunk resumes where it stopped.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: CHUNKS=N bash $0 scripts/<family>/eval/<bench>.sh TOKENS [METHOD]" >&2
    exit 2
fi
chunks=${CHUNKS:-8}
[[ $chunks =~ ^[1-9][0-9]*$ ]] || { echo "CHUNKS=$chunks must be a positive integer" >&2; exit 2; }
task="$(dirname "$0")/eval_task.sbatch"
split="NUM_NODES=$chunks,GPUS_PER_NODE=1"
# shellcheck disable=SC2086
array=$(sbatch --parsable ${SBATCH_ARGS:-} --array=0-$((chunks - 1)) --gres=gpu:1 \
    --export=ALL,$split,STAGE=infer "$task" "$@")
# shellcheck disable=SC2086
merge=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency=afterok:"${array%%;*}" \
    --export=ALL,$split,STAGE=merge "$task" "$@")
echo "submitted job array ${array%%;*} ($chunks chunks) and merge job ${merge%%;*}"
