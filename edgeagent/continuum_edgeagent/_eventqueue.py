"""Forecasts and alerts that could not be published yet (the broker or the
link was down): kept in order, in ``events.jsonl`` in the state directory
(they survive a restart), and published first when the link is back, so the
cloud sees what the board forecast and flagged while it was away
(docs/edgeagent.md, "When the cloud is away").

One JSON line per event, ``{"kind", "body", "retain"}``, appended and flushed
as it is queued; the file is rewritten (atomically) with what is left after
each send. At most ``limit`` events: beyond, the oldest go (counted in
``dropped``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["EVENTS_FILE", "EventQueue"]

EVENTS_FILE = "events.jsonl"
DEFAULT_LIMIT = 10_000

log = logging.getLogger("edgeagent")

Publish = Callable[[str, dict[str, Any], bool], bool]


class EventQueue:
    def __init__(self, state_dir: str, limit: int = DEFAULT_LIMIT) -> None:
        self.path = os.path.join(state_dir, EVENTS_FILE)
        self.limit = limit
        self.dropped = 0
        self._events: deque[tuple[str, dict[str, Any], bool]] = deque()
        self._lock = threading.Lock()  # forecasts come from the client's thread
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        e = json.loads(line)
                        self._events.append((str(e["kind"]), dict(e["body"]), bool(e["retain"])))
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a crash
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s: %s", self.path, exc)
        while len(self._events) > self.limit:
            self._events.popleft()
            self.dropped += 1

    def __len__(self) -> int:
        return len(self._events)

    def add(self, kind: str, body: dict[str, Any], retain: bool) -> None:
        with self._lock:
            self._add(kind, body, retain)

    def _add(self, kind: str, body: dict[str, Any], retain: bool) -> None:
        self._events.append((kind, body, retain))
        if len(self._events) > self.limit:
            self._events.popleft()
            self.dropped += 1
            self._rewrite()
            return
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"kind": kind, "body": body, "retain": retain}) + "\n")
        except OSError as exc:  # kept in memory: sent when the link is back
            log.warning("cannot write %s: %s", self.path, exc)

    def flush(self, publish: Publish) -> int:
        """Publish the queued events in order until one cannot go; how many went."""
        with self._lock:
            return self._flush(publish)

    def send(self, publish: Publish, kind: str, body: dict[str, Any], retain: bool) -> None:
        """Publish after what waits here, in order; queue it if it cannot go now."""
        with self._lock:
            if self._events:
                self._flush(publish)
            if self._events or not publish(kind, body, retain):
                self._add(kind, body, retain)

    def _flush(self, publish: Publish) -> int:
        sent = 0
        while self._events:
            kind, body, retain = self._events[0]
            if not publish(kind, body, retain):
                break
            self._events.popleft()
            sent += 1
        if sent:
            self._rewrite()
        return sent

    def _rewrite(self) -> None:
        try:
            if not self._events:
                if os.path.exists(self.path):
                    os.unlink(self.path)
                return
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                for kind, body, retain in self._events:
                    fh.write(json.dumps({"kind": kind, "body": body, "retain": retain}) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot rewrite %s: %s", self.path, exc)
