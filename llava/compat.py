"""The few transformers names that differ across the supported releases, read from the public signatures.

transformers 5.24 renamed the KV cache argument and output field from ``past_key_values`` to ``cache`` (the old
name lives on only as a deprecated alias that warns, and ``generate`` now passes ``cache=``). Code that names
the argument itself (our forward, the in-LLM pruning loop) asks here which name the installed release takes,
instead of testing version numbers.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import platform
import sys

import torch
import transformers
from packaging import version
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaModel

TRANSFORMERS_VERSION = version.parse(transformers.__version__)
TORCH_VERSION = version.parse(torch.__version__)

# The newest releases the whole suite passed on (pyproject.toml sets floors only). torch 2.15.0 + transformers
# 5.25.0: the full suite, 2026-12-06 (789 passed); .ci/run's README lane takes torch 2.14.1 + the newest
# transformers. Raise these after the suite passes on a newer release.
NEWEST_TESTED_TORCH = "2.15.0"
NEWEST_TESTED_TRANSFORMERS = "5.25.0"
# How a top-k of patches breaks ties (llava.pruning.base.topk_indices), for run manifests.
TOPK_TIE_RULE = "equal scores keep the lower patch index (stable descending sort)"


@dataclasses.dataclass(frozen=True)
class StackFacts:
    """The installed stack, as a run manifest records it. ``beyond_tested``: the packages newer than the newest
    release CI passed on (empty when all are within)."""

    python: str
    torch: str
    transformers: str
    newest_tested_torch: str
    newest_tested_transformers: str
    beyond_tested: tuple[str, ...]
    topk_tie_rule: str


def _beyond(installed: version.Version, tested: str) -> bool:
    # Compare releases only: 2.15.0+cu130 is 2.15.0, a 2.16 nightly is beyond 2.15.
    return version.parse(installed.base_version) > version.parse(tested)


def stack_facts() -> StackFacts:
    """Python, torch and transformers versions, the newest pair CI passed on, and which installed ones are newer."""
    beyond = tuple(name for name, installed, tested in (("torch", TORCH_VERSION, NEWEST_TESTED_TORCH),
                                                         ("transformers", TRANSFORMERS_VERSION,
                                                          NEWEST_TESTED_TRANSFORMERS))
                   if _beyond(installed, tested))
    return StackFacts(platform.python_version(), torch.__version__, transformers.__version__, NEWEST_TESTED_TORCH,
                      NEWEST_TESTED_TRANSFORMERS, beyond, TOPK_TIE_RULE)


BEYOND_TESTED_PREFIX = "note: untested stack:"


@functools.cache
def note_untested_stack() -> StackFacts:
    """Print one line to stderr, once per process, when torch or transformers is newer than CI has passed on."""
    facts = stack_facts()
    if facts.beyond_tested:
        print(f"{BEYOND_TESTED_PREFIX} torch {facts.torch}, transformers {facts.transformers} (newest tested: torch "
              f"{facts.newest_tested_torch}, transformers {facts.newest_tested_transformers})", file=sys.stderr)
    return facts


def _cache_name(fn) -> str:
    """``cache`` or ``past_key_values``: the KV cache parameter of ``fn`` (``inspect`` sees through the
    deprecation wrappers, which keep the wrapped signature)."""
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


# The KV cache keyword of LlamaModel.forward (and LlamaForCausalLM.forward) and of a decoder layer call.
MODEL_CACHE_KWARG = _cache_name(LlamaModel.forward)
LAYER_CACHE_KWARG = _cache_name(LlamaDecoderLayer.forward)
# The cache field of the model output classes.
OUTPUT_CACHE_FIELD = ("cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)}
                      else "past_key_values")


def mask_cache_kwarg() -> str:
    """The KV cache keyword of ``transformers.masking_utils.create_causal_mask``."""
    from transformers.masking_utils import create_causal_mask

    return _cache_name(create_causal_mask)


def pop_cache(past_key_values, kwargs: dict):
    """The KV cache a forward was given, under either name; ``kwargs`` loses its ``cache`` entry."""
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache once, as `cache` or as `past_key_values`")
    return cache if cache is not None else past_key_values


def output_cache(outputs):
    """The KV cache of a model output, whatever the installed release calls the field."""
    return getattr(outputs, OUTPUT_CACHE_FIELD)


def require_transformers(minimum: str, feature: str) -> None:
    """Raise, naming ``feature`` and the exact release it needs, when the installed transformers is older."""
    if TRANSFORMERS_VERSION < version.parse(minimum):
        raise NotImplementedError(f"{feature} needs transformers >= {minimum}; this is transformers "
                                  f"{transformers.__version__} (pip install -U 'transformers>={minimum}')")
