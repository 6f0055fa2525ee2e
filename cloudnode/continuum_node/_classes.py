"""Which classes a node hosts: imported once, at start, from ``--module``."""

from __future__ import annotations

import importlib
import os
import sys

from continuum_mqtt import ActiveObject
from continuum_mqtt.service import class_path

__all__ = ["load_classes"]


def load_classes(modules: list[str], paths: list[str]) -> dict[str, type]:
    """Import ``modules`` (after adding ``paths`` to sys.path) and collect the
    ActiveObject subclasses they define. Only these classes can be created:
    a request never makes the node import anything."""
    for p in reversed(paths):
        p = os.path.abspath(p)
        if p not in sys.path:
            sys.path.insert(0, p)
    found: dict[str, type] = {}
    for name in modules:
        if ":" in name or (name.count(".") and _is_class_path(name)):
            mod_name, _, attr = name.replace(":", ".").rpartition(".")
            cls = getattr(importlib.import_module(mod_name), attr)
            found[class_path(cls)] = cls
            continue
        mod = importlib.import_module(name)
        for value in vars(mod).values():
            if (
                isinstance(value, type)
                and issubclass(value, ActiveObject)
                and value is not ActiveObject
                and value.__module__ == mod.__name__
            ):
                found[class_path(value)] = value
    return found


def _is_class_path(name: str) -> bool:
    return name.rpartition(".")[2][:1].isupper()
