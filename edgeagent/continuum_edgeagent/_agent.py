"""``edgeagent run``: the daemon on each board.

One thread samples, stores, sends and keeps the books (no locks on the hot
path); the link's thread owns the MQTT connection; the jobs run as futures of
a continuum_mqtt.Client. Samples go to the outbox first, leave it on PUBACK, and
are sent in sequence order at a bounded rate. An acknowledged sample stays
``[outbox] resend_window`` seconds more: after a reconnect those acknowledged
within that window before the connection was lost are sent again first (a
broker that crashed may have lost them), then the unacknowledged ones.

This module wires the parts and runs the loop (and reload, shutdown, the
status); the sampling side is :mod:`._recorder`, the sending side
:mod:`._sender`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Any

from continuum_mqtt.service import Topics, encode, private_client_id, sd_notify

from ._config import AgentConfig, ConfigError, load
from ._link import Link
from ._metrics import Sampler
from ._outbox import Outbox
from ._recorder import Recorder
from ._sender import Sender
from ._statedir import StateError, open_outbox
from ._statusfile import write_status

__all__ = ["Agent", "status_path"]

log = logging.getLogger("edgeagent")

AGE_CHECK_EVERY = 60.0  # seconds between max_age sweeps of the outbox
BACKLOG = 5  # samples waiting: from this many, the retained status goes out every status_interval
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
        self.recorder = Recorder()  # samples into the outbox
        self.sender = Sender()  # the outbox over the link
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reload = False
        self._signal: int | None = None
        self._status_failing = False
        self._published_counts: tuple[int, ...] | None = None

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
            private_client_id(f"edgeagent-{cfg.device}", broker),
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

    def _publish_event(self, kind: str, body: dict[str, Any], retain: bool) -> bool:
        """Forecasts and alerts of the jobs; False: not connected (the jobs queue it)."""
        link = self.link
        return (
            link is not None
            and link.publish(self._topic(kind), encode(body), retain=retain) is not None
        )

    def _counts(self) -> tuple[int, ...]:
        """What a republished status follows: the counts, and the outbox depth
        while it is BACKLOG or more (protocol §23)."""
        ob = self.outbox
        if ob is None:
            return (0, 0, 0, 0)
        depth = len(ob)
        return (ob.failed, ob.dropped, ob.resent, depth if depth >= BACKLOG else 0)

    def _device_status(self, state: str) -> dict[str, Any]:
        ob, link = self.outbox, self.link or self._last_link
        depth = len(ob) if ob is not None else 0
        return {
            "state": state,
            "dev": self.cfg.device,
            "ts": time.time(),
            "pid": os.getpid(),
            "failed": ob.failed if ob is not None else 0,
            "dropped": ob.dropped if ob is not None else 0,
            "resent": ob.resent if ob is not None else 0,
            "outbox": depth,
            "oldest": ob.oldest_ts() if ob is not None and depth else None,
            "connects": link.connects if link is not None else 0,
        }

    def _publish_counts(self) -> None:
        """The retained ``online`` status again when failed, dropped or resent
        changed, or while samples back up in the outbox."""
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
        taken = self.recorder.sample(self.outbox, self.sampler, self.cfg, len(self.sender.inflight))
        if taken is not None and self.jobs is not None:
            self.jobs.on_sample(*taken)

    def _take_acks(self) -> None:
        assert self.link is not None and self.outbox is not None
        self.sender.take_acks(self.link, self.outbox, self._metrics_topic)

    def _drain(self, now: float) -> float | None:
        """Send what the rate and in-flight bounds allow; seconds until more may go."""
        assert self.link is not None and self.outbox is not None
        return self.sender.drain(self.link, self.outbox, self.cfg.outbox, self._metrics_topic, now)

    def _sweep(self) -> None:
        assert self.outbox is not None
        self.recorder.sweep(self.outbox, self.cfg.outbox)

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
        self.sender.reset()
        self._start_parts()

    def _shutdown(self) -> None:
        sd_notify("STOPPING=1")
        link, ob = self.link, self.cfg.outbox
        assert link is not None and self.outbox is not None
        if self._signal is not None:
            log.info("signal %d: flushing the outbox, then stopping", self._signal)
        end = time.monotonic() + ob.flush_timeout
        while (
            link.connected
            and (len(self.outbox) or self.sender.resend_open)
            and time.monotonic() < end
        ):
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
            self.sender.sent,
            self.sender.acked,
            len(self.outbox),
        )
        self.outbox.close()

    # -- status -----------------------------------------------------------------------
    def status(self, state: str | None = None) -> dict[str, Any]:
        ob, link, sender = self.outbox, self.link or self._last_link, self.sender
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
                "in_flight": len(sender.inflight) if self.link and self.link.connected else 0,
                "dropped_full": ob.dropped_full if ob is not None else 0,
                "dropped_age": ob.dropped_age if ob is not None else 0,
                "not_sampled": ob.not_sampled if ob is not None else 0,
                "failed": ob.failed if ob is not None else 0,
                "unremoved": ob.unremoved if ob is not None else 0,
                "kept": ob.kept if ob is not None else 0,
                "error": ob.error if ob is not None else None,
            },
            "sent": sender.sent,
            "acked": sender.acked,
            "resent": ob.resent if ob is not None else 0,
            "refused": sender.refused,
            "refusal": sender.refusal if time.monotonic() < sender.paused_until else None,
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
