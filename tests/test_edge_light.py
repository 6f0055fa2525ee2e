"""The edge side never imports torch, numpy, pandas or cloudpickle."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from continuum_dev.testing import import_guard

from ._cluster import REPO, Cluster

HEAVY = ("torch", "numpy", "pandas", "cloudpickle")

GUARD = import_guard(HEAVY, "edge code imported")


def run(script: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", GUARD + textwrap.dedent(script)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_edge_client_end_to_end_stays_light(cluster: Cluster) -> None:
    out = run(
        f"""
        import continuum_mqtt, edgeagent, continuum_edgeagent.__main__
        with continuum_mqtt.Client({cluster.url!r}, root={cluster.root!r}) as c:
            Counter = c.stub("examples.counter.Counter")
            obj = Counter.create(start=1, alias="edge")
            assert c.get("edge").add(2) == 3
            steps = []
            assert obj.count_to.options(on_progress=steps.append)(3) == 6 and len(steps) == 3
            assert obj.add.future(1).result() == 7
            c.nodes(); c.classes(); c.objects()
            c.delete(obj)
        loaded = [m for m in {HEAVY!r} if m in sys.modules]
        assert "examples.counter" not in sys.modules, "the class module was imported"
        print("heavy:", loaded)
        """
    )
    assert out.strip() == "heavy: []"


def test_edgeagent_call_cli(cluster: Cluster) -> None:
    with cluster.client() as c:
        c.stub("examples.counter.Counter").create(start=1, alias="cli")
    out = subprocess.run(
        [sys.executable, "-m", "continuum_edgeagent", "call", "--broker", cluster.url, "--root", cluster.root,
         "cli", "add", "[41]"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
    bad = subprocess.run(
        [sys.executable, "-m", "continuum_edgeagent", "call", "--broker", cluster.url, "--root", cluster.root,
         "cli", "reset"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "method_not_active" in bad.stderr


def test_importing_the_edge_side_is_light() -> None:
    out = run(
        f"""
        import continuum_mqtt, continuum_mqtt._client, continuum_mqtt._local, edgeagent, continuum_edgeagent.__main__
        import continuum_edgeagent._agent, continuum_edgeagent._jobs, continuum_edgeagent._link, continuum_edgeagent._metrics
        import continuum_edgeagent._outbox, continuum_edgeagent._config
        print([m for m in {HEAVY!r} if m in sys.modules])
        """
    )
    assert out.strip() == "[]"
