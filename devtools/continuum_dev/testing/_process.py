"""Child processes that never outlive the process that started them.

Every child a test, benchmark or the demo starts gets ``PR_SET_PDEATHSIG``
(Linux ``prctl``, set between fork and exec): when the parent dies, even by
SIGKILL or a crash, the kernel sends the child SIGTERM, so a crashed test run
leaves no broker, gateway or node behind. The signal follows the *thread* that
spawned the child: spawn from the main thread (or one that outlives the child).
Elsewhere than Linux the children are plain children.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["child_env", "die_with_parent", "preexec", "stop_process"]

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return fn


# Resolved once here, not in the child: between fork and exec only the call runs.
_prctl = _load_prctl()


def die_with_parent(
    sig: int = signal.SIGTERM, parent: int | None = None
) -> None:  # pragma: no cover - runs in the child
    """``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` when
    its parent dies. With ``parent`` (the spawner's pid, see :func:`preexec`), a
    parent that died before the call took effect ends the child at once."""
    if _prctl is None:
        return
    with contextlib.suppress(Exception):
        _prctl(_PR_SET_PDEATHSIG, int(sig))
        if parent is not None and os.getppid() != parent:
            os.kill(os.getpid(), sig)


def preexec(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """:func:`die_with_parent` bound to this process: ``Popen(..., preexec_fn=preexec())``."""
    return functools.partial(die_with_parent, sig, os.getpid())


def child_env(
    pythonpath: Iterable[str | os.PathLike[str]] = (),
    base: Mapping[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment for a child: ``base`` (default ``os.environ``) with
    ``pythonpath`` in front of its PYTHONPATH and unbuffered output."""
    env = dict(os.environ if base is None else base)
    parts = [str(Path(p)) for p in pythonpath]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int:
    """Send ``sig`` (if it still runs), wait up to ``timeout``, then SIGKILL; close
    its pipes. Returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return code
