"""continuum_dev.testing itself, and the boundaries of the tooling: children die
with their parent, bench/ and devtools/ never import tests/, the edge package
carries no dev tooling."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
from continuum_dev.testing import Deployment, toml_text, wait_for

from ._cluster import REPO


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead too
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_children_die_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    """A parent that spawns through Deployment and is SIGKILLed (as a crashed
    test run would be) leaves no child behind."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from continuum_dev.testing import Deployment
        d = Deployment("mqtt://127.0.0.1:1", {str(tmp_path)!r})
        child = d.python("sleeper", "-c", "import time; time.sleep(120)")
        print(child.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_for(lambda: not _alive(child), timeout=10, what="the child outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_deployment_stops_what_it_started(tmp_path: Path) -> None:
    d = Deployment("mqtt://127.0.0.1:1", tmp_path)
    proc = d.python("sleeper", "-c", "import time; print('up', flush=True); time.sleep(60)")
    wait_for(lambda: "up" in d.log("sleeper"), timeout=10)
    assert d.alive("sleeper")
    t0 = time.monotonic()
    d.close()
    assert proc.poll() is not None and time.monotonic() - t0 < 10
    assert d.procs == {}


def test_agent_config_is_toml() -> None:
    text = toml_text(
        {
            "device": 'a"b',
            "status_interval": 0.2,
            "broker": {"url": "mqtt://h:1", "backoff_max": 2.0},
            "forecaster": {"enabled": True, "args": {"device": "cpu"}},
        }
    )
    assert tomllib.loads(text) == {
        "device": 'a"b',
        "status_interval": 0.2,
        "broker": {"url": "mqtt://h:1", "backoff_max": 2.0},
        "forecaster": {"enabled": True, "args": {"device": "cpu"}},
    }


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_bench_and_devtools_never_import_tests() -> None:
    files = [*(REPO / "bench").rglob("*.py"), *(REPO / "devtools").rglob("*.py")]
    bad = {
        str(f.relative_to(REPO)): sorted(n for n in _imports(f) if n.split(".")[0] == "tests")
        for f in files
    }
    assert not {f: n for f, n in bad.items() if n}


def test_the_edge_package_carries_no_dev_tooling() -> None:
    continuum = REPO / "continuum_mqtt"
    assert (continuum / "__init__.py").exists()
    assert not [p.name for p in continuum.glob("*.py") if "demo" in p.name or "dev" in p.name]
    assert not (continuum / "__main__.py").exists()
    for f in continuum.rglob("*.py"):
        assert not {n for n in _imports(f) if n.split(".")[0] in ("continuum_dev", "bench")}, f
