"""The few transformers names that differ across the supported releases, read from the public signatures.

transformers 5.24 renamed the KV cache argument and output field from ``past_key_values`` to ``cache`` (the old
name lives on only as a deprecated alias that warns, and ``generate`` now passes ``cache=``). Code that names
the argument itself (our forward, the in-LLM pruning loop) asks here which name the installed release takes,
instead of testing version numbers.
"""
from __future__ import annotations

import dataclasses
import inspect

import transformers
from packaging import version
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaModel

TRANSFORMERS_VERSION = version.parse(transformers.__version__)


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
