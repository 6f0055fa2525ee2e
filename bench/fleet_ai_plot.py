"""The figure of a ``bench.fleet_ai`` run: each node's RSS over the run, by
phase, against its memory budget and the fleet's 2 GiB goal.

    python -m bench.fleet_ai_plot [reports/bench-fleet-ai.json] [-o reports/fleet-ai-rss.png]

(``bench.fleet_ai`` draws it itself after a run; this redraws it from the JSON.)
Needs matplotlib (the ``report`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GOAL_MIB = 2048


def figure(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rss = result["rss"]
    t = [s["t"] for s in rss]
    n1 = [s.get("n1", 0.0) for s in rss]
    n2 = [s.get("n2", 0.0) for s in rss]
    budget = result["meta"]["args"]["memory_budget"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(t, n1, color="tab:blue", label="n1")
    ax.plot(t, n2, color="tab:orange", label="n2")
    ax.plot(t, [a + b for a, b in zip(n1, n2, strict=True)], color="tab:green", label="n1 + n2")
    ax.axhline(budget, color="tab:gray", ls="--", lw=1, label=f"each node's budget ({budget} MiB)")
    ax.axhline(GOAL_MIB, color="tab:red", ls=":", lw=1.5, label="the fleet's goal (2 GiB)")
    start, phase = 0.0, rss[0]["phase"] if rss else ""
    shade, row = False, 0
    for s in [*rss, {"t": t[-1] if t else 0.0, "phase": None}]:
        if s["phase"] != phase:
            if shade:
                ax.axvspan(start, s["t"], color="0.93", lw=0)
            y = GOAL_MIB * (1.03 + 0.04 * (row % 5))  # five rows: short phases side by side
            ax.text((start + s["t"]) / 2, y, phase, ha="center", fontsize=7)
            start, phase, shade, row = s["t"], s["phase"], not shade, row + 1
    devices = result["meta"]["args"]["devices"]
    ax.set_title(
        f"bench.fleet_ai: {devices:,} forecasters on 2 nodes (RSS, long-call workers included)"
    )
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_ylim(0, GOAL_MIB * 1.22)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_ai_plot", description=__doc__)
    p.add_argument("json", nargs="?", default="reports/bench-fleet-ai.json")
    p.add_argument("-o", "--out", default="reports/fleet-ai-rss.png")
    args = p.parse_args(argv)
    result = json.loads(Path(args.json).read_text())
    print(figure(result, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
