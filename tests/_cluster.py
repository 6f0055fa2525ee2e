"""Real processes for the integration tests: continuum_dev.testing's Deployment
(named Cluster here) and its probes. The fixtures ``broker``, ``cluster`` and
``bare_cluster`` come from its pytest plugin (docs/testing.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from continuum_dev.testing import Deployment as Cluster
from continuum_dev.testing import wait_for, wait_status

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "Cluster", "start_durable", "wait_for", "wait_status"]


def start_durable(c: Cluster, node: str = "n1", *extra: str, **kw: Any) -> str:
    """Start ``node`` durable, its state dir ``<deployment tmp>/<node>-state``;
    returns that dir (to start it again on)."""
    state = str(c.tmp / f"{node}-state")
    c.start_node(node, "--state-dir", state, *extra, **kw)
    return state
