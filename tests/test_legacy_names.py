"""continuum 0.1.0 installed the import names cloudnode, gateway, edgeagent and
firmware_sim; today every name carries the continuum_ prefix. What 0.1.0 wrote
still works: tests/data/legacy-0.1 is a directory and a node state dir written
by 0.1.0 (a Forecaster as ``cloudnode.forecast.Forecaster`` fed 30 rows, and a
Counter at 7), and an edge agent's config may still name the old class path."""

from __future__ import annotations

import shutil

from continuum_mqtt.service import canonical_class_path

from ._cluster import REPO, Cluster

LEGACY = REPO / "tests" / "data" / "legacy-0.1"
OLD, NEW = "cloudnode.forecast.Forecaster", "continuum_node.forecast.Forecaster"


def test_canonical_class_path() -> None:
    assert canonical_class_path(OLD) == NEW
    assert canonical_class_path(NEW) == NEW
    assert canonical_class_path("examples.counter.Counter") == "examples.counter.Counter"
    assert canonical_class_path("cloudnode") == "cloudnode"  # not a class path
    assert canonical_class_path("cloudnodes.x.Y") == "cloudnodes.x.Y"


def test_a_0_1_directory_and_state_dir_load_under_the_new_names(bare_cluster: Cluster) -> None:
    c = bare_cluster
    shutil.copy(LEGACY / "directory.db", c.db)
    shutil.copytree(LEGACY / "n1", c.tmp / "n1")
    c.start_gateway()
    c.start_node(
        "n1",
        modules=("examples.counter", "continuum_node.forecast"),
        state_dir=c.tmp / "n1",
    )
    with c.client() as client:
        classes = {a: o["class"] for o in client.objects() for a in o["aliases"]}
        assert classes == {"forecaster-legacy": NEW, "counter-legacy": "examples.counter.Counter"}
        f = client.stub(OLD).get("forecaster-legacy")  # an old agent config's class path
        assert f.tail(2) == [[10.0, 43.0], [11.0, 44.0]]  # the checkpoint and its journal
        assert f.append([[1.0, 2.0]]) == 31
        assert client.get("counter-legacy").get() == 7
        created = client.stub(OLD).create(alias="forecaster-new")
        assert created._class_path == NEW
        assert {o["id"] for o in client.stub(OLD).objects()} == {f._id, created._id}
    log = c.log("n1")
    assert "restored 2 object(s)" in log and ", 0 quarantined" in log, log[-2000:]
