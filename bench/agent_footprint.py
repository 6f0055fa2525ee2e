"""Edge agent footprint: peak RSS and CPU of ``edgeagent run`` at 1 Hz and 5 Hz.

Runs, side by side for ``--duration`` seconds against a real mosquitto:

* ``python idle``: a bare interpreter that sleeps (the floor any Python agent pays);
* ``agent, metrics only``: ``[forecaster] enabled = false``;
* ``agent + jobs``: the full agent: its forecaster created on a real cloud node
  (gateway + node processes), fed through a metrics binding, trained remotely
  after 48 samples and every 120 samples, a forecast every 12 samples, and
  the forecaster's edge model fetched after each training and kept
  (``[jobs] edge_fallback``, the default);
* ``agent + jobs, 5 Hz``: the same sampling every 0.2 s (the jobs five times as often).

RSS is read from /proc every second (VmHWM gives the kernel's own peak); CPU is
user + system time over the run, in percent of one core. Goals (issue 4): peak
RSS <= 30 MB and CPU <= 2 % at 1 Hz (tests/test_edge_footprint.py asserts the
RSS budget); the paper's dataClay client took 305-330 MB.

    python -m bench.agent_footprint                 # 10 minutes
    python -m bench.agent_footprint --quick         # 90 s, trainings every 40 samples
    python -m bench.agent_footprint --duration 60   # a shorter look

The table goes to stdout, the figures to reports/bench-agent-footprint.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from continuum_dev.testing import rss_mb

from ._common import columns, deployment, format_table, log, options, parser, write_json

PAPER_CLIENT_MB = (305, 330)
TICK = os.sysconf("SC_CLK_TCK")
JOBS = {
    "forecaster": {"enabled": True, "args": {"device": "cpu"}},
    "jobs": {"train_after": 48, "train_every": 120, "train_epochs": 5, "forecast_every": 12},
}
QUICK_JOBS = {"train_after": 20, "train_every": 40, "train_epochs": 2, "forecast_every": 4}
QUICK_DURATION = 90.0


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(RSS MB, peak RSS MB, CPU seconds) of ``pid``."""
    rss, hwm = rss_mb(pid)
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    return rss, hwm, cpu


def main(argv: list[str] | None = None) -> int:
    p = parser(
        "agent_footprint",
        __doc__.split("\n\n")[0],
        quick=f"{QUICK_DURATION:.0f} s, a training every 40 samples (overrides --duration)",
    )
    options(p, "duration  600.0  seconds")
    args = p.parse_args(argv)
    jobs = JOBS
    if args.quick:
        args.duration = QUICK_DURATION
        jobs = {**JOBS, "jobs": QUICK_JOBS}

    with deployment(root=f"bench-{os.getpid()}/continuum") as dep:
        log(f"broker {dep.url}; starting a gateway and a node (continuum_node.forecast)")
        # the node imports torch before it announces itself
        dep.start(["n1"], "--torch-threads", "1", modules=["continuum_node.forecast"])
        agents = {
            "agent, metrics only": dep.start_agent("fp-plain"),
            "agent, + jobs": dep.start_agent("fp-jobs", settings=jobs),
            "agent, + jobs, 5 Hz": dep.start_agent("fp-jobs5", interval=0.2, settings=jobs),
        }
        procs = {n: a.proc for n, a in agents.items()}
        procs["python idle"] = dep.python("idle", "-c", "import time\nwhile True: time.sleep(1)")
        time.sleep(1.0)
        start = {n: proc_stats(pr.pid)[2] for n, pr in procs.items()}
        t0 = time.monotonic()
        peak = dict.fromkeys(procs, 0.0)
        last_report = t0
        while (elapsed := time.monotonic() - t0) < args.duration:
            for n, pr in procs.items():
                if pr.poll() is not None:
                    raise RuntimeError(f"{n} exited early; see {dep.logs}")
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
        status = {
            "plain": agents["agent, metrics only"].status() or None,
            "jobs": agents["agent, + jobs"].status() or None,
            "jobs_5hz": agents["agent, + jobs, 5 Hz"].status() or None,
        }

    print(
        format_table(
            rows,
            columns(
                "process< | peak_rss_mb:peak RSS MB> | rss_mb:RSS at end MB> | "
                "cpu_pct:CPU % of a core> | vs_paper_client:vs dataClay client (305 MB)>"
            ),
        )
    )
    agent_rows = [r for r in rows if r["process"].startswith("agent")]
    ok = all(
        r["peak_rss_mb"] <= 30 and (r["cpu_pct"] <= 2 or "5 Hz" in r["process"]) for r in agent_rows
    )
    for key, name in (("jobs", "Jobs agent"), ("jobs_5hz", "Jobs agent at 5 Hz")):
        fc = (status.get(key) or {}).get("forecaster") or {}
        print(
            f"{name}: {fc.get('trains')} trainings, {fc.get('forecasts')} forecasts, "
            f"{fc.get('errors')} errors, edge model "
            f"{'kept' if fc.get('edge_model') else 'NOT fetched'}; "
            f"sent {(status.get(key) or {}).get('sent')} samples."
        )
    print(
        f"\n{args.duration:.0f} s; goals peak RSS <= 30 MB and CPU <= 2 % (5 Hz: RSS only): "
        f"{'met' if ok else 'NOT met'}."
    )
    result = {
        "duration_s": args.duration,
        "quick": args.quick,
        "rows": rows,
        "goals_met": ok,
        "paper_client_mb": PAPER_CLIENT_MB,
        "status": status,
    }
    print(json.dumps(result, default=repr))
    write_json(args.json, result, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
