"""Stateless classes are served by a pool of nodes through a shared subscription."""

from __future__ import annotations

import hashlib

import pytest

import continuum_mqtt

from ._cluster import Cluster

HASHER = "examples.pool.Hasher"


def test_pool_calls_spread_over_the_nodes_hosting_the_class(bare_cluster: Cluster) -> None:
    c = bare_cluster
    c.start_gateway()
    for n in ("n1", "n2"):
        c.start_node(n, modules=("examples.pool",))
    with c.client() as client:
        assert client.classes()[HASHER]["stateless"] is True
        pool = client.pool(HASHER)
        pids = {f.result() for f in [pool.whoami.future() for _ in range(200)]}
        assert len(pids) == 2  # both nodes served
        expected = b"x"
        for _ in range(3):
            expected = hashlib.sha256(expected).digest()
        assert pool.digest(b"x", rounds=3) == expected.hex()
        with pytest.raises(continuum_mqtt.BadArguments):
            pool.digest()
        # a node leaving the pool: the other serves everything
        c.stop("n2")
        assert len({pool.whoami() for _ in range(20)}) == 1


def test_pool_in_local_mode() -> None:
    with continuum_mqtt.connect("local:") as client:
        assert client.pool(HASHER).digest(b"x", rounds=1) == hashlib.sha256(b"x").hexdigest()
        with pytest.raises(continuum_mqtt.UnknownClass):
            client.pool("examples.counter.Counter").get()
