"""The report of ``continuum demo``: the paper's tables beside ours (markdown
and JSON), the install footprints, and the PNG figures.

:func:`build_report` turns what :mod:`continuum_dev.demo` measured into the
report's dictionary (written as ``forecast-report.json``), :func:`markdown`
renders it (``forecast-report.md``), :func:`figures` draws the PNGs (with
matplotlib, continuum-mqtt[report]).
"""

from __future__ import annotations

import os
import statistics
import sys
from importlib import metadata, util
from pathlib import Path
from typing import Any

__all__ = ["GOALS", "PAPER", "build_report", "figures", "footprint", "markdown", "mean_std"]

# The reference paper: Barceló et al., "Offloading Artificial Intelligence Workloads
# across the Computing Continuum by means of Active Storage Systems" (dataClay),
# section 5, Tables 1-6: Orange Pi client, Ryzen server (Table 3).
PAPER: dict[str, Any] = {
    "baseline": {"peak_rss_mb": 367.12, "train_s": 37.2, "eval_s": 4.32, "total_s": 41.52},
    "baseline_mac": {"peak_rss_mb": 398.13, "train_s": 6.18, "eval_s": 0.84, "total_s": 7.02},
    "offloaded": {
        "client_rss_mb": 329.55,
        "server_rss_mb": 480.18,
        "aggregate_rss_mb": 809.73,
        "server_train_s": 4.12,
        "server_eval_s": 0.45,
        "client_total_s": 8.33,
    },
    "accuracy": {
        "cpu": {
            "mse": (7.651, 0.539),
            "mae": (2.115, 0.107),
            "smape": (6.168, 0.329),
            "rmse": (2.764, 0.097),
        },
        "mem": {
            "mse": (0.871, 0.353),
            "mae": (0.733, 0.197),
            "smape": (0.835, 0.224),
            "rmse": (0.914, 0.192),
        },
    },
    "model_size_mb": 0.0707,
    "install_gb": {"baseline": 2.1048, "client": 0.4283, "server": 7.0048},
    # dataClay 4.3.1 (gRPC + Redis, the same LSTM workload) measured on this
    # machine before continuum was written; not in the paper
    "here": {
        "client_rss_mb": "63-88",
        "offload_overhead_ms": 4,
        "fresh_train_s": 1.9,
        "after_burst_train_s": 5.3,
    },
}
GOALS = {"client_rss_mb": 30, "edge_install_mb": 15, "overhead_ms": 50, "node_vs_baseline": 0.05}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# -- install footprint ------------------------------------------------------------


def _dist_size(name: str) -> int:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return 0
    total = 0
    for f in dist.files or []:
        p = Path(str(dist.locate_file(f)))
        if p.is_file():
            total += p.stat().st_size
    return total


