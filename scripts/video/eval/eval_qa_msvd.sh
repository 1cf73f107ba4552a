#!/usr/bin/env bash
# usage: bash scripts/video/eval/eval_qa_msvd.sh TOKENS [METHOD]   (judges run_qa_msvd.sh's answers; see _video_qa.sh)
source "$(dirname "$0")/_video_qa.sh"
eval_video_qa msvd "$@"
