"""What every benchmark shares: progress on stderr, the command line's common
options, the table on stdout, the JSON report, the machine it ran on, the
deployment it starts (continuum_dev.testing) and Ctrl-C/SIGTERM handling.

A benchmark is ``python -m bench.<name>`` run from the repository root; it
imports from here, bench/_timing.py and continuum_dev.testing, never from tests/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from continuum_dev.testing import Deployment, child_env, find_mosquitto

REPO = Path(__file__).resolve().parent.parent
#: what the benchmarks' children import from the checkout (examples, continuum_sim)
PYTHONPATH = [REPO, REPO / "firmware-sim"]

__all__ = [
    "PYTHONPATH",
    "REPO",
    "Columns",
    "columns",
    "deployment",
    "env",
    "format_table",
    "log",
    "machine",
    "options",
    "parser",
    "terminate_as_interrupt",
    "write_json",
]


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout carries only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parser(
    name: str, description: str, *, json_default: str | None = None, quick: str | None = None
) -> argparse.ArgumentParser:
    """The parser of ``python -m bench.<name>``: ``--json PATH`` (default
    ``reports/bench-<name>.json``, relative to the repository root) and, with
    ``quick`` (its help), ``--quick``."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    default = json_default or f"reports/bench-{name.replace('_', '-')}.json"
    p.add_argument(
        "--json",
        default=default,
        help="where to write the figures (default: %(default)s, relative to the repo root)",
    )
    if quick:
        p.add_argument("--quick", action="store_true", help=quick)
    return p


def options(p: argparse.ArgumentParser, table: str) -> None:
    """Add options from a table, one a line: ``name  default  help``. The default
    gives the type (``64`` an int, ``0.5`` a float, else a string); ``-`` makes a
    flag. The help gets ``(default: ...)``."""
    for line in table.strip().splitlines():
        name, default, text = line.split(None, 2)
        if default == "-":
            p.add_argument(f"--{name}", action="store_true", help=text)
            continue
        value: Any = default
        for kind in (int, float):
            try:
                value = kind(default)
                break
            except ValueError:
                pass
        help_text = f"{text} (default: %(default)s)"
        p.add_argument(f"--{name}", type=type(value), default=value, help=help_text)


def deployment(url: str | None = None, tmp: Any = None, **kw: Any) -> Deployment:
    """continuum_dev.testing's Deployment for a benchmark: children run in the
    repository root with it (and firmware-sim/) on PYTHONPATH; a broker of its
    own unless ``url``."""
    kw.setdefault("cwd", REPO)
    kw.setdefault("pythonpath", PYTHONPATH)
    return Deployment(url, tmp, **kw)


def env() -> dict[str, str]:
    """The environment of a one-shot child (``subprocess.run``) of a benchmark."""
    return child_env(PYTHONPATH)


Columns = list[tuple[str, str, str]]


def columns(spec: str) -> Columns:
    """Table columns from ``"key:heading> | key< | ..."``: each column's key in
    the rows, its heading (``key`` alone: the key itself) and its alignment
    (``<`` left, ``>`` right)."""
    out = []
    for item in spec.split("|"):
        item = item.strip()
        key, sep, heading = item[:-1].partition(":")
        out.append((key, heading if sep else key, item[-1]))
    return out


def format_table(rows: list[dict[str, Any]], cols: Columns | str) -> str:
    """``rows`` of dicts as text; ``cols`` as :func:`columns` makes them (or its spec)."""
    if isinstance(cols, str):
        cols = columns(cols)
    body = [[str(r.get(key, "")) for key, _, _ in cols] for r in rows]
    head = [h for _, h, _ in cols]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(cols))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if align == "<" else c.rjust(w)
            for c, w, (_, _, align) in zip(cells, widths, cols, strict=True)
        ).rstrip()

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *(line(b) for b in body)])


def write_json(path: str | os.PathLike[str], report: Any, indent: int = 2) -> Path:
    """Write the report (a relative path is taken from the repository root) and say where."""
    out = Path(path)
    if not out.is_absolute():
        out = REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=indent, default=repr) + "\n")
    log(f"figures written to {out}")
    return out


def machine(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """When and where a benchmark ran: host, cores, load, Python, mosquitto, its arguments."""
    mosquitto = ""
    exe = find_mosquitto()
    if exe:
        with contextlib.suppress(OSError, IndexError, subprocess.SubprocessError):
            mosquitto = subprocess.run(
                [exe, "-h"], capture_output=True, text=True, timeout=5
            ).stdout.splitlines()[0]
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "mosquitto": mosquitto,
        "args": {
            k: v for k, v in vars(args or argparse.Namespace()).items() if k not in ("json", "cmd")
        },
    }


def run_or_interrupted(
    run: Callable[[Any], dict[str, Any]], args: Any, cols: Columns | str | None = None
) -> dict[str, Any] | None:
    """``run(args)``, unwound by Ctrl-C, SIGTERM or SIGHUP: None then (logged);
    with ``cols``, its ``table`` printed."""
    try:
        with terminate_as_interrupt():
            result = run(args)
    except KeyboardInterrupt:
        log("interrupted; every process stopped")
        return None
    if cols is not None:
        print(format_table(result["table"], cols))
    return result


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so every ``finally`` runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
