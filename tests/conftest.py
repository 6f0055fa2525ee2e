"""The fixtures ``broker`` (one mosquitto for the session), ``cluster`` (a
gateway and node n1 hosting examples.counter under a fresh topic root) and
``bare_cluster`` (nothing started) come from the pytest plugin of
continuum_dev.testing (devtools/, installed by scripts/setup; docs/testing.md).
Their processes run in the repository root, with it on PYTHONPATH.
``durable_cluster`` is ``cluster`` with n1 durable (:func:`tests._cluster.start_durable`)."""

from __future__ import annotations

import pytest

from ._cluster import Cluster, start_durable


@pytest.fixture
def durable_cluster(bare_cluster: Cluster) -> Cluster:
    """A gateway and node n1 with a state dir: ``start_durable(c)`` starts it
    again on the same one."""
    bare_cluster.start_gateway()
    start_durable(bare_cluster)
    return bare_cluster
