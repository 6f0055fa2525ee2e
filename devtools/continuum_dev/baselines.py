"""One-process baselines of the forecaster workload (the paper's Table 1), each
run in a fresh process by ``continuum demo``; each prints one JSON line.

    python -m continuum_dev.baselines local --seed 0 --epochs 100 --threads 1
        train_local(): the very code a node runs, in this process
    python -m continuum_dev.baselines plain --seed 0 --epochs 100 --threads 1
        a plain PyTorch loop (nn.LSTM + nn.Linear, Adam, MSE, shuffled batches
        of 64) written without any continuum code, to check that ours is not slower

Both train on the forecaster's bundled ``node_3_utilisation.csv`` (or ``--csv``).
Needs continuum-mqtt[forecast] (torch, numpy).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["local", "main", "plain"]

DATASET = "node_3_utilisation.csv"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _series(path: str | None) -> list[list[float]]:
    """The CPU and MEM columns of the CSV (default: the forecaster's bundled one)."""
    if path is None:
        from continuum_node.forecast import BUNDLED_DIR

        path = str(Path(BUNDLED_DIR) / DATASET)
    with open(path, newline="", encoding="utf-8") as fh:
        return [[float(r["CPU"]), float(r["MEM"])] for r in csv.DictReader(fh)]


def local(args: argparse.Namespace) -> dict[str, Any]:
    from continuum_node.forecast import configure_torch_threads, train_local

    t0 = time.perf_counter()
    configure_torch_threads(args.threads)
    values = _series(args.csv)
    _, m = train_local(values, epochs=args.epochs, seed=args.seed, paper=True)
    total = time.perf_counter() - t0
    return {
        "train_s": m["train_seconds"],
        "eval_s": m["evaluation"]["eval_seconds"],
        "total_s": total,
        "peak_rss_mb": _peak_rss_mb(),
        "state_hash": m["state_hash"],
        "evaluation": m["evaluation"],
        "baseline": m["baseline"],
        "threads": m["threads"],
    }


def plain(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = np.array(_series(args.csv))
    n_train = int(len(data) * 0.8)
    lo, hi = data[:n_train].min(0), data[:n_train].max(0)
    scaled = (data[:n_train] - lo) / (hi - lo)
    x = torch.tensor(
        np.stack([scaled[i : i + 6] for i in range(len(scaled) - 6)]), dtype=torch.float32
    )
    y = torch.tensor(scaled[6:], dtype=torch.float32)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(2, 64, batch_first=True)
            self.fc = nn.Linear(64, 2)

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(inp)
            return self.fc(out[:, -1])

    net, loss_fn = Net(), nn.MSELoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return {
        "train_s": time.perf_counter() - t0,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": args.threads,
    }


def main(argv: Sequence[str] | None = None, prog: str = "python -m continuum_dev.baselines") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["local", "plain"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)"
    )
    ap.add_argument("--csv", help=f"the series (default: the forecaster's bundled {DATASET})")
    args = ap.parse_args(argv)
    print(json.dumps(local(args) if args.mode == "local" else plain(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
