"""continuum gateway: the object directory (``continuum-gateway``)."""

from ._directory import Directory
from ._gateway import Gateway

__all__ = ["Directory", "Gateway"]