def _closure(requirements: list[str]) -> set[str]:
    """Names of the distributions a list of requirements pulls in, recursively
    (markers of extras are skipped: what a plain install pulls)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        name = req.split(";")[0].split("[")[0]
        for sep in "<>=!~ (":
            name = name.split(sep)[0]
        name = name.strip().lower().replace("_", "-")
        if not name or name in seen or ("extra ==" in req and ";" in req):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo.extend(r for r in dist.requires or [] if "extra ==" not in r)
    return seen


def _own_size(packages: list[str]) -> int:
    """Bytes of the Python sources of installed packages (found by import, not by path)."""
    total = 0
    for name in packages:
        spec = util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            total += sum(f.stat().st_size for f in Path(folder).rglob("*.py"))
    return total


def footprint() -> dict[str, Any]:
    edge = _closure(["paho-mqtt", "cbor2", "psutil"])
    node = _closure(["paho-mqtt", "cbor2", "psutil", "cloudpickle", "torch", "numpy", "pandas"])
    edge_mb = (
        sum(_dist_size(d) for d in edge) + _own_size(["continuum_mqtt", "continuum_edgeagent"])
    ) / 1e6
    node_mb = (
        sum(_dist_size(d) for d in node)
        + _own_size(["continuum_mqtt", "continuum_node", "continuum_gateway"])
    ) / 1e6
    return {
        "edge_mb": edge_mb,
        "edge_dists": sorted(edge),
        "node_mb": node_mb,
        "node_dists": sorted(node),
    }


def build_report(
    args: Any,
    seeds: int,
    epochs: int,
    threads: int,
    base: list[dict[str, Any]],
    plain: dict[str, Any],
    edge: dict[str, Any],
    node_peak: float,
    node_rss: float,
    burst: dict[str, Any],
    foot: dict[str, Any],
) -> dict[str, Any]:
    runs = edge["runs"]
    b_train = mean_std([b["train_s"] for b in base])
    b_eval = mean_std([b["eval_s"] for b in base])
    node_train = mean_std([r["node_train_s"] for r in runs])
    node_eval = mean_std([r["node_eval_s"] for r in runs])
    overhead_ms = [1000 * (r["client_train_s"] - r["node_train_s"]) for r in runs]
    same = [r["state_hash"] == b["state_hash"] for r, b in zip(runs, base, strict=True)]
    acc = {
        var: {
            m: mean_std([r["evaluation"][var][m] for r in runs])
            for m in ("mse", "mae", "smape", "rmse")
        }
        for var in ("cpu", "mem")
    }
    persistence = {var: edge["baseline"][var] for var in ("cpu", "mem")}
    band = {}
    for var in ("cpu", "mem"):
        mu, sd = PAPER["accuracy"][var]["mse"]
        ours = acc[var]["mse"][0]
        band[var] = {
            "paper": [mu, sd],
            "ours": ours,
            "within_1sd": abs(ours - mu) <= sd,
            "within_2sd": abs(ours - mu) <= 2 * sd,
        }
    b_mean = b_train[0]
    return {
        "settings": {
            "seeds": seeds,
            "epochs": epochs,
            "torch_threads": threads,
            "cpus": os.cpu_count(),
            "quick": bool(args.quick),
        },
        "table1_baseline": {
            "peak_rss_mb": mean_std([b["peak_rss_mb"] for b in base]),
            "train_s": b_train,
            "eval_s": b_eval,
            "total_s": mean_std([b["total_s"] for b in base]),
            "plain_pytorch_train_s": plain["train_s"],
        },
        "table2_4_offloaded": {
            "client_peak_rss_mb": edge["peak_rss_mb"],
            "node_peak_rss_mb": node_peak,
            "node_rss_mb_after": node_rss,
            "aggregate_rss_mb": edge["peak_rss_mb"] + node_peak,
            "node_train_s": node_train,
            "node_eval_s": node_eval,
            "client_train_s": mean_std([r["client_train_s"] for r in runs]),
            "client_total_s": edge["total_s"],
            "offload_overhead_ms": mean_std(overhead_ms),
            "client_heavy_modules": edge["heavy_modules_loaded"],
            "same_weights_as_local": all(same),
        },
        "table5_accuracy": {
            "ours": acc,
            "persistence": persistence,
            "paper_band": band,
            "model_size_mb": edge["model_size_mb"],
        },
        "table6_install": foot,
        "concurrency": {**burst, "baseline_train_s": b_mean},
        "goals": {
            "client_rss_le_30mb": edge["peak_rss_mb"] <= GOALS["client_rss_mb"],
            "edge_install_le_15mb": foot["edge_mb"] <= GOALS["edge_install_mb"],
            "overhead_le_50ms": max(overhead_ms) <= GOALS["overhead_ms"],
            "node_train_within_5pct_of_baseline": abs(node_train[0] - b_mean)
            <= GOALS["node_vs_baseline"] * b_mean,
            "baseline_not_slower_than_plain_loop": b_mean <= plain["train_s"] * 1.05,
            "fresh_within_5pct": abs(burst["fresh_train_s"] - b_mean)
            <= GOALS["node_vs_baseline"] * b_mean,
            "after_burst_within_5pct": abs(burst["after_burst_train_s"] - b_mean)
            <= GOALS["node_vs_baseline"] * b_mean,
            "no_heavy_modules_on_edge": not edge["heavy_modules_loaded"],
        },
        "paper": PAPER,
        "next_step_forecast": edge["next_step"],
    }


def _ms(v: tuple[float, float] | list[float], unit: str = "", digits: int = 2) -> str:
    mu, sd = v
    return f"{mu:.{digits}f} ± {sd:.{digits}f}{unit}"


def markdown(r: dict[str, Any]) -> str:
    s, t1, t2 = r["settings"], r["table1_baseline"], r["table2_4_offloaded"]
    acc, t6, cc, goals = r["table5_accuracy"], r["table6_install"], r["concurrency"], r["goals"]
    p = PAPER
    lines = [
        "# continuum vs dataClay: the paper's LSTM workload",
        "",
        f"{s['seeds']} seed(s) x {s['epochs']} epochs on node_3_utilisation.csv; this machine: {s['cpus']} cores; "
        f"torch intra-op threads on the node and the baselines: {s['torch_threads']} (cores - 1: one core is left to "
        "the network thread and the broker; 2 threads are about 15% faster on an idle box but collapse 10-25x "
        'when another process takes a core). Paper: Barceló et al., "Offloading Artificial Intelligence '
        'Workloads across the Computing Continuum by means of Active Storage Systems", section 5: '
        "Orange Pi client, Ryzen server (Tables 1, 3, 5, 6).",
        "",
        "## Table 1 analogue: baseline, training locally in one process",
        "",
        "| | peak RSS (MB) | train (s) | eval (s) | total (s) |",
        "|---|---|---|---|---|",
        f"| paper, Orange Pi | {p['baseline']['peak_rss_mb']} | {p['baseline']['train_s']} | {p['baseline']['eval_s']} | {p['baseline']['total_s']} |",
        f"| paper, Mac | {p['baseline_mac']['peak_rss_mb']} | {p['baseline_mac']['train_s']} | {p['baseline_mac']['eval_s']} | {p['baseline_mac']['total_s']} |",
        f"| ours, this machine | {_ms(t1['peak_rss_mb'], digits=1)} | {_ms(t1['train_s'])} | {_ms(t1['eval_s'], digits=3)} | {_ms(t1['total_s'])} |",
        f"| plain PyTorch loop, same machine and threads | | {t1['plain_pytorch_train_s']:.2f} | | |",
        "",
        "## Tables 2-4 analogue: offloaded (edge client with no torch, one cloud node)",
        "",
        "| | paper (Ryzen server, Orange Pi client) | ours |",
        "|---|---|---|",
        f"| client peak RSS (MB) | {p['offloaded']['client_rss_mb']} | {t2['client_peak_rss_mb']:.1f} |",
        f"| node peak RSS (MB) | {p['offloaded']['server_rss_mb']} | {t2['node_peak_rss_mb']:.1f} |",
        f"| aggregate (MB) | {p['offloaded']['aggregate_rss_mb']} | {t2['aggregate_rss_mb']:.1f} |",
        f"| node train (s) | {p['offloaded']['server_train_s']} | {_ms(t2['node_train_s'])} |",
        f"| node eval (s) | {p['offloaded']['server_eval_s']} | {_ms(t2['node_eval_s'], digits=3)} |",
        f"| client-observed train call (s) | | {_ms(t2['client_train_s'])} |",
        f"| client total, whole run (s) | {p['offloaded']['client_total_s']} | {t2['client_total_s']:.2f} |",
        f"| offload overhead of the train call (ms) | about 1900 (paper); {p['here']['offload_overhead_ms']} (dataClay on this machine) | {_ms(t2['offload_overhead_ms'], digits=1)} |",
        f"| heavy modules loaded by the client | torch | {', '.join(t2['client_heavy_modules']) or 'none'} |",
        "",
        f"Offloaded weights identical to local training for every seed (state-dict hash): **{t2['same_weights_as_local']}**.",
        "",
        "## Table 5 analogue: accuracy (de-normalised test set, mean ± std over seeds)",
        "",
        "| variable | metric | paper | ours | persistence x(t)=x(t-1) |",
        "|---|---|---|---|---|",
    ]
    for var in ("cpu", "mem"):
        for m in ("mse", "mae", "smape", "rmse"):
            pm, ps = p["accuracy"][var][m]
            lines.append(
                f"| {var.upper()} | {m.upper()} | {pm} ± {ps} | {_ms(acc['ours'][var][m], digits=3)} | {acc['persistence'][var][m]:.3f} |"
            )
    for var in ("cpu", "mem"):
        b = acc["paper_band"][var]
        where = (
            "within 1 std of"
            if b["within_1sd"]
            else "within 2 std of"
            if b["within_2sd"]
            else "outside 2 std of"
        )
        lines.append("")
        lines.append(
            f"{var.upper()} MSE {b['ours']:.3f}: {where} the paper's {b['paper'][0]} ± {b['paper'][1]}."
        )
    lines += [
        "",
        f"Model size: {acc['model_size_mb']:.4f} MB (paper: {p['model_size_mb']} MB; same 17,538 parameters).",
        "",
        "## Table 6 analogue: install footprint (site-packages)",
        "",
        "| | paper | ours |",
        "|---|---|---|",
        f"| edge / client | {p['install_gb']['client'] * 1000:.0f} MB | {t6['edge_mb']:.1f} MB ({', '.join(t6['edge_dists'])} + continuum, edgeagent) |",
        f"| cloud node / server | {p['install_gb']['server'] * 1000:.0f} MB | {t6['node_mb']:.0f} MB (CPU build of torch) |",
        "",
        "## Training after concurrent use",
        "",
        "| | dataClay on this machine | ours (node) |",
        "|---|---|---|",
        f"| fresh node (s) | {p['here']['fresh_train_s']} | {cc['fresh_train_s']:.2f} |",
        f"| after a burst of calls from 4 threads (s) | {p['here']['after_burst_train_s']} | {cc['after_burst_train_s']:.2f} |",
        f"| local baseline (s) | | {cc['baseline_train_s']:.2f} |",
        "",
        "dataClay's figures on this machine were measured with dataClay 4.3.1 (gRPC + Redis, the same "
        "LSTM workload, torch's default thread count) before continuum was written; they are not in the "
        "paper. Ours use the thread setting above. What matters is the ratio: the reference "
        "slowed 2.8x after serving concurrent calls, ours stays with the baseline.",
        "",
        "## Goals",
        "",
    ]
    lines += [
        f"- {'PASS' if ok else 'FAIL'}: {name.replace('_', ' ')}" for name, ok in goals.items()
    ]
    return "\n".join(lines) + "\n"


def figures(r: dict[str, Any], edge: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "matplotlib is not installed (pip install 'continuum-mqtt[report]'): no figures",
            file=sys.stderr,
        )
        return []
    made = []
    series = edge["forecast_series"]
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, var, label in ((axes[0], "cpu", "CPU (%)"), (axes[1], "mem", "MEM (%)")):
        ax.plot(series[var]["actual"], label="actual", linewidth=1)
        ax.plot(series[var]["predicted"], label="LSTM forecast", linewidth=1)
        ax.set_ylabel(label)
        ax.legend(loc="upper right")
    axes[1].set_xlabel("test step (5 min)")
    fig.suptitle("Forecast vs actual on the test part (node_3, last seed)")
    fig.tight_layout()
    fig.savefig(out / "forecast-vs-actual.png", dpi=110)
    made.append("forecast-vs-actual.png")
    t1, t2, p = r["table1_baseline"], r["table2_4_offloaded"], PAPER
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [
        "paper\nbaseline",
        "paper\nclient",
        "paper\nserver",
        "ours\nbaseline",
        "ours\nclient",
        "ours\nnode",
    ]
    mem = [p["baseline"]["peak_rss_mb"], p["offloaded"]["client_rss_mb"], p["offloaded"]["server_rss_mb"],
           t1["peak_rss_mb"][0], t2["client_peak_rss_mb"], t2["node_peak_rss_mb"]]  # fmt: skip
    ax1.bar(labels, mem, color=["#999", "#999", "#999", "#36c", "#36c", "#36c"])
    ax1.set_ylabel("peak RSS (MB)")
    ax1.set_title("Memory (Figure 9 style)")
    tl = ["paper\nbaseline", "paper\nserver", "ours\nbaseline", "ours\nnode"]
    tt = [
        p["baseline"]["train_s"],
        p["offloaded"]["server_train_s"],
        t1["train_s"][0],
        t2["node_train_s"][0],
    ]
    ax2.bar(tl, tt, color=["#999", "#999", "#36c", "#36c"])
    ax2.set_ylabel("train time (s)")
    ax2.set_title("Training time (Figure 10 style)")
    fig.tight_layout()
    fig.savefig(out / "memory-and-time.png", dpi=110)
    made.append("memory-and-time.png")
    return made
