"""Every command-line entry point explains every flag in --help."""
from __future__ import annotations

import argparse
import importlib
import pkgutil

import pytest

import llava


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def cli_modules() -> list[str]:
    """Every module of the package with a ``main(argv)`` entry point."""
    return sorted(info.name for info in pkgutil.walk_packages(llava.__path__, "llava.")
                  if callable(getattr(importlib.import_module(info.name), "main", None)))


@pytest.mark.parametrize("name", cli_modules())
def test_every_flag_has_help(name, monkeypatch):
    def capture(self, args=None, namespace=None):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    module = importlib.import_module(name)
    with pytest.raises(_Parsed) as parsed:
        module.main([])
    undocumented = [a.option_strings or a.dest for a in parsed.value.parser._actions
                    if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not undocumented, f"{name}: flags without help: {undocumented}"
