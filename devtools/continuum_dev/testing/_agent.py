"""An edge agent started by :meth:`Deployment.start_agent`, and the TOML its
configuration is written in."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._process import stop_process

__all__ = ["Agent", "toml_text"]


class Agent:
    """A running ``edgeagent run`` and its status file."""

    def __init__(self, proc: subprocess.Popen[Any], status_file: Path) -> None:
        self.proc = proc
        self.status_file = status_file

    def status(self) -> dict[str, Any]:
        """What the agent last wrote to its status file ({} before the first write)."""
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def stop(self, sig: int = signal.SIGTERM) -> dict[str, Any]:
        """Stop it (SIGTERM: it flushes its outbox first); its final status."""
        stop_process(self.proc, sig, timeout=20)
        return self.status()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def toml_text(data: Mapping[str, Any]) -> str:
    """``data`` as TOML: scalars first, then one ``[section]`` per mapping."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for section, body in data.items():
        if isinstance(body, Mapping):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"
