# Shared by scripts/analyze_attn_{shift,dispersion}.sh: the paper's attention analyses on the unpruned model.
# usage (from a wrapper): run_analysis shift|dispersion [FLAGS...]   (e.g. --limit 100, --strict, --device cpu;
# `python -m llava.analysis.attn_<kind> --help` lists them). Environment, all optional (names as in _common.sh):
#   CKPT        checkpoint folder name          (default: llava-v1.5-7b)
#   CKPT_DIR    folder holding the checkpoints  (default: ./checkpoints)
#   MODEL_PATH  full checkpoint path            (default: $CKPT_DIR/$CKPT)
#   QUESTIONS   LLaVA-format data file          (default: ./playground/data/analysis/llava_v1_5_mix1k.jsonl)
#   IMAGES      image folder                    (default: ./playground/data/train)
#   OUTPUT      folder for the plots and JSON   (default: ./playground/data/analysis/attn_<kind>)
#   PYTHON      interpreter                     (default: python)
set -euo pipefail

run_analysis() {
    local kind=$1
    shift
    local ckpt=${CKPT:-llava-v1.5-7b}
    "${PYTHON:-python}" -m "llava.analysis.attn_$kind" \
        --model-path "${MODEL_PATH:-${CKPT_DIR:-./checkpoints}/$ckpt}" \
        --question-file "${QUESTIONS:-./playground/data/analysis/llava_v1_5_mix1k.jsonl}" \
        --image-folder "${IMAGES:-./playground/data/train}" \
        --output-folder "${OUTPUT:-./playground/data/analysis/attn_$kind}" \
        --conv-mode vicuna_v1 \
        "$@"
}
