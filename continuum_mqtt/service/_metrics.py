"""Prometheus metrics for services: the ``--metrics-port`` / ``--metrics-host``
options, the HTTP endpoint, and :class:`CallMeter`, which counts and times the
replies of requests through :attr:`ReplyChannel.on_done`.

Optional: prometheus_client is imported only by :func:`metrics_registry` and
:class:`CallMeter`, i.e. only by a service started with ``--metrics-port``; a
service started without it never imports it (docs/metrics.md).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._reply import ReplyChannel

__all__ = [
    "CALL_BUCKETS",
    "CallMeter",
    "add_metrics_arguments",
    "metrics_registry",
    "start_metrics",
]

log = logging.getLogger("continuum.metrics")

# seconds: a call through the broker takes about 0.5 ms; training, minutes
CALL_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


def add_metrics_arguments(p: argparse.ArgumentParser) -> None:
    """--metrics-port and --metrics-host, as every service takes them."""
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics over HTTP on this port (needs the 'metrics' extra, "
        "prometheus_client; docs/metrics.md). Default: no endpoint, prometheus_client "
        "never imported",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics endpoint listens on (default: %(default)s; 0.0.0.0 for "
        "a Prometheus on another host)",
    )


def metrics_registry() -> CollectorRegistry:
    """A registry of its own (several services may share a test process) with
    the process, platform and garbage-collector metrics of prometheus_client."""
    from prometheus_client import (
        GC_COLLECTOR,
        PLATFORM_COLLECTOR,
        PROCESS_COLLECTOR,
        CollectorRegistry,
    )

    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def start_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``registry`` on ``http://host:port/metrics`` (a daemon thread);
    returns the server (``server_address``: the port when ``port`` is 0)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server


class CallMeter:
    """A counter ``total`` (labels ``labels`` and ``code``) and a histogram
    ``seconds`` (labels ``labels``) in ``registry``. :meth:`watch` puts a hook
    on a reply channel: when its final reply goes, the request is counted under
    its outcome code (``ok`` or the error's code) and its time since
    :meth:`watch` observed."""

    def __init__(
        self,
        registry: CollectorRegistry,
        total: str,
        seconds: str,
        labels: tuple[str, ...],
        what: str,
    ) -> None:
        from prometheus_client import Counter, Histogram

        self._total = Counter(
            total,
            f"{what} answered, by outcome code (ok, or the error's code)",
            [*labels, "code"],
            registry=registry,
        )
        self._seconds = Histogram(
            seconds,
            f"{what}: seconds from arrival to the final reply",
            list(labels),
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self._counts: dict[tuple[str, ...], Any] = {}  # label values -> child (no lock needed)
        self._times: dict[tuple[str, ...], Any] = {}

    def watch(self, chan: ReplyChannel, *labels: str) -> None:
        t0 = time.perf_counter()

        def done(code: str) -> None:
            elapsed = time.perf_counter() - t0
            key = (*labels, code)
            counter = self._counts.get(key)
            if counter is None:
                counter = self._counts[key] = self._total.labels(*key)
            counter.inc()
            hist = self._times.get(labels)
            if hist is None:
                hist = self._times[labels] = self._seconds.labels(*labels)
            hist.observe(elapsed)

        chan.on_done = done
