"""Timestamps of a series, compact: each kept as seconds of one *kind* (a
float, an int, or a text in one of :data:`TEXT_FORMATS` that round-trips
through it), and the seconds of a run of rows as :class:`Times`.

``Times`` holds a regular run (``a + step * k``: the 5-minute grid of a
monitoring system, or rows without a timestamp) as three numbers, and only
the rows after it one float64 each: a 2,000-row series on a grid costs no
bytes a row for its timestamps, one whose samples arrive with jittered
times 8 bytes a row from the first jittered one on. A run's values are
computed by one formula only (:meth:`Times._grid`), both when a row is
checked against it and when it is read back, so they come back bit for bit.
"""

from __future__ import annotations

import calendar
import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TEXT_FORMATS", "Stamp", "Stamps", "Times", "decode", "encode"]

TEXT_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
"""Text timestamps kept as seconds (read as UTC) when they round-trip exactly."""

Stamp = str | float | None


def encode(stamp: Stamp) -> tuple[str | None, float]:
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
    """:func:`encode` of a text, remembered: a fleet's forecasters loading the
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
    """:func:`encode` of ``YYYY-MM-DD HH:MM:SS`` (or with ``T``) without
    ``time.strptime`` (six times faster); None for anything else, which then
    takes the general path (same result either way: the text must round-trip)."""
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


def decode(kind: str | None, seconds: float) -> Stamp:
    if kind is None or math.isnan(seconds):
        return None
    if kind == "float":
        return float(seconds)
    if kind == "int":
        return int(seconds)
    return time.strftime(kind, time.gmtime(seconds))


class Times:
    """Seconds (NaN: none) of the rows numbered ``[first, end)``: those before
    ``split`` on the run ``a + step * (row - base)`` (all NaN when ``a`` is),
    the others one float64 each in ``_ex``, from ``_off`` on."""

    def __init__(self, first: int = 0) -> None:
        self._reset(first)

    def _reset(self, first: int) -> None:
        """No rows yet; the next is row ``first``."""
        self.first = self.split = self.base = first
        self.a = self.step = math.nan
        self._ex = np.empty(0, np.float64)
        self._off = 0
        self._n = 0  # explicit rows: those from max(first, split) on

    @property
    def end(self) -> int:
        return max(self.first, self.split) + self._n

    def __len__(self) -> int:
        return self.end - self.first

    @property
    def nbytes(self) -> int:
        """Bytes of the explicit seconds (spare capacity included)."""
        return int(self._ex.nbytes)

    def _grid(self, rows: np.ndarray) -> np.ndarray:
        """The run's seconds of ``rows`` (absolute numbers): the one formula."""
        if math.isnan(self.a) or math.isnan(self.step):  # no time, or a run of one row
            return np.full(len(rows), self.a)
        return self.a + self.step * (rows - self.base).astype(np.float64)

    # -- writing -------------------------------------------------------------------

    def append(self, seconds: np.ndarray) -> None:
        """The seconds of the next ``len(seconds)`` rows."""
        if not len(seconds):
            return
        moved = self._off + self._n + len(seconds) > len(self._ex)
        rerun = bool(self._n) and self.first >= self.split and moved
        if rerun:  # the run left and the rows move anyway: they may start a run again
            seconds = np.concatenate([self._ex[self._off : self._off + self._n], seconds])
            self._reset(self.first)
        if not self._n:
            seconds = seconds[self._extend_run(seconds) :]
            if not len(seconds):
                return
        self._reserve(len(seconds), spare=rerun)
        self._ex[self._off + self._n : self._off + self._n + len(seconds)] = seconds
        self._n += len(seconds)

    def _extend_run(self, seconds: np.ndarray) -> int:
        """Take the leading rows that continue (or start) the run; how many."""
        taken = 0
        if self.split <= self.first:  # no row on the run: one starts here
            self.first = self.split = self.base = self.end
            self.a, self.step = float(seconds[0]), math.nan
            self.split += 1
            seconds, taken = seconds[1:], 1
        if not len(seconds):
            return taken
        if math.isnan(self.a):
            same = np.isnan(seconds)
        else:
            if math.isnan(self.step):  # the run's second row fixes its step
                step = float(seconds[0]) - self.a
                if self.split - self.base != 1 or not math.isfinite(step):
                    return taken
                self.step = step
            same = self._grid(np.arange(self.split, self.split + len(seconds))) == seconds
        on = int(np.argmin(same)) if not same.all() else len(seconds)
        self.split += on
        return taken + on

    def _reserve(self, k: int, spare: bool = False) -> None:
        """Room for ``k`` more rows: with spare room for single samples (and
        after a rerun, which then waits for the spare room to fill)."""
        if self._off + self._n + k <= len(self._ex):
            return
        need = self._n + k
        if need <= len(self._ex):
            self._ex[: self._n] = self._ex[self._off : self._off + self._n]
        else:
            slack = need // 64 + 16 if spare or k <= self._n // 64 else 0
            grown = np.empty(need + slack, np.float64)
            grown[: self._n] = self._ex[self._off : self._off + self._n]
            self._ex = grown
        self._off = 0

    def drop_to(self, first: int) -> None:
        """Forget the rows before ``first``."""
        if first <= self.first:
            return
        gone = min(max(first - max(self.first, self.split), 0), self._n)  # explicit ones
        self._off, self._n = self._off + gone, self._n - gone
        self.first = first
        if first >= self.split and not self._n:
            self._reset(first)  # nothing left: a fresh start

    # -- reading -------------------------------------------------------------------

    def seconds(self, lo: int | None = None, hi: int | None = None) -> np.ndarray:
        """The seconds of rows ``[lo, hi)`` (default: all), a new array."""
        lo = self.first if lo is None else max(lo, self.first)
        hi = self.end if hi is None else min(hi, self.end)
        if hi <= lo:
            return np.empty(0, np.float64)
        cut = min(max(self.split, lo), hi)  # rows [lo, cut) are on the run
        ex0 = max(self.first, self.split)  # the first explicit row
        i, j = self._off + max(cut, ex0) - ex0, self._off + hi - ex0
        return np.concatenate([self._grid(np.arange(lo, cut)), self._ex[i:j] if hi > cut else []])

    def known(self) -> bool:
        """Whether any row has a time (without computing the grid's)."""
        on_run = self.split > self.first and not math.isnan(self.a)
        return on_run or bool(np.any(~np.isnan(self._ex[self._off : self._off + self._n])))

    def slice(self, lo: int) -> Times:
        """A compact copy of the rows from ``lo`` on."""
        out = Times.__new__(Times)
        out.__dict__.update(self.__dict__)  # drop_to never writes into _ex
        out.drop_to(lo)
        out.__dict__.update(out.__getstate__())  # one copy: the explicit rows kept
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ex"], state["_off"] = self._ex[self._off : self._off + self._n].copy(), 0
        return state

    @classmethod
    def of(cls, seconds: np.ndarray, first: int = 0) -> Times:
        """The seconds of rows ``first`` on."""
        times = cls(first)
        times.append(np.asarray(seconds, np.float64))
        return times


@dataclass
class Stamps:
    """Timestamps of a run of rows, compact: their seconds, kind, odd ones by index."""

    times: Times
    kind: str | None
    odd: dict[int, Stamp]

    def to_list(self) -> list[Stamp]:
        out = [decode(self.kind, float(s)) for s in self.times.seconds()]
        for i, stamp in self.odd.items():
            out[i] = stamp
        return out

    def __len__(self) -> int:
        return len(self.times)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "seconds" in state:  # before Times: one float64 a row
            state = dict(state)
            state["times"] = Times.of(state.pop("seconds"))
        self.__dict__.update(state)
