"""continuum cloud node: hosts resident active objects (``continuum-node``)."""

from ._classes import load_classes
from ._node import Node

__all__ = ["Node", "load_classes"]
