"""``Series``: a device's rows ``[cpu, mem]`` and their timestamps, compact and
bounded (a retention window of rows and/or age).

One float64 array of ``(capacity, 3)``: cpu, mem and the timestamp as seconds
(NaN: none), i.e. 24 bytes a row (2,000 rows: 47 KiB), against about 160 bytes
a row as Python lists of floats and strings. Rows are written in place after
the last one; rows leaving the window only move the start. A single appended
row grows the array by a sixty-fourth when it is full (amortised O(1) per
sample; a 2,000-row series grows by 1.1 KiB, copying 47 KiB once per 47
samples: once in four hours at a sample per 5 minutes, where a fleet of idle
objects would rather keep the memory),
a batch (``load_csv``, ``append``) by exactly what it needs; when rows left at
the start, the live rows are moved down instead of allocating.

Timestamps come back exactly as given: the series keeps one *kind* (the kind of
its first timestamp: a float, an int, or a text in one of :data:`TEXT_FORMATS`
that round-trips through it) as seconds, and the rare timestamp of another kind
in a small side map by row number.
"""

from __future__ import annotations

import calendar
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MAX_ROWS", "TEXT_FORMATS", "Series", "Stamps"]

DEFAULT_MAX_ROWS = 10_000
"""Rows a forecaster keeps by default: about 35 days of 5-minute samples, 234 KiB."""

TEXT_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
"""Text timestamps kept as seconds (read as UTC) when they round-trip exactly."""

Stamp = str | float | None


def _encode(stamp: Stamp) -> tuple[str | None, float]:
    """``(kind, seconds)`` of a timestamp: kind ``None`` for no timestamp or one
    that cannot be kept as seconds."""
    if stamp is None:
        return None, math.nan
    if isinstance(stamp, float):
        return "float", stamp
    if isinstance(stamp, int) and abs(stamp) <= 2**53:
        return "int", float(stamp)
    if isinstance(stamp, str):
        return _encode_str(stamp)
    return None, math.nan


@functools.lru_cache(maxsize=4096)
def _encode_str(stamp: str) -> tuple[str | None, float]:
    """:func:`_encode` of a text, remembered: a fleet's forecasters loading the
    same dataset (``load_csv``) parse its 2,000 timestamps once."""
    fast = _encode_text(stamp)
    if fast is not None:
        return fast
    for fmt in TEXT_FORMATS:
        try:
            t = time.strptime(stamp, fmt)
        except ValueError:
            continue
        if time.strftime(fmt, t) == stamp:
            return fmt, float(calendar.timegm(t))
    return None, math.nan


def _encode_text(stamp: str) -> tuple[str, float] | None:
    """:func:`_encode` of ``YYYY-MM-DD HH:MM:SS`` (or with ``T``) without
    ``time.strptime`` (six times faster); None for anything else, which then takes the general path (same
    result either way: the text must round-trip)."""
    if len(stamp) != 19 or stamp[10] not in " T":
        return None
    try:
        y, mo, d = int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10])
        h, mi, s = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
    except ValueError:
        return None
    if y < 1000 or not (1 <= mo <= 12 and h < 24 and mi < 60 and s < 60):
        return None
    if not 1 <= d <= calendar.monthrange(y, mo)[1]:
        return None
    if f"{y:04d}-{mo:02d}-{d:02d}{stamp[10]}{h:02d}:{mi:02d}:{s:02d}" != stamp:
        return None  # signs, spaces: not what strftime writes
    fmt = TEXT_FORMATS[0] if stamp[10] == " " else TEXT_FORMATS[1]
    return fmt, float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))


def _decode(kind: str | None, seconds: float) -> Stamp:
    if kind is None or math.isnan(seconds):
        return None
    if kind == "float":
        return float(seconds)
    if kind == "int":
        return int(seconds)
    return time.strftime(kind, time.gmtime(seconds))


@dataclass
class Stamps:
    """Timestamps of a run of rows, compact: seconds, their kind, odd ones by index."""

    seconds: np.ndarray
    kind: str | None
    odd: dict[int, Stamp]

    def to_list(self) -> list[Stamp]:
        out = [_decode(self.kind, float(s)) for s in self.seconds]
        for i, stamp in self.odd.items():
            out[i] = stamp
        return out

    def __len__(self) -> int:
        return len(self.seconds)


