#!/usr/bin/env bash
# usage: bash scripts/v1_6/eval/mmbench_cn.sh TOKENS [METHOD]   (see scripts/_common.sh for the environment)
MODEL_FAMILY=v1_6
source "$(dirname "$0")/../../_benchmarks.sh"
fastervlm_init "$@"
bench_mmbench_cn
