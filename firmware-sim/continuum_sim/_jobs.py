"""The cloud-side jobs of simulated boards (``firmware-sim run --jobs``).

For a subset of the fleet, as a real device's operator would: create a
``continuum_node.forecast.Forecaster`` per device, bind the device's metrics feed to
its ``ingest`` method (the node is fed by the broker, not by us), train it
remotely once the series is long enough (and again every ``train_every``
samples), and ask for a forecast every ``forecast_every`` samples. Calls are
futures, so many are in flight at once; the publishing loop never waits for
them (a call over the in-flight bound is counted as skipped).
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from continuum_mqtt.samples import SERIES_TOO_SHORT

__all__ = ["JobConfig", "Jobs"]


@dataclass
class JobConfig:
    devices: int = 16  # how many devices get a forecaster; 0: all
    cls: str = "continuum_node.forecast.Forecaster"
    node: str | None = None
    train_after: int = 48  # samples of a device before its first training
    train_every: int = 0  # retrain every this many samples (0: once)
    epochs: int = 5
    forecast_every: int = 12  # a forecast every this many samples, once trained
    max_inflight: int = 64
    timeout: float = 60.0
    keep: bool = False  # keep the objects after the run
    torch_device: str = "cpu"
    setup_threads: int = 8


class _Dev:
    __slots__ = ("alias", "n", "next_train", "proxy", "retries", "trained", "training")

    def __init__(self, alias: str, train_after: int) -> None:
        self.alias = alias
        self.proxy: Any = None
        self.trained = False
        self.training = False
        self.retries = 0
        self.n = 0  # samples published
        self.next_train = train_after


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


class Jobs:
    """Forecasters for the devices ``indices`` of ``ids``, through a continuum_mqtt.Client."""

    def __init__(
        self,
        cfg: JobConfig,
        broker: str,
        root: str,
        ids: list[str],
        seq_start: int = 1,
    ) -> None:
        import continuum_mqtt  # only with --jobs: publishing alone never needs the client

        self.cfg = cfg
        self.ids = ids
        self.seq_start = seq_start
        n = len(ids)
        m = n if cfg.devices <= 0 else min(cfg.devices, n)
        self.indices = sorted({i * n // m for i in range(m)})
        run = uuid.uuid4().hex[:6]
        self.devs: dict[int, _Dev] = {
            i: _Dev(f"fsim-{run}-{ids[i]}", cfg.train_after) for i in self.indices
        }
        self.client = continuum_mqtt.Client(
            broker, root=root, timeout=cfg.timeout, client_id=f"firmware-sim-jobs-{run}"
        )
        self._lock = threading.Lock()
        self.inflight = 0
        self.created = 0
        self.bound = 0
        self.trains_ok = 0
        self.trains_err = 0
        self.train_retries = 0
        self.forecasts_ok = 0
        self.forecasts_err = 0
        self.skipped = 0
        self.errors: list[str] = []
        self.train_s: list[float] = []
        self.forecast_ms: list[float] = []
        self.setup_s = 0.0
        self.forecasts: dict[str, list[float]] = {}  # last forecast of each device

    # -- setup / teardown ------------------------------------------------------------
    def start(self) -> None:
        """Connect, create and bind every forecaster (before any sample is sent,
        so the objects see each device's series from its first sample)."""
        t0 = time.monotonic()
        self.client.connect()
        stub = self.client.stub(self.cfg.cls)
        kwargs: dict[str, Any] = {"alias": None}
        if self.cfg.node:
            kwargs["node"] = self.cfg.node

        def one(i: int) -> None:
            dev = self.devs[i]
            proxy = stub.create(device=self.cfg.torch_device, **{**kwargs, "alias": dev.alias})
            with self._lock:
                self.created += 1
            self.client.bind_metrics(proxy, self.ids[i], "ingest")
            dev.proxy = proxy
            with self._lock:
                self.bound += 1

        with ThreadPoolExecutor(self.cfg.setup_threads, thread_name_prefix="fsim-setup") as pool:
            for f in [pool.submit(one, i) for i in self.indices]:
                f.result()
        self.setup_s = time.monotonic() - t0

    def drain(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.inflight and time.monotonic() < end:
            time.sleep(0.05)

    def close(self) -> None:
        try:
            if not self.cfg.keep and self.client._conn is not None:
                with ThreadPoolExecutor(self.cfg.setup_threads) as pool:
                    for f in [
                        pool.submit(self.client.delete, d.proxy)
                        for d in self.devs.values()
                        if d.proxy is not None
                    ]:
                        try:
                            f.result()
                        except Exception as exc:  # leave the rest to clean up
                            self._error(f"delete: {exc}")
        finally:
            self.client.close()

    # -- per sample (publishing thread) ------------------------------------------------
    def on_sample(self, i: int, seq: int) -> None:
        dev = self.devs[i]
        cfg = self.cfg
        dev.n = n = seq - self.seq_start + 1
        if dev.training:
            return
        if not dev.trained:
            if n >= dev.next_train:
                self._train(dev)
        elif cfg.train_every and n % cfg.train_every == 0:
            self._train(dev)
        elif cfg.forecast_every and n % cfg.forecast_every == 0:
            self._forecast(i, dev)

    def _admit(self) -> bool:
        with self._lock:
            if self.inflight >= self.cfg.max_inflight:
                self.skipped += 1
                return False
            self.inflight += 1
            return True

    def _train(self, dev: _Dev) -> None:
        if dev.proxy is None or not self._admit():
            return
        dev.training = True
        t0 = time.monotonic()
        fut: Future[Any] = dev.proxy.train.options(timeout=self.cfg.timeout).future(
            epochs=self.cfg.epochs
        )

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            with self._lock:
                self.inflight -= 1
                dev.training = False
                if exc is None:
                    dev.trained = True
                    self.trains_ok += 1
                    self.train_s.append(time.monotonic() - t0)
                elif (
                    getattr(exc, "code", None) == SERIES_TOO_SHORT
                    and not dev.trained
                    and dev.retries < 100
                ):
                    # the node has not ingested enough samples yet: try again a bit later
                    dev.retries += 1
                    dev.next_train = dev.n + 4
                    self.train_retries += 1
                else:
                    self.trains_err += 1
                    self._error_locked(f"train {dev.alias}: {type(exc).__name__}: {exc}")

        fut.add_done_callback(done)

    def _forecast(self, i: int, dev: _Dev) -> None:
        if not self._admit():
            return
        t0 = time.monotonic()
        fut: Future[Any] = dev.proxy.predict.future()

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            with self._lock:
                self.inflight -= 1
                if exc is None:
                    self.forecasts_ok += 1
                    self.forecast_ms.append((time.monotonic() - t0) * 1000.0)
                    self.forecasts[self.ids[i]] = f.result()
                else:
                    self.forecasts_err += 1
                    self._error_locked(f"predict {dev.alias}: {type(exc).__name__}: {exc}")

        fut.add_done_callback(done)

    def _error(self, msg: str) -> None:
        with self._lock:
            self._error_locked(msg)

    def _error_locked(self, msg: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(msg)

    # -- reporting -------------------------------------------------------------------
    @property
    def error_count(self) -> int:
        return self.trains_err + self.forecasts_err

    def line(self) -> str:
        return (
            f"jobs {len(self.devs)}: train {self.trains_ok} ok/{self.trains_err} err, "
            f"forecast {self.forecasts_ok} ok/{self.forecasts_err} err, "
            f"in flight {self.inflight}"
        )

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "devices": len(self.devs),
                "class": self.cfg.cls,
                "setup_s": round(self.setup_s, 3),
                "created": self.created,
                "bound": self.bound,
                "trains_ok": self.trains_ok,
                "trains_err": self.trains_err,
                "train_retries": self.train_retries,
                "train_s_p50": _percentile(self.train_s, 0.5),
                "forecasts_ok": self.forecasts_ok,
                "forecasts_err": self.forecasts_err,
                "forecast_ms_p50": _percentile(self.forecast_ms, 0.5),
                "forecast_ms_p99": _percentile(self.forecast_ms, 0.99),
                "skipped_over_inflight_bound": self.skipped,
                "in_flight_at_end": self.inflight,
                "errors": list(self.errors),
                "objects": {self.ids[i]: d.alias for i, d in self.devs.items()},
                "last_forecasts": dict(list(self.forecasts.items())[:10]),
            }
