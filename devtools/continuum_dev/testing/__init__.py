"""Testing continuum and services written on it: the public testing module.

* :class:`LocalBroker`: a mosquitto on a free port with the settings continuum
  depends on (:data:`BROKER_SETTINGS`; :data:`PERSISTENCE_SETTINGS` with a
  persistence folder);
* :class:`Deployment`: one parameterised spawner of a gateway, cloud nodes,
  edge agents (:class:`Agent`) and firmware-sim as child processes, each
  started with die-with-parent (:func:`die_with_parent`), on a broker given or
  one of its own;
* probes: :func:`wait_for`, :func:`wait_status`, :func:`wait_line`,
  :func:`rss_mb`, :func:`import_guard`, and on a :class:`Deployment`
  :meth:`~Deployment.client` (a client of it), :meth:`~Deployment.wait_nodes`,
  :meth:`~Deployment.wait_gateway`;
* :func:`launch_chromium`: Debian's chromium under Playwright, headless;
* the toolkit's in-process fakes, :class:`FakeTransport` and :class:`FakeBus`;
* a pytest plugin (:mod:`continuum_dev.testing.plugin`, loaded through the
  ``pytest11`` entry point of continuum-mqtt-dev) with the fixtures
  ``broker``, ``cluster``, ``deployment`` and ``bare_cluster``.

docs/testing.md is the guide.
"""

from __future__ import annotations

from continuum_mqtt.service import FakeBus, FakeTransport

from ._agent import Agent, toml_text
from ._broker import BROKER_SETTINGS, PERSISTENCE_SETTINGS, LocalBroker, find_mosquitto, free_port
from ._browser import CHROMIUM, CHROMIUM_ARGS, launch_chromium
from ._deployment import Deployment
from ._probes import import_guard, rss_mb, wait_for, wait_line, wait_status
from ._process import child_env, die_with_parent, preexec, stop_process

__all__ = [
    "BROKER_SETTINGS",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "PERSISTENCE_SETTINGS",
    "Agent",
    "Deployment",
    "FakeBus",
    "FakeTransport",
    "LocalBroker",
    "child_env",
    "die_with_parent",
    "find_mosquitto",
    "free_port",
    "import_guard",
    "launch_chromium",
    "preexec",
    "rss_mb",
    "stop_process",
    "toml_text",
    "wait_for",
    "wait_line",
    "wait_status",
]
