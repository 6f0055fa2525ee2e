"""Checkpoints written by continuum 0.1.0 name its old import packages.

A 0.1.0 node pickled its objects by reference to ``cloudnode.forecast`` and
friends; today those modules are ``continuum_node.forecast``... The finder
below answers an import of an old name with the module of the new name (the
same module object, not a second copy: error classes and class identities stay
one). A real package of an old name installed beside continuum (PyPI has a
``cloudnode``) wins: the finder then stays out of the way, and checkpoints that
need the alias cannot load and are quarantined with the reason.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

from continuum_mqtt.service import LEGACY_MODULES

__all__ = ["install_legacy_names"]


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Already executed under its own name."""


class _LegacyFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        head, dot, rest = fullname.partition(".")
        new = LEGACY_MODULES.get(head)
        if new is None:
            return None
        if not dot:
            real = importlib.machinery.PathFinder.find_spec(head)
            if real is not None and real.origin is not None:  # not a bare folder
                return None
        elif sys.modules.get(head) is not sys.modules.get(new):
            return None  # the old top-level name is some other package
        name = f"{new}{dot}{rest}"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            return None
        return importlib.machinery.ModuleSpec(
            fullname, _Alias(name), is_package=hasattr(module, "__path__")
        )


_FINDER = _LegacyFinder()


def install_legacy_names() -> None:
    """Let pickles of 0.1.0 import names load (idempotent)."""
    if _FINDER not in sys.meta_path:  # first: a submodule of an alias is an alias too
        sys.meta_path.insert(0, _FINDER)
