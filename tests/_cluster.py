"""Real processes for the integration tests: continuum_dev.testing's Deployment
(named Cluster here) and its probes. The fixtures ``broker``, ``cluster`` and
``bare_cluster`` come from its pytest plugin (docs/testing.md)."""

from __future__ import annotations

from pathlib import Path

from continuum_dev.testing import Deployment as Cluster
from continuum_dev.testing import wait_for, wait_status

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "Cluster", "wait_for", "wait_status"]