class Series:
    """Rows and timestamps with a retention window: at most ``max_rows`` rows
    (``None``: no limit) and none older than ``max_age`` seconds before the
    newest timestamp (``None``: no limit; rows without a timestamp never age)."""

    def __init__(self, max_rows: int | None = DEFAULT_MAX_ROWS, max_age: float | None = None):
        if max_rows is not None and (
            isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1
        ):
            raise ValueError("max_rows must be a positive int or None")
        if max_age is not None and (
            isinstance(max_age, bool)
            or not isinstance(max_age, int | float)
            or not max_age > 0
            or not math.isfinite(max_age)
        ):
            raise ValueError("max_age must be a positive number of seconds or None")
        self.max_rows = max_rows
        self.max_age = None if max_age is None else float(max_age)
        self._buf = np.empty((0, 3), np.float64)
        self._start = 0
        self._end = 0
        self._kind: str | None = None
        self._odd: dict[int, Stamp] = {}  # absolute row number -> timestamp
        self.total = 0
        """Rows ever added (the absolute number of the next row); never decreases."""

    @classmethod
    def from_lists(
        cls,
        values: Sequence[Sequence[float]],
        stamps: Sequence[Stamp],
        max_rows: int | None = DEFAULT_MAX_ROWS,
        max_age: float | None = None,
    ) -> Series:
        series = cls(max_rows, max_age)
        series.extend(values, stamps)
        return series

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def nbytes(self) -> int:
        """Bytes of the row array (its capacity included)."""
        return int(self._buf.nbytes)

    # -- writing -------------------------------------------------------------------

    def extend(self, values: Sequence[Sequence[float]], stamps: Sequence[Stamp]) -> int:
        """Append rows (already validated) and apply the window; returns the length."""
        k = len(values)
        if k == 0:
            return len(self)
        if len(stamps) != k:
            raise ValueError("one timestamp per row")
        block = np.empty((k, 3), np.float64)
        block[:, :2] = np.asarray(values, dtype=np.float64).reshape(k, 2)
        first_row = self.total
        for i, stamp in enumerate(stamps):
            kind, seconds = _encode(stamp)
            if stamp is not None and self._kind is None and kind is not None:
                self._kind = kind
            if stamp is not None and kind != self._kind:
                self._odd[first_row + i] = stamp
                seconds = math.nan
            block[i, 2] = seconds
        self._reserve(k)
        self._buf[self._end : self._end + k] = block
        self._end += k
        self.total += k
        self._apply_window()
        return len(self)

    def clear(self) -> None:
        """Drop every row (``total`` keeps counting); free the array."""
        self._buf = np.empty((0, 3), np.float64)
        self._start = self._end = 0
        self._kind = None
        self._odd = {}

    def _reserve(self, k: int) -> None:
        n = len(self)
        need = n + k
        cap = len(self._buf)
        if self._end + k <= cap:
            return
        if need <= cap:  # rows left at the start: move the live ones down
            self._buf[:n] = self._buf[self._start : self._end]
        else:
            slack = 0 if k > n // 64 else n // 64 + 16
            if self.max_rows is not None:
                slack = min(slack, max(self.max_rows + 16 - need, 0))
            grown = np.empty((need + slack, 3), np.float64)
            grown[:n] = self._buf[self._start : self._end]
            self._buf = grown
        self._start, self._end = 0, n

    def _apply_window(self) -> None:
        drop = 0
        if self.max_rows is not None:
            drop = max(len(self) - self.max_rows, 0)
        if self.max_age is not None:
            ts = self._buf[self._start + drop : self._end, 2]
            known = ts[~np.isnan(ts)]
            if len(known):
                cutoff = float(known.max()) - self.max_age
                old = ts < cutoff  # NaN compares False: a row without a time stops it
                drop += int(np.argmin(old)) if not old.all() else len(old)
        if drop:
            self._start += drop
            first = self.total - len(self)
            if self._odd:
                self._odd = {i: s for i, s in self._odd.items() if i >= first}
            if len(self) == 0:
                self.clear()

    # -- reading -------------------------------------------------------------------

    def values(self) -> np.ndarray:
        """The rows ``[cpu, mem]``, a contiguous float64 copy of shape ``(n, 2)``."""
        return np.ascontiguousarray(self._buf[self._start : self._end, :2])

    def tail(self, n: int) -> np.ndarray:
        """The last ``n`` rows (a view)."""
        return self._buf[max(self._end - n, self._start) : self._end, :2]

    def stamps(self, first: int = 0) -> Stamps:
        """The timestamps of the rows from ``first`` (0: the oldest kept) on, compact."""
        lo = self._start + max(first, 0)
        base = self.total - len(self) + max(first, 0)
        odd = {i - base: s for i, s in self._odd.items() if i >= base}
        return Stamps(self._buf[lo : self._end, 2].copy(), self._kind, odd)

    def has_stamps(self) -> bool:
        return bool(self._odd) or bool(np.any(~np.isnan(self._buf[self._start : self._end, 2])))

    # -- snapshots -----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_buf"] = self._buf[self._start : self._end].copy()  # no spare capacity
        state["_start"], state["_end"] = 0, len(self)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
