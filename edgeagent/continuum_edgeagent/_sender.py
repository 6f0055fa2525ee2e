"""Sending the outbox over the link: samples go in sequence order, at most
``[outbox] drain_rate`` a second (a token bucket) and ``max_inflight``
unacknowledged at once, and leave the outbox on their PUBACK.

After a reconnect the samples acknowledged within ``resend_window`` seconds
before the connection was lost go again first (a broker that crashed may have
lost them), then every unacknowledged one. A sample the broker refuses (an
ACL, a quota) is never dropped: sending pauses, for longer each time, and
starts again from the oldest sample.
"""

from __future__ import annotations

import logging
import time

from ._config import OutboxConfig
from ._link import Link
from ._outbox import MAX_UNREMOVED, Outbox

__all__ = ["Sender"]

log = logging.getLogger("edgeagent")


class Sender:
    """The agent's sending state, across connections (and reloads)."""

    def __init__(self) -> None:
        self.sent = 0  # samples sent (resends not counted)
        self.acked = 0  # ... and acknowledged
        self.refused = 0  # samples the broker refused
        self.refusal: str | None = None  # what the last refusal said
        self.inflight: dict[int, int] = {}  # mid -> seq, on the current connection
        self._resent_mids: set[int] = set()  # those of inflight that are resends
        self._resending = False  # the resend of this connection has more to send
        self.resend_open = False  # ... or some of it is not acknowledged yet
        self._resend_upto = 0
        self._generation = 0
        self._sent_upto = 0
        self._tokens = 0.0
        self._token_t = time.monotonic()
        self.paused_until = 0.0  # sending paused after the broker refused samples
        self._refusal_pause = 0.0

    def reset(self) -> None:
        """A new link (a reload): nothing in flight, no resend under way."""
        self._generation = 0
        self.inflight.clear()
        self._resent_mids.clear()
        self._resending = self.resend_open = False

    def take_acks(self, link: Link, outbox: Outbox, topic: str) -> None:
        """The PUBACKs that arrived: samples out of the outbox, or refused."""
        done: list[int] = []
        refused: list[int] = []
        acks = link.acks
        while acks:
            generation, mid, ok = acks.popleft()
            if generation != self._generation:
                continue  # an older connection's: its samples are sent again
            seq = self.inflight.pop(mid, None)
            if seq is None:
                continue
            resent = mid in self._resent_mids
            self._resent_mids.discard(mid)
            if ok:
                if not resent:
                    self.acked += 1
                done.append(seq)  # a resent one: kept again from now
            else:
                refused.append(seq)
        outbox.remove(done)
        if self.resend_open and not self._resending and not self._resent_mids:
            self.resend_open = False  # all sent again and acknowledged again
            outbox.resend_done()
        outbox.prune()  # kept samples past the window (at most every second)
        if done and not refused:
            self._refusal_pause = 0.0
        if refused:
            # The broker refused them (an ACL that does not let this device
            # publish its metrics, a quota): keep every sample, stop sending,
            # and try again later from the oldest one. Never drop on a refusal.
            self.refused += len(refused)
            self._refusal_pause = min(300.0, max(5.0, 2 * self._refusal_pause))
            self.paused_until = time.monotonic() + self._refusal_pause
            self.inflight.clear()
            self._resent_mids.clear()
            self._sent_upto = self._resend_upto = 0
            self._resending = self.resend_open
            self.refusal = (
                f"the broker refused sample #{min(refused)} on {topic} (not "
                f"authorized?); samples kept, sending again in {self._refusal_pause:.0f} s"
            )
            log.error("%s", self.refusal)

    def drain(
        self, link: Link, outbox: Outbox, ob: OutboxConfig, topic: str, now: float
    ) -> float | None:
        """Send what the rate and in-flight bounds allow; seconds until more may go."""
        if not link.connected:
            return None
        if link.generation != self._generation:
            # a new connection: first the samples acknowledged just before the
            # last one was lost, then every unacknowledged one
            self._generation = link.generation
            self.inflight.clear()
            self._resent_mids.clear()
            self._sent_upto = self._resend_upto = 0
            self._resending = self.resend_open = outbox.begin_resend()
        if now < self.paused_until:
            return self.paused_until - now
        if outbox.unremoved >= MAX_UNREMOVED:
            return 1.0  # acknowledged samples cannot be deleted (disk full): wait for that
        rate = ob.drain_rate
        burst = max(1.0, rate / 10)
        self._tokens = min(burst, self._tokens + (now - self._token_t) * rate)
        self._token_t = now
        room = min(int(self._tokens), ob.max_inflight - len(self.inflight))
        if room <= 0:
            return (1 - self._tokens) / rate if self._tokens < 1 else None
        if self._resending:
            room -= self._resend(link, outbox, topic, room)
            if self._resending or room <= 0:
                return max(0.0, (1 - self._tokens) / rate)
        rows = outbox.after(self._sent_upto, room)
        for seq, payload in rows:
            mid = link.publish(topic, payload)
            if mid is None:
                break
            self.inflight[mid] = seq
            self._sent_upto = seq
            self._tokens -= 1
            self.sent += 1
        if len(rows) == room and len(outbox) > len(self.inflight):
            return max(0.0, (1 - self._tokens) / rate)
        return None

    def _resend(self, link: Link, outbox: Outbox, topic: str, room: int) -> int:
        """Send up to ``room`` kept samples of this connection's resend; how many."""
        rows = outbox.resend_after(self._resend_upto, room)
        n = 0
        for seq, payload in rows:
            mid = link.publish(topic, payload)
            if mid is None:
                break
            self.inflight[mid] = seq
            self._resent_mids.add(mid)
            self._resend_upto = seq
            self._tokens -= 1
            n += 1
        if n:
            outbox.count_resent(n)
        if len(rows) < room:
            self._resending = False
        return n
