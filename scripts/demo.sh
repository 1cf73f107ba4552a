#!/usr/bin/env bash
# The README's first command: the toy world (llava/tools/toy_demo.py). A tiny LLaVA-1.5 trained on synthetic
# scenes (shipped in llava/toy/; trained once into checkpoints/llava-v1.5-toy if the package lacks it) answers
# 510 held-out TextVQA-, POPE- and ScienceQA-format questions about one small coloured shape, keeping 576, 144,
# 58 and 29 visual tokens with fastervlm, random, patch-attn and fastv. Prints the accuracy table (with the
# average visual tokens and the measured prefill speed-up) and writes playground/demo/results.json and
# accuracy.png. Extra arguments go to the demo, e.g. `bash scripts/demo.sh --methods fastervlm random`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
"$PYTHON" -m llava.tools.toy_demo "$@"
