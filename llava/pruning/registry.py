"""The pruning-method registry: ``@register``, lookups, and the two ways a method from outside this package arrives.

- **Entry points.** An installed distribution lists modules in the ``fastervlm.pruning`` group; they are imported
  (and register their methods) the first time the registry is queried. In its ``pyproject.toml``::

      [project.entry-points."fastervlm.pruning"]
      my-method = "my_package.my_method"

- **``--import MODULE``** on every inference CLI (:func:`import_modules`): a module on ``sys.path`` (the working
  directory included), imported before ``--pruning-method`` is resolved.

The built-in methods import this module (not the package), so the registry is complete before ``llava.pruning``
finishes importing them (timm's ``_registry`` split).
"""
from __future__ import annotations

import dataclasses
import importlib
from importlib import metadata
from typing import Any, Iterator

from llava.errors import InputError
from llava.pruning.base import InLLMPruningMethod, PruningMethod

ENTRY_POINT_GROUP = "fastervlm.pruning"

_METHODS: dict[str, type[PruningMethod]] = {}
_plugins_loaded = False  # the entry points are imported once, at the first query


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: make ``cls`` available as ``--pruning-method cls.name``."""
    if cls.name in _METHODS:
        raise ValueError(f"pruning method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls
    return cls


def load_plugins() -> None:
    """Import every module of the ``fastervlm.pruning`` entry-point group (once); a broken one is an error naming it."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as e:  # whatever the plugin raises, say which plugin it was
            dist = getattr(entry.dist, "name", "?")
            raise ImportError(f"pruning plugin {entry.name!r} = {entry.value!r} (entry point {ENTRY_POINT_GROUP} of "
                              f"{dist}) failed to load: {type(e).__name__}: {e}") from e


def import_modules(names) -> None:
    """Import the modules ``--import`` names (each may register pruning methods); a missing one is an error."""
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise  # the module exists but imports something missing: its own traceback says what
            raise InputError(f"--import {name}: no module {e.name!r} on the Python path (the working directory "
                             "is on it for `python -m ...`; or set PYTHONPATH)") from None


def _registry() -> dict[str, type[PruningMethod]]:
    load_plugins()
    return _METHODS


def available_methods() -> tuple[str, ...]:
    """Registered method names, in registration order (built-ins first, then plugins and imports)."""
    return tuple(_registry())


class MethodChoices:
    """The registered names as argparse ``choices``, read when a value is checked (after ``--import``), not when the
    parser is built."""

    def __contains__(self, name: object) -> bool:
        return name in _registry()

    def __iter__(self) -> Iterator[str]:
        return iter(available_methods())


def method_parameters(name: str) -> tuple[str, ...]:
    """The parameters method ``name`` takes (its dataclass fields); an unknown name is an error."""
    methods = _registry()
    if name not in methods:
        raise ValueError(f"unknown pruning method {name!r} (available: {', '.join(methods)}; a method of your own "
                         "needs --import MODULE)")
    return tuple(f.name for f in dataclasses.fields(methods[name]) if f.init)


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
        from llava.pruning.llm import check_supported  # llm imports transformers' decoder internals: only when needed

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
    for name, cls in _registry().items():
        for f in dataclasses.fields(cls):
            if "flag" not in f.metadata:
                continue
            flag = f.metadata["flag"]
            if flag not in by_flag:
                by_flag[flag] = CLIParameter(flag, f.name, type(f.default), f.metadata["help"],
                                             f.metadata.get("choices"), {})
            by_flag[flag].defaults[name] = f.default
    return list(by_flag.values())
