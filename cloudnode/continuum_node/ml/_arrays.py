"""Arrays on the wire: a numpy array as a CBOR-friendly map
``{"dtype": "<f8", "shape": [rows, cols], "data": <bytes>}`` (little-endian,
C order). Nothing is pickled: a client that has no numpy builds the map from
``struct.pack`` or ``array.array("d")`` bytes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import BadBlock

__all__ = ["DTYPES", "MAX_ELEMENTS", "pack", "unpack"]

DTYPES = frozenset({"<f8", "<f4", "<i8", "<i4"})
"""The element types accepted from callers."""

MAX_ELEMENTS = 64 << 20
"""The most elements one array may hold (512 MiB of float64): node configuration."""


def pack(arr: np.ndarray) -> dict[str, Any]:
    """``arr`` as its wire map (converted to little-endian, C order)."""
    a = np.ascontiguousarray(arr)
    dtype = a.dtype.newbyteorder("<").str
    if dtype not in DTYPES:
        a = a.astype("<f8")
        dtype = "<f8"
    return {"dtype": dtype, "shape": list(a.shape), "data": a.astype(dtype, copy=False).tobytes()}


def unpack(value: Any, *, ndim: int | None = None, name: str = "array") -> np.ndarray:
    """The array of a wire map (a read-only view of its bytes); ``bad_block``
    when it is not one, or not ``ndim``-dimensional."""
    if not isinstance(value, dict):
        raise BadBlock(f"{name}: expected a map with dtype, shape and data")
    dtype, shape, data = value.get("dtype"), value.get("shape"), value.get("data")
    if dtype not in DTYPES:
        raise BadBlock(f"{name}: dtype must be one of {sorted(DTYPES)}", field=name)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadBlock(f"{name}: data must be bytes", field=name)
    if (
        not isinstance(shape, list)
        or not shape
        or len(shape) > 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise BadBlock(f"{name}: shape must be 1 or 2 sizes >= 0", field=name)
    if ndim is not None and len(shape) != ndim:
        raise BadBlock(f"{name}: expected {ndim} dimension(s), got {len(shape)}", field=name)
    count = 1
    for n in shape:
        count *= n
    if count > MAX_ELEMENTS:
        raise BadBlock(f"{name}: more than {MAX_ELEMENTS} elements", field=name)
    itemsize = np.dtype(dtype).itemsize
    if len(data) != count * itemsize:
        raise BadBlock(f"{name}: {len(data)} bytes for shape {shape} of {dtype}", field=name)
    return np.frombuffer(bytes(data), dtype=dtype).reshape(shape)
