"""The device's forecaster on a cloud node, and the jobs that use it.

Only a stub of the class, addressed by name: the board never holds model
code. Setup (find or create the object by alias, feed it the device's
metrics) runs in its own thread and retries until the deployment answers, so
a board that boots offline samples from its first second. Calls are futures:
sampling never waits for the cloud.

After each training the agent fetches the model's edge export and keeps it in
the state directory (:mod:`._edgemodel`); each forecast then runs where a
:class:`continuum_mqtt.Offloader` says: on the node, or on the board (pure
Python) while the link is down, the node busy or too slow. Forecasts and
alerts say where they ran (``where``, ``offline``); those that cannot be
published wait in :mod:`._eventqueue` for the link.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import continuum_mqtt
from continuum_mqtt import Offloaded, Offloader
from continuum_mqtt.samples import SERIES_TOO_SHORT
from continuum_mqtt.service import new_client_id

from ._config import AgentConfig, ConfigError
from ._edgemodel import EdgeModelStore
from ._eventqueue import EventQueue
from ._link import backoff_delay

__all__ = ["Jobs"]

# The largest reply the broker may push onto the board (a forecast is ~100
# bytes, a training report with 10,000 epochs of losses ~200 KiB).
MAX_REPLY = 4 << 20

log = logging.getLogger("edgeagent")

WINDOW = 32  # rows sent with each forecast request (the model uses its lookback of them)


class NotOurs(Exception):
    """The forecaster alias names an object another account owns."""


class Jobs:
    """Forecast, train and alert jobs for one device."""

    def __init__(
        self, cfg: AgentConfig, publish: Callable[[str, dict[str, Any], bool], bool]
    ) -> None:
        self.cfg = cfg
        self._publish = publish
        self.events = EventQueue(cfg.state_dir)
        self.store = EdgeModelStore(cfg.state_dir) if cfg.jobs.edge_fallback else None
        self.model = self.store.load() if self.store is not None else None
        self.offload = Offloader(
            self._predict_local if self.model is not None else None,
            deadline=cfg.jobs.forecast_deadline,
        )
        self._fetching = False
        self.client: continuum_mqtt.Client | None = None
        self.proxy: Any = None
        self.state = "starting"  # starting, ready, error text
        self.trained = False
        self._training = False
        self._forecasting = False
        self._next_train = cfg.jobs.train_after
        self._last_train_n = 0
        self._last_train_t = time.monotonic()
        self._n = 0  # samples seen since start
        self._window: deque[list[float]] = deque(maxlen=WINDOW)
        self._pending: dict[str, Any] | None = None  # forecast for the next sample
        self.last_forecast: dict[str, Any] | None = None
        self.last_alert: dict[str, Any] | None = None
        self.counts = {"forecasts": 0, "trains": 0, "alerts": 0, "errors": 0}
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # -- setup ---------------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._setup, name="edgeagent-forecaster-setup", daemon=True).start()

    def _lost(self, exc: BaseException) -> bool:
        """The object is gone (deleted by an operator): find or create it again."""
        if not isinstance(exc, continuum_mqtt.UnknownObject) or self._stop.is_set():
            return False
        with self._lock:
            if self.proxy is None:
                return True  # already being set up again
            self.proxy = None
            self.state = "lost; setting it up again"
        log.warning("forecaster %s is gone: setting it up again", self.cfg.alias)
        self.trained = False
        self._next_train = self._n + self.cfg.jobs.train_after
        self.start()
        return True

    def _setup(self) -> None:
        f = self.cfg.forecaster
        attempt = 0
        taken = False  # the alias was taken once already
        while not self._stop.is_set():
            try:
                client = self.client or self._connect()
                try:
                    proxy = client.get(self.cfg.alias)
                    if client.broker.username and proxy._owner not in (
                        None,
                        client.broker.username,
                    ):
                        raise NotOurs(
                            f"forecaster {self.cfg.alias} ({proxy._id}) belongs to "
                            f"{proxy._owner}, not to this device's account: not using it"
                        )
                    log.info("forecaster %s found (%s)", self.cfg.alias, proxy._id)
                except continuum_mqtt.UnknownObject:
                    kwargs: dict[str, Any] = dict(f.args)
                    if f.node:
                        kwargs["node"] = f.node
                    if f.replicas:
                        kwargs["replicas"] = f.replicas
                    proxy = client.stub(f.class_).create(alias=self.cfg.alias, **kwargs)
                    log.info("forecaster %s created (%s)", self.cfg.alias, proxy._id)
                client.bind_metrics(proxy, self.cfg.device, "ingest")
                try:
                    info = proxy.info()
                    self.trained = bool(info.get("trained"))
                    model = self.model
                    if self.trained and (model is None or model.state_hash != info["state_hash"]):
                        self._fetch_export(proxy)  # trained while this agent was away
                except (continuum_mqtt.ContinuumError, KeyError):
                    pass
                with self._lock:
                    self.proxy = proxy
                    self.state = "ready"
                log.info(
                    "device %s feeds %s.ingest%s",
                    self.cfg.device,
                    self.cfg.alias,
                    " (already trained)" if self.trained else "",
                )
                return
            except continuum_mqtt.AliasTaken:
                if not taken:  # another agent run created it meanwhile: look again
                    taken = True
                    continue
                # still taken, by an object this account cannot see: an
                # operator must sort it out (docs/security.md)
                why = f"alias {self.cfg.alias} names an object of another account"
                attempt += 1
                if self._retry_later(attempt - 1, why, logging.ERROR):
                    return
            except (continuum_mqtt.ContinuumError, OSError, ConfigError, NotOurs) as exc:
                attempt += 1
                if self._retry_later(attempt - 1, f"{type(exc).__name__}: {exc}"):
                    return

    def _retry_later(self, attempt: int, why: str, level: int = logging.WARNING) -> bool:
        """Say why the setup failed and wait before the next try; True: stopping."""
        self.state = f"setup failed: {why}"
        delay = backoff_delay(attempt, 1.0, 60.0)
        log.log(level, "forecaster setup: %s; retrying in %.1f s", why, delay)
        return self._stop.wait(delay)

    def _connect(self) -> continuum_mqtt.Client:
        """A connected client, made with the credentials as they are now (the
        password file may have changed since the last failed attempt)."""
        client = continuum_mqtt.Client(
            self.cfg.broker_url(),
            root=self.cfg.broker.root,
            timeout=self.cfg.forecaster.timeout,
            # a fresh id each time: its reply topic cannot be guessed (protocol.md §21)
            client_id=new_client_id(f"edgeagent-{self.cfg.device}-calls"),
            max_reply=MAX_REPLY,
            ca_file=self.cfg.broker.ca_file or None,
        )
        client.connect()
        self.client = client
        return client

    def stop(self) -> None:
        self._stop.set()
        if self.client is not None:
            self.client.close()

    # -- per sample (the agent's thread) --------------------------------------------
    def publish(self, kind: str, body: dict[str, Any], retain: bool) -> None:
        """Publish now, after what waits in the event queue; else queue it."""
        self.events.send(self._publish, kind, body, retain)

    def on_sample(self, seq: int, ts: float, metrics: dict[str, Any]) -> None:
        self._n += 1
        row = [float(metrics["cpu"]), float(metrics["mem"])]
        self._window.append(row)
        if self.events:
            self.events.flush(self._publish)
        self._check_alert(seq, ts, row)
        j = self.cfg.jobs
        proxy = self.proxy
        if proxy is None:
            if self.model is not None and j.forecast_every and self._n % j.forecast_every == 0:
                self._local_forecast(seq, "no_object")  # not set up yet: the board's model
            return
        now = time.monotonic()
        if not self._training:
            since = self._n - self._last_train_n
            if not self.trained:
                if j.train_after and self._n >= self._next_train:
                    self._train(proxy)
            elif (j.train_every and since >= j.train_every) or (
                j.train_interval and now - self._last_train_t >= j.train_interval
            ):
                self._train(proxy)
        if (
            self.trained
            and j.forecast_every
            and self._n % j.forecast_every == 0
            and not self._forecasting
        ):
            self._forecast(seq, proxy)

    def _error(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self.counts["errors"] += 1
            self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)

    def _train(self, proxy: Any) -> None:
        self._training = True
        self._last_train_n = self._n
        self._last_train_t = time.monotonic()
        t0 = time.monotonic()
        log.info("training %s remotely (%d samples seen)", self.cfg.alias, self._n)
        fut: Future[Any] = proxy.train.future(epochs=self.cfg.jobs.train_epochs)

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            self._training = False
            if exc is None:
                res = f.result()
                self.trained = True
                self._fetch_export(proxy)
                with self._lock:
                    self.counts["trains"] += 1
                log.info(
                    "trained %s in %.1f s (final loss %.4g)",
                    self.cfg.alias,
                    time.monotonic() - t0,
                    res.get("final_loss", float("nan")) if isinstance(res, dict) else float("nan"),
                )
            elif self._lost(exc):
                pass
            elif getattr(exc, "code", None) == SERIES_TOO_SHORT and not self.trained:
                # the node has not ingested enough of the series yet
                self._next_train = self._n + max(4, self.cfg.jobs.train_after // 4)
                log.info("series still too short on the node; training again later")
            else:
                self._error("train", exc)
                if not self.trained:  # not at every sample: after as many again
                    self._next_train = self._n + max(4, self.cfg.jobs.train_after)

        fut.add_done_callback(done)

    # -- the edge model -------------------------------------------------------------
    def _predict_local(self, window: list[list[float]]) -> list[float]:
        model = self.model
        if model is None:
            raise RuntimeError("no edge model")
        return model.predict(window)

    def _fetch_export(self, proxy: Any) -> None:
        """Fetch the model's edge export, keep it, forecast with it when offloading."""
        if self.store is None or self._fetching:
            return
        self._fetching = True
        store = self.store

        def done(f: Future[Any]) -> None:
            self._fetching = False
            exc = f.exception()
            if exc is None:
                try:
                    self.model = store.save(f.result())
                except (ValueError, OSError) as e:  # ExportError is a ValueError
                    exc = e
                else:
                    self.offload.local = self._predict_local
                    log.info("edge model %s stored", self.model.state_hash[:12])
                    return
            if not self._lost(exc):
                self._error("edge_export", exc)

        proxy.edge_export.future().add_done_callback(done)

    # -- forecasts ----------------------------------------------------------------
    def _local_forecast(self, seq: int, reason: str) -> None:
        try:
            res = self.offload.run_local(reason, list(self._window))
        except (ValueError, RuntimeError) as exc:  # fewer rows than the look-back
            self._error("forecast", exc)
            return
        self._published_forecast(seq, res)

    def _forecast(self, seq: int, proxy: Any) -> None:
        self._forecasting = True
        window = list(self._window)
        fut = self.offload.submit(proxy.predict, window, deadline=self.cfg.jobs.forecast_deadline)

        def done(f: Future[Offloaded]) -> None:
            self._forecasting = False
            exc = f.exception()
            if exc is not None:
                if not self._lost(exc):
                    self._error("forecast", exc)
                return
            self._published_forecast(seq, f.result())

        fut.add_done_callback(done)

    def _published_forecast(self, seq: int, res: Offloaded) -> None:
        cpu, mem = (float(v) for v in res.value)
        body: dict[str, Any] = {
            "dev": self.cfg.device,
            "after_seq": seq,
            "ts": time.time(),
            "cpu": cpu,
            "mem": mem,
            "band": self.cfg.jobs.alert_band,
            "where": res.where,
            "offline": res.local,
        }
        if res.local:
            body["reason"] = res.reason
            body["model"] = self.model.state_hash if self.model is not None else None
        with self._lock:
            self.counts["forecasts"] += 1
            self.last_forecast = body
            self._pending = body
        self.publish("forecast", body, True)
        log.debug("forecast after #%d (%s): cpu %.1f%% mem %.1f%%", seq, res.where, cpu, mem)

    def _check_alert(self, seq: int, ts: float, row: list[float]) -> None:
        with self._lock:
            fc, self._pending = self._pending, None
        band = self.cfg.jobs.alert_band
        if fc is None or not band or seq != fc["after_seq"] + 1:
            return
        for name, actual in zip(("cpu", "mem"), row, strict=True):
            expected = fc[name]
            if abs(actual - expected) > band:
                alert = {
                    "dev": self.cfg.device,
                    "seq": seq,
                    "ts": ts,
                    "metric": name,
                    "actual": actual,
                    "forecast": expected,
                    "band": band,
                    "where": fc.get("where", "remote"),
                    "offline": bool(fc.get("offline")),
                }
                with self._lock:
                    self.counts["alerts"] += 1
                    self.last_alert = alert
                log.warning(
                    "ALERT %s %s = %.1f outside forecast %.1f +- %.1f",
                    self.cfg.device,
                    name,
                    actual,
                    expected,
                    band,
                )
                self.publish("alert", alert, False)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "alias": self.cfg.alias,
                "object": None if self.proxy is None else self.proxy._id,
                "state": self.state,
                "trained": self.trained,
                "samples_seen": self._n,
                **self.counts,
                "last_forecast": self.last_forecast,
                "last_alert": self.last_alert,
                "last_error": self.last_error,
                "offload": self.offload.stats(),
                "edge_model": None
                if self.model is None
                else {"state_hash": self.model.state_hash, "trained_rows": self.model.trained_rows},
                "events_queued": len(self.events),
                "events_dropped": self.events.dropped,
            }
