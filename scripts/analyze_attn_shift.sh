#!/usr/bin/env bash
# usage: bash scripts/analyze_attn_shift.sh [FLAGS...]   (e.g. --limit 100, --strict, --device cpu)
# Attention shift analysis of the FasterVLM paper on the unpruned model: python -m llava.analysis.attn_shift
# (its --help lists the flags). Environment, all optional (names as in scripts/_common.sh):
#   CKPT        checkpoint folder name          (default: llava-v1.5-7b)
#   CKPT_DIR    folder holding the checkpoints  (default: ./checkpoints)
#   MODEL_PATH  full checkpoint path            (default: $CKPT_DIR/$CKPT)
#   QUESTIONS   LLaVA-format data file          (default: ./playground/data/analysis/llava_v1_5_mix1k.jsonl)
#   IMAGES      image folder                    (default: ./playground/data/train)
#   OUTPUT      folder for the plots and JSON   (default: ./playground/data/analysis/attn_shift)
#   PYTHON      interpreter                     (default: python)
set -euo pipefail

CKPT=${CKPT:-llava-v1.5-7b}
CKPT_DIR=${CKPT_DIR:-./checkpoints}
MODEL_PATH=${MODEL_PATH:-$CKPT_DIR/$CKPT}
QUESTIONS=${QUESTIONS:-./playground/data/analysis/llava_v1_5_mix1k.jsonl}
IMAGES=${IMAGES:-./playground/data/train}
OUTPUT=${OUTPUT:-./playground/data/analysis/attn_shift}

"${PYTHON:-python}" -m llava.analysis.attn_shift \
    --model-path "$MODEL_PATH" \
    --question-file "$QUESTIONS" \
    --image-folder "$IMAGES" \
    --output-folder "$OUTPUT" \
    --conv-mode vicuna_v1 \
    "$@"
