import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging import version

from llava.compat import BEYOND_TESTED_PREFIX, TRANSFORMERS_VERSION
from llava.pruning.llm import IN_LLM_MIN_TRANSFORMERS

# In-LLM pruning (FastV, cls-llm-layer2, AdaptPrune) needs a newer transformers than the rest; below it, its tests
# are skipped and tests/test_pruning.py checks the error that names the release.
IN_LLM_SUPPORTED = TRANSFORMERS_VERSION >= version.parse(IN_LLM_MIN_TRANSFORMERS)
requires_in_llm = pytest.mark.skipif(not IN_LLM_SUPPORTED,
                                     reason=f"in-LLM pruning needs transformers >= {IN_LLM_MIN_TRANSFORMERS}")

# Under pytest-xdist (-n 2 on CI's 2 cores) every worker gets one thread, and so do the CLIs the tests start:
# a worker with torch's default of one thread per core would oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

# Where the suite's models run: FASTERVLM_TEST_DEVICE (cpu, cuda, cuda:N) and FASTERVLM_TEST_DTYPE (the LLM's
# dtype). Tests marked `gpu` take them through the fixtures below and DEVICE_ARGS and compare runs of the same
# arithmetic; `-m gpu` selects them. The other tests compare with CPU fp32 references: run them with the defaults.
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_device_name = os.environ.get("FASTERVLM_TEST_DEVICE", "cpu")
_dtype_name = os.environ.get("FASTERVLM_TEST_DTYPE", "float32")
if _dtype_name not in _DTYPES:
    raise pytest.UsageError(f"FASTERVLM_TEST_DTYPE={_dtype_name!r}: expected one of {', '.join(_DTYPES)}")
try:
    TEST_DEVICE = torch.device(_device_name)
except RuntimeError as e:
    raise pytest.UsageError(f"FASTERVLM_TEST_DEVICE={_device_name!r}: {e}") from None
if TEST_DEVICE.type not in ("cpu", "cuda"):
    raise pytest.UsageError(f"FASTERVLM_TEST_DEVICE={_device_name!r}: expected cpu, cuda or cuda:N")
TEST_DTYPE = _DTYPES[_dtype_name]
# The CLIs' flags for the same placement.
DEVICE_ARGS = ["--device", str(TEST_DEVICE), "--dtype", _dtype_name]

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
def device() -> torch.device:
    """FASTERVLM_TEST_DEVICE (default cpu)."""
    return TEST_DEVICE


@pytest.fixture(scope="session")
def dtype() -> torch.dtype:
    """FASTERVLM_TEST_DTYPE (default float32): the LLM dtype of the suite's models."""
    return TEST_DTYPE


# What tests change on the shared tiny model (budget, method, anyres protocol, padding side...): reset before
# each test so that results do not depend on test order. Filled when the model is first loaded.
_MODEL_ATTRS = ("visual_token_num", "pruning_method", "last_pruning")
_LOADED_STATE: list[tuple] = []


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    """``(tokenizer, model, image_processor, context_len)`` of the tiny checkpoint on the test device and dtype,
    loaded once per session; every test starts from its loaded state (attributes and config)."""
    from llava.model.builder import load_pretrained_model

    loaded = load_pretrained_model(str(tiny_ckpt), None, "llava-v1.5-tiny", device=str(TEST_DEVICE), dtype=TEST_DTYPE)
    model = loaded[1]
    _LOADED_STATE.append((model, {name: getattr(model, name) for name in _MODEL_ATTRS}, dict(vars(model.config))))
    return loaded


def _restore_loaded_state() -> None:
    for model, attrs, config in _LOADED_STATE:
        for name, value in attrs.items():
            setattr(model, name, value)
        for key in set(vars(model.config)) - set(config):
            delattr(model.config, key)
        vars(model.config).update(config)
        model.eval()


@pytest.fixture(autouse=True)
def _reset_tiny_model():
    """Put the shared tiny model back in its loaded state before and after each test: after, so that a
    module-scoped fixture built on it next starts from that state too."""
    _restore_loaded_state()
    yield
    _restore_loaded_state()


def cli_error(module: str, *args: str) -> str:
    """Run ``python -m module args``, which must fail as a user error does: exit 2 and one ``error:`` line, no
    traceback. Returns its stderr."""
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    # A torch/transformers newer than CI has passed on adds its one note line (llava.compat) before the error.
    stderr = "".join(line for line in result.stderr.splitlines(keepends=True)
                     if not line.startswith(BEYOND_TESTED_PREFIX))
    assert stderr.startswith("error: ")
    return stderr
