#!/usr/bin/env bash
# usage: bash scripts/analyze_attn_dispersion.sh [FLAGS...]   (environment and flags: scripts/_analysis.sh)
source "$(dirname "$0")/_analysis.sh"
run_analysis dispersion "$@"
