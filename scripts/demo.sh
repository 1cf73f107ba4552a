#!/usr/bin/env bash
# The README's first command: the toy world's leaderboard (llava/tools/toy_demo.py, docs/toy-world.md). A tiny
# LLaVA-1.5 trained on synthetic scenes (shipped in llava/toy/llava-v1.5-toy-v3; trained once into checkpoints/ if
# the package lacks it) answers 510 held-out TextVQA-, POPE- and ScienceQA-format questions about 4–7 coloured
# shapes of three colours (which colour covers the most of the picture: a method must keep enough of about 150
# coloured patches), keeping 576, 58, 29 and 14 visual tokens with the registered ones of fastervlm, vispruner,
# divprune and random. Prints the accuracy table (with the average visual tokens and the measured prefill
# speed-up) and writes playground/demo/results.json and accuracy.png. Extra arguments go to the demo:
# `bash scripts/demo.sh --zoo` for every registered method, `--world v2` or `--world v1` for the earlier worlds,
# `--import my_method --methods my-method fastervlm` for your own.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
# One torch thread unless the arguments say otherwise (a later --threads wins): on a shared 2-core machine the
# default board (then on v2) took 113 s with one thread and over 7 minutes (8 of 13 cells) with torch's default two.
"$PYTHON" -m llava.tools.toy_demo --threads 1 "$@"
