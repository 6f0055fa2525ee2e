"""The series a replaying board plays: the bundled datasets
(``cloudnode/continuum_node/datasets/``) or a CSV of CPU/MEM utilisation, loaded as a
:class:`Series`, and the timestamp formats they use (:func:`parse_time`,
:func:`format_time`).
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

__all__ = [
    "DATASETS",
    "DEFAULT_SYNTHETIC_START",
    "SAMPLE_PERIOD",
    "Series",
    "dataset_dir",
    "format_time",
    "load_series",
    "parse_time",
]

SAMPLE_PERIOD = 300.0
"""Seconds of board time between two samples (the datasets' 5 minutes)."""

DEFAULT_SYNTHETIC_START = "2024-09-02T00:00:00Z"


def dataset_dir() -> Path:
    """``cloudnode/continuum_node/datasets/`` (found without importing continuum_node)."""
    spec = importlib.util.find_spec("continuum_node")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / "datasets"
            if path.is_dir():
                return path
    return Path(__file__).resolve().parents[2] / "cloudnode" / "continuum_node" / "datasets"


DATASETS = {"node_3": "node_3_utilisation.csv", "orangepi": "orangepi_sample.csv"}


def parse_time(text: str) -> float:
    """Unix seconds of ``YYYY-MM-DD HH:MM:SS`` (UTC unless it says otherwise),
    ISO 8601 with ``Z``, or a number."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def format_time(ts: float) -> str:
    """The datasets' timestamp format, UTC, to the second."""
    return datetime.fromtimestamp(round(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Series:
    """A CPU/MEM utilisation series: times (Unix s), CPU and MEM (percent)."""

    name: str
    times: tuple[float, ...]
    cpu: tuple[float, ...]
    mem: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.cpu)

    @cached_property
    def span(self) -> float:
        """Length of one lap of the series, for replays that wrap around: from
        the first sample to one median period after the last."""
        if len(self.times) < 2:
            return SAMPLE_PERIOD
        deltas = sorted(b - a for a, b in zip(self.times, self.times[1:], strict=False))
        return self.times[-1] - self.times[0] + max(deltas[len(deltas) // 2], 1.0)


_CPU_COLUMNS = ("cpu", "input_1")
_MEM_COLUMNS = ("mem", "input_2")
_TIME_COLUMNS = ("timestamp", "time", "ts", "date")


def load_series(source: str) -> Series:
    """A bundled dataset by name (``node_3``, ``orangepi``) or a CSV path with
    CPU/MEM (or input_1/input_2) columns and a timestamp/time column."""
    path = dataset_dir() / DATASETS[source] if source in DATASETS else Path(source)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader)]

        def col(options: tuple[str, ...]) -> int | None:
            return next((header.index(c) for c in options if c in header), None)

        ci, mi, ti = col(_CPU_COLUMNS), col(_MEM_COLUMNS), col(_TIME_COLUMNS)
        if ci is None or mi is None:
            raise ValueError(f"{path}: needs CPU and MEM (or input_1 and input_2) columns")
        times: list[float] = []
        cpu: list[float] = []
        mem: list[float] = []
        for n, rec in enumerate(reader):
            if not rec or all(not f.strip() for f in rec):
                continue
            cpu.append(float(rec[ci]))
            mem.append(float(rec[mi]))
            times.append(
                parse_time(rec[ti]) if ti is not None else parse_time(DEFAULT_SYNTHETIC_START)
            )
            if ti is None:
                times[-1] += n * SAMPLE_PERIOD
    if not cpu:
        raise ValueError(f"{path}: no rows")
    return Series(path.stem, tuple(times), tuple(cpu), tuple(mem))
