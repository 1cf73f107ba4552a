"""Visual token pruning methods behind one option, ``--pruning-method`` (see ``README.md`` beside this file).

Adding a method is one small file: a dataclass subclass of :class:`PruningMethod` (prunes before the LLM) or
:class:`InLLMPruningMethod` (prunes inside it), decorated with :func:`register` and imported at the bottom of
this module. Its dataclass fields are its parameters; fields with a ``flag`` in their metadata become CLI options.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from llava.pruning.base import (InLLMPruningMethod, LLMPruningContext, PruningMethod, TowerOutputs, TowerRequest,
                                select_topk_raster)

_METHODS: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: make ``cls`` available as ``--pruning-method cls.name``."""
    if cls.name in _METHODS:
        raise ValueError(f"pruning method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_METHODS)


def method_parameters(name: str) -> tuple[str, ...]:
    """The parameters method ``name`` takes (its dataclass fields); an unknown name is an error."""
    if name not in _METHODS:
        raise ValueError(f"unknown pruning method {name!r} (available: {', '.join(_METHODS)})")
    return tuple(f.name for f in dataclasses.fields(_METHODS[name]) if f.init)


def get_method(name: str, **params: Any) -> PruningMethod:
    """A new instance of method ``name`` with ``params``; unknown names or parameters are errors."""
    accepted = method_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"pruning method {name!r} has no parameter {', '.join(unknown)} "
                         f"(its parameters: {', '.join(accepted) or 'none'})")
    return _METHODS[name](**params)


def check_installed(method: PruningMethod) -> None:
    """Raise ``NotImplementedError`` naming the transformers release ``method`` needs, if this one is older
    (in-LLM methods need 5.14); call it when the method is chosen, before any weights load."""
    if isinstance(method, InLLMPruningMethod):
        from llava.pruning.llm import check_supported

        check_supported()


@dataclasses.dataclass(frozen=True)
class CLIParameter:
    """A method parameter exposed as a CLI flag (several methods may share one flag)."""

    flag: str
    param: str
    type: type
    help: str
    choices: tuple | None
    defaults: dict[str, Any]  # method name → its default


def cli_parameters() -> list[CLIParameter]:
    """Every flagged parameter of every registered method, one entry per flag."""
    by_flag: dict[str, CLIParameter] = {}
    for name, cls in _METHODS.items():
        for f in dataclasses.fields(cls):
            if "flag" not in f.metadata:
                continue
            flag = f.metadata["flag"]
            if flag not in by_flag:
                by_flag[flag] = CLIParameter(flag, f.name, type(f.default), f.metadata["help"],
                                             f.metadata.get("choices"), {})
            by_flag[flag].defaults[name] = f.default
    return list(by_flag.values())


# The methods register themselves on import, in this order (the CLI's): FasterVLM, the paper's Table 5 ablations
# (a) random, (b) patch attention, (d) [CLS] at LLM layer 2, (e) [CLS] + merging, then FastV and AdaptPrune.
from llava.pruning import fastervlm  # noqa: E402,F401  isort: skip
from llava.pruning import random_patches  # noqa: E402,F401  isort: skip
from llava.pruning import patch_attn  # noqa: E402,F401  isort: skip
from llava.pruning import cls_llm_layer  # noqa: E402,F401  isort: skip
from llava.pruning import cls_merge  # noqa: E402,F401  isort: skip
from llava.pruning import fastv  # noqa: E402,F401  isort: skip
from llava.pruning import adaptprune  # noqa: E402,F401  isort: skip
# The comparison methods of issue 23 (docs/methods.md).
from llava.pruning import vispruner  # noqa: E402,F401  isort: skip
from llava.pruning import visionzip  # noqa: E402,F401  isort: skip
from llava.pruning import divprune  # noqa: E402,F401  isort: skip
from llava.pruning import pdrop  # noqa: E402,F401  isort: skip
from llava.pruning import sparsevlm  # noqa: E402,F401  isort: skip

__all__ = ["InLLMPruningMethod", "LLMPruningContext", "PruningMethod", "TowerOutputs", "TowerRequest",
           "available_methods", "check_installed", "cli_parameters", "get_method", "method_parameters", "register", "select_topk_raster"]
