#!/usr/bin/env bash
# usage: bash scripts/video/eval/run_qa_tgif.sh TOKENS [METHOD]   (TOKENS: patches kept per frame; see _video_qa.sh)
source "$(dirname "$0")/_video_qa.sh"
run_video_qa tgif "$@"
