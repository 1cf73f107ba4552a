#!/usr/bin/env bash
# The README's first command: build the tiny checkpoint and sample data (once), then run the
# TextVQA pipeline on them: inference keeping 58 of 576 visual tokens (the paper's 90 % reduction), merge, score.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[[ -f checkpoints/llava-v1.5-tiny/config.json ]] || "$PYTHON" -m llava.tools.make_tiny_checkpoint checkpoints/llava-v1.5-tiny
[[ -f playground/data/eval/textvqa/TextVQA_0.5.1_val.json ]] || "$PYTHON" -m llava.tools.make_sample_data playground/data/eval
CKPT=llava-v1.5-tiny PYTHON=$PYTHON EXTRA_ARGS="${EXTRA_ARGS:---device cpu}" bash scripts/v1_5/eval/textvqa.sh "${1:-58}"
