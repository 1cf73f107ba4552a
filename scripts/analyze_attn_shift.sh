#!/usr/bin/env bash
# usage: bash scripts/analyze_attn_shift.sh [FLAGS...]   (environment and flags: scripts/_analysis.sh)
source "$(dirname "$0")/_analysis.sh"
run_analysis shift "$@"
