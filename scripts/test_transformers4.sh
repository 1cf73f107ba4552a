#!/usr/bin/env bash
# The LLaVA-1.5 and LLaVA-NeXT tests under the oldest supported transformers line (4.5x), in a throwaway
# virtualenv. Video-LLaVA and the in-LLM pruning methods (FastV, ...) need transformers 5.
# CI runs the suite on transformers 5; run this by hand when touching the model or tokenizer code.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/fastervlm-tf4}
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -c constraints.txt "transformers==${TRANSFORMERS_VERSION:-4.57.*}" -e ".[test]"
"$VENV/bin/python" -m pytest -q tests/test_model_parity.py tests/test_next.py tests/test_preprocessing.py tests/test_clip_encoder.py tests/test_runner.py
