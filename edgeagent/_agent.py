"""``edgeagent run``: the daemon on each board.

One thread samples, stores, sends and keeps the books (no locks on the hot
path); the link's thread owns the MQTT connection; the jobs run as futures of
a continuum.Client. Samples go to the outbox first, leave it on PUBACK, and
are sent in sequence order at a bounded rate. An acknowledged sample stays
``[outbox] resend_window`` seconds more: after a reconnect those acknowledged
within that window before the connection was lost are sent again first (a
broker that crashed may have lost them), then the unacknowledged ones.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Any

from continuum._codec import encode
from continuum._protocol import Topics
from continuum._service import sd_notify
from continuum.samples import encode_sample

from ._config import AgentConfig, ConfigError, load
from ._link import Link
from ._metrics import Sampler
from ._outbox import LOW_SPACE, MAX_UNREMOVED, Outbox
from ._statedir import StateError, open_outbox
from ._statusfile import write_status

__all__ = ["Agent", "status_path"]

log = logging.getLogger("edgeagent")

AGE_CHECK_EVERY = 60.0  # seconds between max_age sweeps of the outbox
_LIVE = ("sampling", "outbox", "jobs", "log_level", "status_interval")  # reloaded in place


def status_path(cfg: AgentConfig) -> str:
    return os.path.join(cfg.state_dir, "status.json")


class Agent:
    def __init__(self, cfg: AgentConfig, *, sampler: Sampler | None = None) -> None:
        self.cfg = cfg
        self.sampler = sampler
        self.outbox: Outbox | None = None
        self.link: Link | None = None
        self._last_link: Link | None = None
        self._last_jobs: dict[str, Any] | None = None
        self.jobs: Any = None
        self.started = time.time()
        self.sent = 0
        self.acked = 0
        self.refused = 0
        self._inflight: dict[int, int] = {}  # mid -> seq, on the current connection
        self._resent_mids: set[int] = set()  # those of _inflight that are resends
        self._resending = False  # the resend of this connection has more to send
        self._resend_open = False  # ... or some of it is not acknowledged yet
        self._resend_upto = 0
        self._generation = 0
        self._sent_upto = 0
        self._tokens = 0.0
        self._token_t = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reload = False
        self._signal: int | None = None
        self._paused_until = 0.0  # sending paused after the broker refused samples
        self._refusal_pause = 0.0
        self.refusal: str | None = None
        self._store_failing = 0  # samples failed since storing last worked
        self._status_failing = False
        self._tight = False  # the outbox's file system is low on space
        self._published_counts: tuple[int, int, int] | None = None

    # -- wiring ---------------------------------------------------------------------
    def _password(self) -> str | None:
        """For each connection of the link: a rotated password file is read anew."""
        try:
            return self.cfg.broker_url().password
        except ConfigError as exc:
            log.error("%s", exc)
            return None

    def _topic(self, kind: str) -> str:
        return Topics(self.cfg.broker.root).device(self.cfg.device, kind)

    def _start_parts(self) -> None:
        cfg = self.cfg
        if self.outbox is None:
            self.outbox = open_outbox(cfg.state_dir)  # raises StateError
        self.outbox.window = cfg.outbox.resend_window
        if self.sampler is None:
            self.sampler = Sampler(cfg.sampling.disk_path)
        self._metrics_topic = self._topic("metrics")
        broker = cfg.broker_url()
        self.link = Link(
            broker,
            f"edgeagent-{cfg.device}",
            keepalive=cfg.broker.keepalive,
            backoff=(cfg.broker.backoff_min, cfg.broker.backoff_max),
            will=lambda: (self._topic("status"), encode(self._device_status("offline"))),
            ca_file=cfg.broker.ca_file or None,
            password=self._password,
            on_connected=self._on_connected,
            wake=self._wake.set,
        )
        self._last_link = self.link
        self.link.start()
        if cfg.forecaster.enabled:
            from ._jobs import Jobs  # the continuum client, only when there are jobs

            self.jobs = Jobs(cfg, self._publish_event)
            self.jobs.start()
        log.info(
            "edgeagent %s: %s every %.3g s -> %s; outbox %s (%d waiting, next seq %d)",
            cfg.device,
            "metrics",
            cfg.sampling.interval,
            broker,
            self.outbox.path,
            len(self.outbox),
            self.outbox.next_seq,
        )

    def _say_offline(self) -> None:
        """A clean stop sends no will: publish the retained offline status."""
        if self.link is not None and self.link.connected:
            self.link.publish(
                self._topic("status"), encode(self._device_status("offline")), retain=True
            )

    def _stop_parts(self) -> None:
        if self.jobs is not None:
            self.jobs.stop()
            self._last_jobs = self.jobs.status()
            self.jobs = None
        if self.link is not None:
            self.link.stop()
            self.link = None

    # -- callbacks from other threads --------------------------------------------------
    def _on_connected(self, generation: int) -> None:
        """After each CONNACK (network thread): say we are online."""
        assert self.link is not None
        self.link.publish(self._topic("status"), encode(self._device_status("online")), retain=True)
        self._published_counts = self._counts()

    def _publish_event(self, kind: str, body: dict[str, Any], retain: bool) -> None:
        if self.link is not None:
            self.link.publish(self._topic(kind), encode(body), retain=retain)

    def _counts(self) -> tuple[int, int, int]:
        ob = self.outbox
        return (ob.failed, ob.dropped, ob.resent) if ob is not None else (0, 0, 0)

    def _device_status(self, state: str) -> dict[str, Any]:
        failed, dropped, resent = self._counts()
        return {
            "state": state,
            "dev": self.cfg.device,
            "ts": time.time(),
            "pid": os.getpid(),
            "failed": failed,
            "dropped": dropped,
            "resent": resent,
        }

    def _publish_counts(self) -> None:
        """The retained ``online`` status again when failed, dropped or resent changed."""
        link = self.link
        if link is None or not link.connected:
            self._published_counts = None  # said again after the next connect
            return
        counts = self._counts()
        if counts != self._published_counts:
            self._published_counts = counts
            link.publish(self._topic("status"), encode(self._device_status("online")), retain=True)

    # -- the loop -------------------------------------------------------------------------
    def _sample(self) -> None:
        assert self.outbox is not None and self.sampler is not None
        ob = self.cfg.outbox
        depth = len(self.outbox)
        full = depth >= ob.max_samples
        # a file system low on space bounds the outbox at its current size
        # (what is in flight is about to go: no need to drop it)
        tight = not self._may_grow() and not full and depth > len(self._inflight)
        if full or tight:
            if ob.policy == "stop_sampling":
                self.outbox.skip()
                return
            self.outbox.enforce((depth if tight else ob.max_samples) - 1, None, True)
        metrics = self.sampler.read()
        seq = self.outbox.next_seq
        ts = time.time()
        if not self.outbox.add(seq, ts, encode_sample(self.cfg.device, seq, ts, metrics)):
            self._store_failed()
            return
        if self._store_failing:
            log.warning(
                "storing samples again (%d could not be stored meanwhile; %d in all)",
                self._store_failing,
                self.outbox.failed,
            )
            self._store_failing = 0
        if self.jobs is not None:
            self.jobs.on_sample(seq, ts, metrics)

    def _may_grow(self) -> bool:
        assert self.outbox is not None
        grow = self.outbox.can_grow()
        if self.outbox.tight != self._tight:
            self._tight = self.outbox.tight
            if self._tight:
                log.warning(
                    "the file system of %s has less than %d KiB free: the outbox keeps its "
                    "size (policy %s)",
                    self.cfg.state_dir,
                    LOW_SPACE // 1024,
                    self.cfg.outbox.policy,
                )
            else:
                log.info("the file system of %s has room again", self.cfg.state_dir)
        return grow

    def _store_failed(self) -> None:
        """A sample could not be stored: it took no seq, and is counted."""
        assert self.outbox is not None
        self._store_failing += 1
        if self._store_failing == 1:
            log.error(
                "cannot store samples: %s; they are counted as failed (no seq used), "
                "what is stored is still sent, and each new sample tries again",
                self.outbox.error,
            )

    def _take_acks(self) -> None:
        assert self.link is not None and self.outbox is not None
        done: list[int] = []
        refused: list[int] = []
        acks = self.link.acks
        while acks:
            generation, mid, ok = acks.popleft()
            if generation != self._generation:
                continue  # an older connection's: its samples are sent again
            seq = self._inflight.pop(mid, None)
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
        self.outbox.remove(done)
        if self._resend_open and not self._resending and not self._resent_mids:
            self._resend_open = False  # all sent again and acknowledged again
            self.outbox.resend_done()
        self.outbox.prune()  # kept samples past the window (at most every second)
        if done and not refused:
            self._refusal_pause = 0.0
        if refused:
            # The broker refused them (an ACL that does not let this device
            # publish its metrics, a quota): keep every sample, stop sending,
            # and try again later from the oldest one. Never drop on a refusal.
            self.refused += len(refused)
            self._refusal_pause = min(300.0, max(5.0, 2 * self._refusal_pause))
            self._paused_until = time.monotonic() + self._refusal_pause
            self._inflight.clear()
            self._resent_mids.clear()
            self._sent_upto = self._resend_upto = 0
            self._resending = self._resend_open
            self.refusal = (
                f"the broker refused sample #{min(refused)} on {self._metrics_topic} (not "
                f"authorized?); samples kept, sending again in {self._refusal_pause:.0f} s"
            )
            log.error("%s", self.refusal)

    def _drain(self, now: float) -> float | None:
        """Send what the rate and in-flight bounds allow; seconds until more may go."""
        link, ob = self.link, self.cfg.outbox
        assert link is not None and self.outbox is not None
        if not link.connected:
            return None
        if link.generation != self._generation:
            # a new connection: first the samples acknowledged just before the
            # last one was lost, then every unacknowledged one
            self._generation = link.generation
            self._inflight.clear()
            self._resent_mids.clear()
            self._sent_upto = self._resend_upto = 0
            self._resending = self._resend_open = self.outbox.begin_resend()
        if now < self._paused_until:
            return self._paused_until - now
        if self.outbox.unremoved >= MAX_UNREMOVED:
            return 1.0  # acknowledged samples cannot be deleted (disk full): wait for that
        rate = ob.drain_rate
        burst = max(1.0, rate / 10)
        self._tokens = min(burst, self._tokens + (now - self._token_t) * rate)
        self._token_t = now
        room = min(int(self._tokens), ob.max_inflight - len(self._inflight))
        if room <= 0:
            return (1 - self._tokens) / rate if self._tokens < 1 else None
        if self._resending:
            room -= self._resend(link, room)
            if self._resending or room <= 0:
                return max(0.0, (1 - self._tokens) / rate)
        rows = self.outbox.after(self._sent_upto, room)
        for seq, payload in rows:
            mid = link.publish(self._metrics_topic, payload)
            if mid is None:
                break
            self._inflight[mid] = seq
            self._sent_upto = seq
            self._tokens -= 1
            self.sent += 1
        if len(rows) == room and len(self.outbox) > len(self._inflight):
            return max(0.0, (1 - self._tokens) / rate)
        return None

    def _resend(self, link: Link, room: int) -> int:
        """Send up to ``room`` kept samples of this connection's resend; how many."""
        assert self.outbox is not None
        rows = self.outbox.resend_after(self._resend_upto, room)
        n = 0
        for seq, payload in rows:
            mid = link.publish(self._metrics_topic, payload)
            if mid is None:
                break
            self._inflight[mid] = seq
            self._resent_mids.add(mid)
            self._resend_upto = seq
            self._tokens -= 1
            n += 1
        if n:
            self.outbox.count_resent(n)
        if len(rows) < room:
            self._resending = False
        return n

    def _sweep(self) -> None:
        assert self.outbox is not None
        ob = self.cfg.outbox
        if self.outbox.enforce(ob.max_samples, ob.max_age, ob.policy == "drop_oldest"):
            log.warning("outbox over its bounds: %d dropped so far", self.outbox.dropped)

    def request_stop(self, signum: int | None = None) -> None:
        self._signal = signum
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    def run(self, *, install_signals: bool = True) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, lambda s, f: self.request_stop(s))
            signal.signal(signal.SIGINT, lambda s, f: self.request_stop(s))
            signal.signal(signal.SIGHUP, lambda s, f: self.request_reload())
        self._start_parts()
        sd_notify("READY=1")
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        watchdog = usec / 2e6 if usec else None
        now = time.monotonic()
        next_sample = now + min(self.cfg.sampling.interval, 1.0)  # cpu % needs a baseline
        next_status = now
        next_age = now + AGE_CHECK_EVERY
        next_watchdog = now
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sample:
                try:
                    self._sample()
                except Exception:  # a sensor or disk error never ends the agent
                    log.exception("sampling failed")
                next_sample += self.cfg.sampling.interval
                if next_sample < now:  # fell behind (suspend, slow disk): skip, no burst
                    next_sample = now + self.cfg.sampling.interval
            retry: float | None = None
            try:
                self._take_acks()
                retry = self._drain(now)
                if now >= next_age:
                    next_age = now + AGE_CHECK_EVERY
                    self._sweep()
            except Exception:  # a full disk, a broken file: log, keep sampling, retry
                log.exception("outbox error")
                retry = 1.0
            if now >= next_status:
                self._write_status()
                self._publish_counts()
                next_status = now + self.cfg.status_interval
            if watchdog is not None and now >= next_watchdog:
                sd_notify("WATCHDOG=1")
                next_watchdog = now + watchdog
            if self._reload:
                self._reload = False
                self._do_reload()
                next_sample = min(next_sample, time.monotonic() + self.cfg.sampling.interval)
            deadline = min(next_sample, next_status, next_age)
            if watchdog is not None:
                deadline = min(deadline, next_watchdog)
            timeout = deadline - time.monotonic()
            if retry is not None:
                timeout = min(timeout, retry)
            if timeout > 0:
                self._wake.wait(timeout)
            self._wake.clear()
        self._shutdown()
        return 0

    # -- reload and shutdown -----------------------------------------------------------
    def _do_reload(self) -> None:
        source = self.cfg.source
        try:
            new = load(source)
            new.password()  # a password file that cannot be read is a bad config
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        old = self.cfg
        logging.getLogger().setLevel(new.log_level.upper())
        if (
            all(
                getattr(new, f.name) == getattr(old, f.name)
                for f in dataclasses.fields(AgentConfig)
                if f.name not in _LIVE
            )
            and new.forecaster == old.forecaster
        ):
            self.cfg = new
            if self.outbox is not None:
                self.outbox.window = new.outbox.resend_window
            if self.jobs is not None:
                self.jobs.cfg = new
            if new.sampling.disk_path != old.sampling.disk_path and self.sampler is not None:
                self.sampler.disk_path = new.sampling.disk_path
            log.info("config %s reloaded", source)
            return
        outbox = self.outbox
        if new.state_dir != old.state_dir:
            try:  # open the new outbox before letting go of anything
                outbox = open_outbox(new.state_dir)
            except StateError as exc:
                log.error("reload refused, keeping the running config: %s: %s", source, exc)
                return
        log.info("config %s reloaded: reconnecting with the new settings", source)
        self._say_offline()  # on the old broker / device / root
        self._stop_parts()
        if outbox is not self.outbox and self.outbox is not None:
            self.outbox.close()
            log.warning(
                "new state_dir %s: samples left in the old outbox stay there; %s",
                new.state_dir,
                "seq starts again at 1" if outbox is not None and outbox.next_seq == 1 else "",
            )
        self.outbox = outbox
        self.cfg = new
        self._generation = 0
        self._inflight.clear()
        self._resent_mids.clear()
        self._resending = self._resend_open = False
        self._start_parts()

    def _shutdown(self) -> None:
        sd_notify("STOPPING=1")
        link, ob = self.link, self.cfg.outbox
        assert link is not None and self.outbox is not None
        if self._signal is not None:
            log.info("signal %d: flushing the outbox, then stopping", self._signal)
        end = time.monotonic() + ob.flush_timeout
        while link.connected and (len(self.outbox) or self._resend_open) and time.monotonic() < end:
            self._take_acks()
            retry = self._drain(time.monotonic())
            self._wake.wait(min(0.05, retry or 0.05))
            self._wake.clear()
        self._take_acks()
        self._say_offline()
        self._stop_parts()
        self._write_status(state="stopped")
        log.info(
            "stopped: %d sent, %d acknowledged, %d left in the outbox",
            self.sent,
            self.acked,
            len(self.outbox),
        )
        self.outbox.close()

    # -- status -----------------------------------------------------------------------
    def status(self, state: str | None = None) -> dict[str, Any]:
        ob, link = self.outbox, self.link or self._last_link
        oldest = ob.oldest_ts() if ob is not None and len(ob) else None
        return {
            "device": self.cfg.device,
            "pid": os.getpid(),
            "state": state or "running",
            "updated": time.time(),
            "started": self.started,
            "config": self.cfg.source,
            "broker": str(link.broker) if link else self.cfg.broker.url,
            "connected": bool(self.link and self.link.connected),
            "connects": link.connects if link else 0,
            "last_error": link.last_error if link else None,
            "outbox": {
                "depth": len(ob) if ob is not None else 0,
                "oldest_age_s": None if oldest is None else round(time.time() - oldest, 1),
                "next_seq": ob.next_seq if ob is not None else None,
                "in_flight": len(self._inflight) if self.link and self.link.connected else 0,
                "dropped_full": ob.dropped_full if ob is not None else 0,
                "dropped_age": ob.dropped_age if ob is not None else 0,
                "not_sampled": ob.not_sampled if ob is not None else 0,
                "failed": ob.failed if ob is not None else 0,
                "unremoved": ob.unremoved if ob is not None else 0,
                "kept": ob.kept if ob is not None else 0,
                "error": ob.error if ob is not None else None,
            },
            "sent": self.sent,
            "acked": self.acked,
            "resent": ob.resent if ob is not None else 0,
            "refused": self.refused,
            "refusal": self.refusal if time.monotonic() < self._paused_until else None,
            "forecaster": self.jobs.status() if self.jobs is not None else self._last_jobs,
        }

    def _write_status(self, state: str | None = None) -> None:
        path = status_path(self.cfg)
        try:
            write_status(path, self.status(state))
        except OSError as exc:
            if not self._status_failing:
                log.warning("cannot write %s: %s (until it works again)", path, exc)
            self._status_failing = True
        else:
            self._status_failing = False
