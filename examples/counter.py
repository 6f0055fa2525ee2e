"""The smallest active class: a counter that lives on a cloud node."""

from __future__ import annotations

import time

from continuum_mqtt import ActiveObject, active, progress


class Counter(ActiveObject):
    """A counter; ``add`` runs where the object lives."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    @active
    def add(self, n: int = 1) -> int:
        """Add ``n`` and return the new value."""
        self.value += n
        return self.value

    @active(readonly=True)
    def get(self) -> int:
        """The current value."""
        return self.value

    @active(readonly=True)
    def slow(self, seconds: float = 1.0) -> float:
        """Sleep (a stand-in for real work) and return the seconds slept."""
        time.sleep(seconds)
        return seconds

    @active
    def count_to(self, n: int, delay: float = 0.0) -> int:
        """Count up to ``n``, sending each step as a progress update."""
        for i in range(1, n + 1):
            self.value += 1
            progress({"step": i, "of": n})
            if delay:
                time.sleep(delay)
        return self.value

    @active
    def fail(self, message: str = "boom") -> None:
        """Raise an exception inside the method (to show remote errors)."""
        raise ValueError(message)

    @active(readonly=True)
    def unencodable(self) -> object:
        """Return something the wire cannot carry."""
        return object()

    @active
    def echo(self, data: bytes) -> bytes:
        """Return ``data`` unchanged (payload round trips)."""
        return data

    def reset(self) -> None:
        """Not marked active: callable locally only."""
        self.value = 0

    def _secret(self) -> str:
        return "private"
