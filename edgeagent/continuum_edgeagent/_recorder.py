"""Taking samples into the outbox: every sample is stored before it is sent.

A full outbox (``[outbox] max_samples``), or one whose file system is low on
space (it then keeps its size), applies ``[outbox] policy``: drop the oldest
sample, or take no new one (counted as not sampled). A sample that cannot be
stored (disk full, I/O error) takes no sequence number and is counted as
failed; each new sample tries again. Every minute or so the outbox is swept
of samples older than ``max_age``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from continuum_mqtt.samples import encode_sample

from ._config import AgentConfig, OutboxConfig
from ._metrics import Sampler
from ._outbox import LOW_SPACE, Outbox

__all__ = ["Recorder"]

log = logging.getLogger("edgeagent")


class Recorder:
    """The agent's sampling side, with what it remembers to log once."""

    def __init__(self) -> None:
        self._store_failing = 0  # samples failed since storing last worked
        self._tight = False  # the outbox's file system is low on space

    def sample(
        self, outbox: Outbox, sampler: Sampler, cfg: AgentConfig, in_flight: int
    ) -> tuple[int, float, dict[str, Any]] | None:
        """Read the sensors and store the sample: its ``(seq, ts, metrics)``,
        or None when none was stored."""
        ob = cfg.outbox
        depth = len(outbox)
        full = depth >= ob.max_samples
        # a file system low on space bounds the outbox at its current size
        # (what is in flight is about to go: no need to drop it)
        tight = not self._may_grow(outbox, cfg) and not full and depth > in_flight
        if full or tight:
            if ob.policy == "stop_sampling":
                outbox.skip()
                return None
            outbox.enforce((depth if tight else ob.max_samples) - 1, None, True)
        metrics = sampler.read()
        seq = outbox.next_seq
        ts = time.time()
        if not outbox.add(seq, ts, encode_sample(cfg.device, seq, ts, metrics)):
            self._store_failed(outbox)
            return None
        if self._store_failing:
            log.warning(
                "storing samples again (%d could not be stored meanwhile; %d in all)",
                self._store_failing,
                outbox.failed,
            )
            self._store_failing = 0
        return seq, ts, metrics

    def _may_grow(self, outbox: Outbox, cfg: AgentConfig) -> bool:
        grow = outbox.can_grow()
        if outbox.tight != self._tight:
            self._tight = outbox.tight
            if self._tight:
                log.warning(
                    "the file system of %s has less than %d KiB free: the outbox keeps its "
                    "size (policy %s)",
                    cfg.state_dir,
                    LOW_SPACE // 1024,
                    cfg.outbox.policy,
                )
            else:
                log.info("the file system of %s has room again", cfg.state_dir)
        return grow

    def _store_failed(self, outbox: Outbox) -> None:
        """A sample could not be stored: it took no seq, and is counted."""
        self._store_failing += 1
        if self._store_failing == 1:
            log.error(
                "cannot store samples: %s; they are counted as failed (no seq used), "
                "what is stored is still sent, and each new sample tries again",
                outbox.error,
            )

    def sweep(self, outbox: Outbox, ob: OutboxConfig) -> None:
        """Apply the bounds (``max_age`` too)."""
        if outbox.enforce(ob.max_samples, ob.max_age, ob.policy == "drop_oldest"):
            log.warning("outbox over its bounds: %d dropped so far", outbox.dropped)
