"""The chaos scenario of bench/chaos.py, run whole: broker restart, primary node
SIGKILL, gateway restart, a full disk under a node, torn journal tails and a
directory rolled back to an older backup, while a fleet streams and clients
call. No call may hang, no sample or acknowledged mutation may be lost, no
object may disappear that no caller deleted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ._cluster import REPO


def test_chaos_run_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--devices", "4", "--rate", "80", "--clients", "2",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["calls"].get("hung", 0) == 0
    assert report["calls"]["succeeded"] > 0
    assert report["samples"]["lost"] == 0 and report["samples"]["out_of_order"] == 0
    assert report["mutations"]["lost"] == 0
    assert report["mutations"]["final_value"] >= report["mutations"]["acknowledged"]
    assert report["objects"]["gone_not_deleted_by_a_caller"] == 0
    faults = [f["fault"] for f in report["faults"]]
    assert "disk full for 3 s" in faults, faults  # root: the tmpfs mounts worked
    assert report["calls"].get("failed: storage", 0) > 0  # the full disk was felt, and said so
    assert all(f["recovery_s"] < 120 for f in report["faults"]), report["faults"]
