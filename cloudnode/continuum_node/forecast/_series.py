"""``Series``: a device's rows ``[cpu, mem]`` and their timestamps, compact and
bounded (a retention window of rows and/or age).

One float64 array of ``(capacity, 2)``: cpu and mem, i.e. 16 bytes a row
(2,000 rows: 31 KiB), against about 160 bytes a row as Python lists of floats
and strings; the timestamps as seconds in :class:`~._stamps.Times`, which
holds a regular grid (a monitoring system's 5-minute samples, or rows without
a timestamp) as three numbers and any other rows 8 bytes each. Rows are
written in place after the last one; rows leaving the window only move the
start. A single appended row grows the array by a sixty-fourth when it is
full (amortised O(1) per sample; a 2,000-row series grows by 0.8 KiB,
copying 31 KiB once per 47 samples: once in four hours at a sample per 5
minutes, where a fleet of idle objects would rather keep the memory),
a batch (``load_csv``, ``append``) by exactly what it needs; when rows left at
the start, the live rows are moved down instead of allocating.

Timestamps come back exactly as given: the series keeps one *kind* (the kind of
its first timestamp: a float, an int, or a text in one of :data:`~._stamps.TEXT_FORMATS`
that round-trips through it) as seconds, and the rare timestamp of another kind
in a small side map by row number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._stamps import Stamp, Stamps, Times, encode

__all__ = ["DEFAULT_MAX_ROWS", "Series"]

DEFAULT_MAX_ROWS = 10_000
"""Rows a forecaster keeps by default: about 35 days of 5-minute samples, 156 KiB
(with timestamps off the grid: 234 KiB)."""


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
        self._buf = np.empty((0, 2), np.float64)
        self._start = 0
        self._end = 0
        self._times = Times()
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
        """Bytes of the row array and the timestamps kept one a row (capacity included)."""
        return int(self._buf.nbytes) + self._times.nbytes

    @property
    def first(self) -> int:
        """The absolute number of the oldest row kept."""
        return self.total - len(self)

    # -- writing -------------------------------------------------------------------

    def extend(self, values: Sequence[Sequence[float]], stamps: Sequence[Stamp]) -> int:
        """Append rows (already validated) and apply the window; returns the length."""
        k = len(values)
        if k == 0:
            return len(self)
        if len(stamps) != k:
            raise ValueError("one timestamp per row")
        block = np.asarray(values, dtype=np.float64).reshape(k, 2)
        seconds = np.empty(k, np.float64)
        first_row = self.total
        for i, stamp in enumerate(stamps):
            kind, secs = encode(stamp)
            if stamp is not None and self._kind is None and kind is not None:
                self._kind = kind
            if stamp is not None and kind != self._kind:
                self._odd[first_row + i] = stamp
                secs = math.nan
            seconds[i] = secs
        self._reserve(k)
        self._buf[self._end : self._end + k] = block
        self._times.append(seconds)
        self._end += k
        self.total += k
        self._apply_window()
        return len(self)

    def clear(self) -> None:
        """Drop every row (``total`` keeps counting); free the arrays."""
        self._buf = np.empty((0, 2), np.float64)
        self._start = self._end = 0
        self._times = Times(self.total)
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
            grown = np.empty((need + slack, 2), np.float64)
            grown[:n] = self._buf[self._start : self._end]
            self._buf = grown
        self._start, self._end = 0, n

    def _apply_window(self) -> None:
        drop = 0
        if self.max_rows is not None:
            drop = max(len(self) - self.max_rows, 0)
        if self.max_age is not None:
            ts = self._times.seconds(self.first + drop)
            known = ts[~np.isnan(ts)]
            if len(known):
                cutoff = float(known.max()) - self.max_age
                old = ts < cutoff  # NaN compares False: a row without a time stops it
                drop += int(np.argmin(old)) if not old.all() else len(old)
        if drop:
            self._start += drop
            first = self.first
            self._times.drop_to(first)
            if self._odd:
                self._odd = {i: s for i, s in self._odd.items() if i >= first}
            if len(self) == 0:
                self.clear()

    # -- reading -------------------------------------------------------------------

    def values(self) -> np.ndarray:
        """The rows ``[cpu, mem]``, a contiguous float64 copy of shape ``(n, 2)``."""
        return self._buf[self._start : self._end].copy()

    def tail(self, n: int) -> np.ndarray:
        """The last ``n`` rows (a view)."""
        return self._buf[max(self._end - n, self._start) : self._end]

    def stamps(self, first: int = 0) -> Stamps:
        """The timestamps of the rows from ``first`` (0: the oldest kept) on, compact."""
        base = self.first + max(first, 0)
        odd = {i - base: s for i, s in self._odd.items() if i >= base}
        return Stamps(self._times.slice(base), self._kind, odd)

    def has_stamps(self) -> bool:
        return bool(self._odd) or self._times.known()

    # -- snapshots -----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_buf"] = self._buf[self._start : self._end].copy()  # no spare capacity
        state["_start"], state["_end"] = 0, len(self)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        buf = state["_buf"][state["_start"] : state["_end"]]
        if buf.shape[1] == 3:  # before Times: the seconds a third column
            state["_times"] = Times.of(buf[:, 2], state["total"] - len(buf))
            state["_buf"], state["_start"], state["_end"] = buf[:, :2].copy(), 0, len(buf)
        self.__dict__.update(state)
