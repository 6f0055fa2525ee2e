"""Admin actions, through a continuum client as the console's broker account,
each written to an append-only audit log (JSON lines, fsynced).

| action | what it sends |
|---|---|
| ``retrain`` | ``train(epochs=..., warm_start=...)`` on the device's forecaster (alias ``{device}/forecaster`` by default), as a future: the log gets a ``started`` line, then its outcome |
| ``delete`` | the gateway's ``delete`` of an object (protocol.md section 16) |
| ``drain``, ``undrain`` | the gateway's ``drain`` (no new objects on the node, its objects moved off) and ``undrain`` of a node |

The console's account must be one of the services' ``--admin`` accounts for
these to reach other accounts' objects (protocol.md section 21).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from continuum_mqtt import ContinuumError
from continuum_mqtt.service import check_level

__all__ = ["ActionError", "Actions", "AuditLog"]

log = logging.getLogger("continuum.console")


class ActionError(Exception):
    """An action that could not even be sent (bad target); the message says why."""


class AuditLog:
    """Append-only JSON lines at ``path``; the last ``keep`` entries in memory
    (read back from the file's end at start)."""

    def __init__(self, path: str | Path, keep: int = 500) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self.count = 0  # entries written by this process
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            with open(self.path, "rb") as fh:
                fh.seek(max(0, self.path.stat().st_size - 256 * 1024))
                for line in fh.read().splitlines():
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict):
                        self.recent.append(entry)

    def write(self, **entry: Any) -> dict[str, Any]:
        entry = {"ts": round(time.time(), 3), **entry}
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self.recent.append(entry)
            self.count += 1
        log.info("audit: %s", line.rstrip())
        return entry

    def tail(self, n: int = 200) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.recent)[-n:][::-1]


def _outcome(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {"outcome": "ok"}
    if isinstance(exc, ContinuumError):
        return {"outcome": "error", "error": exc.code, "message": str(exc)[:500]}
    return {"outcome": "error", "error": type(exc).__name__, "message": str(exc)[:500]}


class Actions:
    """What an admin may do. ``client`` is a connected continuum client (its
    broker account is the one the services see)."""

    def __init__(
        self,
        client: Any,
        audit: AuditLog,
        *,
        forecaster_alias: str = "{device}/forecaster",
        retrain_epochs: int = 20,
        timeout: float = 300.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.client, self.audit = client, audit
        self.forecaster_alias = forecaster_alias
        self.retrain_epochs = retrain_epochs
        self.timeout = timeout
        self.on_change = on_change

    def retrain(self, user: str, device: str, *, epochs: int | None = None) -> dict[str, Any]:
        """Start a retraining of ``device``'s forecaster; returns the ``started`` entry."""
        try:
            check_level("device id", device)
        except ValueError as exc:
            raise ActionError(str(exc)) from exc
        epochs = self.retrain_epochs if epochs is None else epochs
        if not 1 <= epochs <= 10_000:
            raise ActionError("epochs must be 1..10000")
        alias = self.forecaster_alias.format(device=device)
        base = {"user": user, "action": "retrain", "target": device, "object": alias}
        try:
            obj = self.client.get(alias)
            fut: Future[Any] = obj.train.options(timeout=self.timeout).future(
                epochs=epochs, warm_start=True
            )
        except Exception as exc:  # every failure is audited
            return self.audit.write(**base, epochs=epochs, **_outcome(exc))
        started = self.audit.write(**base, epochs=epochs, outcome="started")

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            extra: dict[str, Any] = {}
            if exc is None:
                res = f.result()
                if isinstance(res, dict):
                    extra = {k: res[k] for k in ("final_loss", "train_seconds") if k in res}
            self.audit.write(**base, **_outcome(exc), **extra)

        fut.add_done_callback(done)
        return started

    def delete(self, user: str, ref: str) -> dict[str, Any]:
        """Delete an object through the gateway (waits for its answer)."""
        if not isinstance(ref, str) or not ref or len(ref) > 300:
            raise ActionError("an object id or alias is required")
        base = {"user": user, "action": "delete", "target": ref}
        try:
            self.client.delete(ref)
        except Exception as exc:  # every failure is audited
            return self.audit.write(**base, **_outcome(exc))
        entry = self.audit.write(**base, outcome="ok")
        if self.on_change is not None:
            self.on_change()
        return entry

    def drain(self, user: str, node: str, *, undo: bool = False) -> dict[str, Any]:
        """Drain a node through the gateway (``undo``: undrain it); waits for
        its answer, which the audit entry carries (objects moved, left)."""
        try:
            check_level("node id", node)
        except (TypeError, ValueError) as exc:
            raise ActionError(str(exc)) from exc
        action = "undrain" if undo else "drain"
        base = {"user": user, "action": action, "target": node}
        try:
            res = self.client.undrain(node) if undo else self.client.drain(node)
        except Exception as exc:  # every failure is audited
            return self.audit.write(**base, **_outcome(exc))
        extra: dict[str, Any] = {}
        if isinstance(res, dict) and not undo:
            left = res.get("left") or []
            extra = {"moved": res.get("moved"), "left": len(left)}
            if left:
                extra["left_ids"] = list(left)[:20]
                extra["message"] = str(res.get("reason") or "")[:500]
        entry = self.audit.write(**base, outcome="ok", **extra)
        if self.on_change is not None:
            self.on_change()
        return entry

    def refused(self, user: str, action: str, target: str, why: str) -> dict[str, Any]:
        """Audit an action refused by the console itself (role, CSRF)."""
        return self.audit.write(user=user, action=action, target=target, outcome="refused", why=why)
