"""A cloud node without the forecaster needs no torch, numpy or pandas: the
``node`` extra alone runs any application class (the forecaster is an
application with its own extra, ``forecast``, as is ``continuum_node.ml``, extra ``ml``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from continuum_dev.testing import import_guard

from ._cluster import REPO, Cluster, wait_status

FORECAST_ONLY = ("torch", "numpy", "pandas")

GUARD = import_guard(FORECAST_ONLY, "the node imported")

IMPORT_ALL = textwrap.dedent(
    """
    import importlib, pkgutil
    import continuum_node, continuum_node.__main__
    def walk(path, prefix):
        for info in pkgutil.iter_modules(path, prefix):
            if info.name.split(".")[:2] in (["continuum_node", "forecast"], ["continuum_node", "ml"]):
                continue  # applications with extras of their own (forecast, ml)
            mod = importlib.import_module(info.name)
            if info.ispkg:
                walk(mod.__path__, info.name + ".")
    walk(continuum_node.__path__, "continuum_node.")
    import continuum_mqtt._invoke, continuum_mqtt._model, continuum_mqtt._local, continuum_mqtt.samples
    import examples.counter
    print(sorted(m for m in sys.modules if m.startswith("continuum_node")))
    """
)


def test_importing_the_node_needs_no_forecast_dependencies() -> None:
    out = subprocess.run(
        [sys.executable, "-c", GUARD + IMPORT_ALL],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    loaded = eval(out.stdout)
    assert "continuum_node._node" in loaded or len(loaded) > 3, loaded
    assert not any(m.startswith("continuum_node.forecast") for m in loaded)


def test_a_node_hosting_only_counter_runs_without_torch(bare_cluster: Cluster) -> None:
    c = bare_cluster
    c.start_gateway()
    script = c.tmp / "guarded_node.py"
    script.write_text(
        GUARD
        + "import runpy\n"
        + "sys.argv[0] = 'continuum-node'\n"
        + "runpy.run_module('continuum_node', run_name='__main__', alter_sys=True)\n"
    )
    args = ["--broker", c.url, "--id", "light", "--root", c.root, "--module", "examples.counter"]
    c.python("light", str(script), *args)
    try:
        wait_status(c.url, c.topics.node_status("light"), "online")
    except TimeoutError:
        raise AssertionError(c.log("light")[-3000:]) from None
    with c.client() as client:
        obj = client.stub("examples.counter.Counter").create(start=1, node="light")
        assert obj.add(2) == 3
        client.delete(obj)
    assert c.alive("light"), c.log("light")[-3000:]
    assert "the node imported" not in c.log("light")
