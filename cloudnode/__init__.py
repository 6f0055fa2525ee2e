"""continuum cloud node: hosts resident active objects (``continuum-node``)."""

from ._node import Node, load_classes

__all__ = ["Node", "load_classes"]
