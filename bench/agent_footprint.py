"""Edge agent footprint: peak RSS and CPU of ``edgeagent run`` at 1 Hz.

Runs, side by side for ``--duration`` seconds against a real mosquitto:

* ``python idle``: a bare interpreter that sleeps (the floor any Python agent pays);
* ``agent, metrics only``: ``[forecaster] enabled = false``;
* ``agent + jobs``: the full agent: its forecaster created on a real cloud node
  (gateway + node processes), fed through a metrics binding, trained remotely
  after 48 samples and every 120 samples, a forecast every 12 samples.

RSS is read from /proc every second (VmHWM gives the kernel's own peak); CPU is
user + system time over the run, in percent of one core. Goals (issue 4): peak
RSS <= 30 MB and CPU <= 2 % at 1 Hz; the paper's dataClay client took 305-330 MB.

    python -m bench.agent_footprint                 # 10 minutes
    python -m bench.agent_footprint --duration 60   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import REPO, child_env, format_table, log
from continuum._devbroker import LocalBroker
from continuum._forecast_report import _peak_rss_mb

PAPER_CLIENT_MB = (305, 330)
TICK = os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(RSS MB, peak RSS MB, CPU seconds) of ``pid``."""
    rss, hwm = _peak_rss_mb(pid)
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    return rss, hwm, cpu


def write_config(path: Path, url: str, root: str, device: str, jobs: bool) -> None:
    path.write_text(
        f'device = "{device}"\nstate_dir = "{path.parent / ("state-" + device)}"\n'
        f'[broker]\nurl = "{url}"\nroot = "{root}"\n[sampling]\ninterval = 1.0\n'
        f"[forecaster]\nenabled = {'true' if jobs else 'false'}\n"
        'args = { device = "cpu" }\n'
        "[jobs]\ntrain_after = 48\ntrain_every = 120\ntrain_epochs = 5\nforecast_every = 12\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=600.0, help="seconds (default: %(default)s)")
    p.add_argument("--json", dest="json_path", help="also write the results here")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="agent-footprint-"))
    root = f"bench-{os.getpid()}/continuum"
    env = child_env()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    services: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], name: str) -> subprocess.Popen[bytes]:
        out = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return proc

    with LocalBroker() as broker:
        try:
            log(f"broker {broker.url}; starting a gateway and a node (cloudnode.forecast)")
            services.append(
                spawn(
                    [sys.executable, "-m", "gateway", "--broker", broker.url, "--root", root,
                     "--db", str(tmp / "dir.db")],
                    "gateway",
                )
            )  # fmt: skip
            services.append(
                spawn(
                    [sys.executable, "-m", "cloudnode", "--broker", broker.url, "--root", root,
                     "--id", "n1", "--module", "cloudnode.forecast", "--torch-threads", "1"],
                    "node",
                )
            )  # fmt: skip
            time.sleep(8)  # the node imports torch before it announces itself
            for name, jobs in (("metrics only", False), ("+ jobs", True)):
                cfg = tmp / f"{'jobs' if jobs else 'plain'}.toml"
                write_config(cfg, broker.url, root, f"fp-{'jobs' if jobs else 'plain'}", jobs)
                procs[f"agent, {name}"] = spawn(
                    [sys.executable, "-m", "edgeagent", "run", "-c", str(cfg)], cfg.stem
                )
            procs["python idle"] = spawn(
                [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"], "idle"
            )
            time.sleep(1.0)
            start = {n: proc_stats(pr.pid)[2] for n, pr in procs.items()}
            t0 = time.monotonic()
            peak = dict.fromkeys(procs, 0.0)
            last_report = t0
            while (elapsed := time.monotonic() - t0) < args.duration:
                for n, pr in procs.items():
                    if pr.poll() is not None:
                        raise RuntimeError(f"{n} exited early; see {tmp}")
                    peak[n] = max(peak[n], proc_stats(pr.pid)[0])
                if time.monotonic() - last_report >= 30:
                    last_report = time.monotonic()
                    log(
                        f"{elapsed:5.0f}/{args.duration:.0f} s  "
                        + "  ".join(f"{n}: {peak[n]:.1f} MB" for n in procs)
                    )
                time.sleep(1.0)
            wall = time.monotonic() - t0
            rows: list[dict[str, Any]] = []
            for n, pr in procs.items():
                rss, hwm, cpu = proc_stats(pr.pid)
                rows.append(
                    {
                        "process": n,
                        "rss_mb": round(rss, 1),
                        "peak_rss_mb": round(max(hwm, peak[n]), 1),
                        "cpu_pct": round(100 * (cpu - start[n]) / wall, 3),
                        "vs_paper_client": f"{PAPER_CLIENT_MB[0] / max(hwm, peak[n]):.0f}x less",
                    }
                )
            status = {}
            for stem in ("plain", "jobs"):
                try:
                    status[stem] = json.loads(
                        (tmp / f"state-fp-{stem}" / "status.json").read_text()
                    )
                except (OSError, ValueError):
                    status[stem] = None
        finally:
            for pr in [*procs.values(), *services]:
                if pr.poll() is None:
                    pr.send_signal(signal.SIGTERM)
            for pr in [*procs.values(), *services]:
                try:
                    pr.wait(15)
                except subprocess.TimeoutExpired:
                    pr.kill()

    print(
        format_table(
            rows,
            [
                ("process", "process", "<"),
                ("peak_rss_mb", "peak RSS MB", ">"),
                ("rss_mb", "RSS at end MB", ">"),
                ("cpu_pct", "CPU % of a core", ">"),
                ("vs_paper_client", "vs dataClay client (305 MB)", ">"),
            ],
        )
    )
    agent_rows = [r for r in rows if r["process"].startswith("agent")]
    ok = all(r["peak_rss_mb"] <= 30 and r["cpu_pct"] <= 2 for r in agent_rows)
    jobs_fc = (status.get("jobs") or {}).get("forecaster") or {}
    print(
        f"\n{args.duration:.0f} s at 1 Hz; goals peak RSS <= 30 MB and CPU <= 2 %: "
        f"{'met' if ok else 'NOT met'}. Jobs agent: {jobs_fc.get('trains')} trainings, "
        f"{jobs_fc.get('forecasts')} forecasts, {jobs_fc.get('errors')} errors; "
        f"sent {(status.get('jobs') or {}).get('sent')} samples."
    )
    result = {
        "duration_s": args.duration,
        "rows": rows,
        "goals_met": ok,
        "paper_client_mb": PAPER_CLIENT_MB,
        "status": status,
    }
    print(json.dumps(result, default=repr))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=1, default=repr))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
