"""One-process baselines of the forecaster workload (the paper's Table 1), each
run in a fresh process by ``continuum demo``; each prints one JSON line.

    python -m bench.forecast local --seed 0 --epochs 100 --threads 1
        train_local(): the very code a node runs, in this process
    python -m bench.forecast plain --seed 0 --epochs 100 --threads 1
        a plain PyTorch loop (nn.LSTM + nn.Linear, Adam, MSE, shuffled batches
        of 64) written without any continuum code, to check that ours is not slower
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def local(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from cloudnode.forecast import BUNDLED_DIR, configure_torch_threads, train_local
    from cloudnode.forecast._data import read_series_csv

    t0 = time.perf_counter()
    configure_torch_threads(args.threads)
    values, _ = read_series_csv(Path(BUNDLED_DIR) / "node_3_utilisation.csv")
    _, m = train_local(values, epochs=args.epochs, seed=args.seed)
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
    import csv

    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from cloudnode.forecast import BUNDLED_DIR

    with open(f"{BUNDLED_DIR}/node_3_utilisation.csv", newline="") as fh:
        data = np.array([[float(r["CPU"]), float(r["MEM"])] for r in csv.DictReader(fh)])
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
            return self.fc(out[:, -1])  # type: ignore[no-any-return]

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.forecast", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("mode", choices=["local", "plain"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)"
    )
    args = ap.parse_args(argv)
    print(json.dumps(local(args) if args.mode == "local" else plain(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
