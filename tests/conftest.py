import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging import version

from llava.compat import TRANSFORMERS_VERSION
from llava.pruning.llm import IN_LLM_MIN_TRANSFORMERS

# In-LLM pruning (FastV, cls-llm-layer2, AdaptPrune) needs a newer transformers than the rest; below it, its tests
# are skipped and tests/test_pruning.py checks the error that names the release.
IN_LLM_SUPPORTED = TRANSFORMERS_VERSION >= version.parse(IN_LLM_MIN_TRANSFORMERS)
requires_in_llm = pytest.mark.skipif(not IN_LLM_SUPPORTED,
                                     reason=f"in-LLM pruning needs transformers >= {IN_LLM_MIN_TRANSFORMERS}")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FASTERVLM_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared/reference-data`` beside the project root; tests using it skip when absent."""
    ref = SHARED / "reference-data"
    if not ref.is_dir():
        pytest.skip(f"reference data not found at {ref}")
    return ref


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny random LLaVA-1.5 checkpoint in the original layout (built once per session)."""
    from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "llava-v1.5-tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    """``(tokenizer, model, image_processor, context_len)`` of the tiny checkpoint on CPU, fp32."""
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_ckpt), None, "llava-v1.5-tiny", device="cpu")


def cli_error(module: str, *args: str) -> str:
    """Run ``python -m module args``, which must fail as a user error does: exit 2 and one ``error:`` line, no
    traceback. Returns its stderr."""
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("error: ")
    return result.stderr
