from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from continuum._devbroker import LocalBroker, find_mosquitto

from ._cluster import Cluster


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One real mosquitto for the session; tests isolate by topic root."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is required for the integration tests (scripts/setup installs it)")
    with LocalBroker() as b:
        yield b


@pytest.fixture
def cluster(broker: LocalBroker, tmp_path: Path) -> Iterator[Cluster]:
    """A gateway and one node 'n1' hosting examples.counter, as real processes."""
    c = Cluster(broker.url, tmp_path)
    try:
        c.start_gateway()
        c.start_node("n1")
        yield c
    finally:
        c.close()


@pytest.fixture
def bare_cluster(broker: LocalBroker, tmp_path: Path) -> Iterator[Cluster]:
    """Nothing started yet: the test starts what it needs."""
    c = Cluster(broker.url, tmp_path)
    try:
        yield c
    finally:
        c.close()
