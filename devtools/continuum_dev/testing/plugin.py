"""The pytest plugin of continuum_dev.testing (entry point ``pytest11``:
``continuum_dev``; ``-p no:continuum_dev`` turns it off).

Fixtures:

* ``broker`` (session): one :class:`LocalBroker` for the whole run; tests
  isolate by topic root. mosquitto must be installed.
* ``cluster``: a :class:`Deployment` on it with a gateway and one node ``n1``
  hosting ``examples.counter``, under a fresh topic root, logs in ``tmp_path``.
* ``deployment`` (alias ``bare_cluster``): the same with nothing started.
* ``deployment_options``: keyword arguments of those deployments; by default
  children run in the rootdir of the pytest run, which is also put in front of
  their PYTHONPATH (so ``examples`` is found). Override it in a conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._broker import LocalBroker, find_mosquitto
from ._deployment import Deployment


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One real mosquitto for the session; tests isolate by topic root."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is required for the integration tests (scripts/setup installs it)")
    with LocalBroker() as b:
        yield b


@pytest.fixture
def deployment_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Keyword arguments of the ``deployment`` and ``cluster`` fixtures' Deployment."""
    return {"cwd": request.config.rootpath}


@pytest.fixture
def deployment(
    broker: LocalBroker, tmp_path: Path, deployment_options: dict[str, Any]
) -> Iterator[Deployment]:
    """Nothing started yet: the test starts what it needs."""
    d = Deployment(broker.url, tmp_path, **deployment_options)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def bare_cluster(deployment: Deployment) -> Deployment:
    """The ``deployment`` fixture, by the name the continuum tests use."""
    return deployment


@pytest.fixture
def cluster(deployment: Deployment) -> Deployment:
    """A gateway and one node 'n1' hosting examples.counter, as real processes."""
    deployment.start_gateway()
    deployment.start_node("n1")
    return deployment
