"""The edge side of the demo: a process with no torch, numpy, pandas or
cloudpickle that offloads the paper's LSTM workload to a cloud node.

    python -m examples.forecast_edge --broker mqtt://127.0.0.1:1883 --seeds 3

It creates a ``continuum_node.forecast.Forecaster``, streams the dataset's rows into
it, trains it remotely for each seed with a live progress bar, evaluates it,
and prints (and with ``--json``, writes) what it measured: client-observed
times, the node's compute times, and its own peak RSS.
"""

from __future__ import annotations

import sys

HEAVY = ("torch", "numpy", "pandas", "cloudpickle")


class _NoHeavyImports:
    """The edge rule, enforced: importing any heavy library here fails."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"the edge client must not import {name}")


sys.meta_path.insert(0, _NoHeavyImports())

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import continuum_mqtt  # noqa: E402

DATASET = (
    Path(__file__).resolve().parent.parent
    / "cloudnode"
    / "continuum_node"
    / "datasets"
    / "node_3_utilisation.csv"
)


class ProgressBar:
    """``epoch 37/100 [#######.............] loss 0.00412  1.2 s`` on one line."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def __call__(self, update: dict[str, Any]) -> None:
        epoch, total, loss = update["epoch"], update["epochs"], update["loss"]
        filled = int(20 * epoch / total)
        line = (
            f"{self.label} epoch {epoch:>3}/{total} [{'#' * filled}{'.' * (20 - filled)}]"
            f" loss {loss:.5f}  {time.perf_counter() - self.t0:5.1f} s"
        )
        if self.tty:
            end = "\n" if epoch == total else ""
            print(f"\r{line}", end=end, file=sys.stderr, flush=True)
        elif epoch == total or epoch % max(1, total // 5) == 0:
            print(line, file=sys.stderr, flush=True)


def read_rows(path: Path) -> list[list[Any]]:
    with open(path, newline="") as fh:
        return [[float(r["CPU"]), float(r["MEM"]), r["timestamp"]] for r in csv.DictReader(fh)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m examples.forecast_edge", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--broker", default="mqtt://127.0.0.1:1883", help="broker URL (default: %(default)s)"
    )
    ap.add_argument(
        "--root", default=continuum_mqtt.DEFAULT_ROOT, help="topic root (default: %(default)s)"
    )
    ap.add_argument(
        "--csv", default=str(DATASET), help="CSV with timestamp, CPU, MEM (default: node_3)"
    )
    ap.add_argument(
        "--seeds", type=int, default=1, help="training runs, seeds 0..N-1 (default: %(default)s)"
    )
    ap.add_argument(
        "--epochs", type=int, default=100, help="epochs per training (default: %(default)s)"
    )
    ap.add_argument("--json", help="write the measurements there")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    rows = read_rows(Path(args.csv))
    out: dict[str, Any] = {"rows": len(rows), "epochs": args.epochs, "runs": []}
    with continuum_mqtt.Client(args.broker, root=args.root, timeout=600) as client:
        Forecaster = client.stub("continuum_node.forecast.Forecaster")
        t = time.perf_counter()
        fc = Forecaster.create()
        for i in range(0, len(rows), 500):
            fc.append(rows[i : i + 500])
        out["create_and_feed_s"] = time.perf_counter() - t
        print(
            f"forecaster {fc._id} holds {len(rows)} rows of {Path(args.csv).name}", file=sys.stderr
        )
        for seed in range(args.seeds):
            t = time.perf_counter()
            trained = fc.train.options(on_progress=ProgressBar(f"seed {seed}"))(
                epochs=args.epochs,
                seed=seed,
                paper=True,  # the paper's model (Table 5)
            )
            client_train = time.perf_counter() - t
            t = time.perf_counter()
            evaluation = fc.evaluate()
            client_eval = time.perf_counter() - t
            out["runs"].append(
                {
                    "seed": seed,
                    "node_train_s": trained["train_seconds"],
                    "client_train_s": client_train,
                    "node_eval_s": evaluation["eval_seconds"],
                    "client_eval_s": client_eval,
                    "state_hash": trained["state_hash"],
                    "evaluation": evaluation,
                }
            )
            cpu, mem = evaluation["cpu"], evaluation["mem"]
            print(
                f"seed {seed}: CPU MSE {cpu['mse']:.3f} MAE {cpu['mae']:.3f} | "
                f"MEM MSE {mem['mse']:.3f} MAE {mem['mae']:.3f} | "
                f"train {trained['train_seconds']:.2f} s on the node, {client_train:.2f} s seen here",
                file=sys.stderr,
            )
        out["baseline"] = fc.baseline()
        out["next_step"] = fc.predict()
        out["model_size_mb"] = fc.model_size_mb()
        out["forecast_series"] = fc.forecast_series()
        client.delete(fc)
    out["total_s"] = time.perf_counter() - t_start
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["heavy_modules_loaded"] = [m for m in HEAVY if m in sys.modules]
    print(
        f"next 5-minute step: CPU {out['next_step'][0]:.2f} %, MEM {out['next_step'][1]:.2f} %; "
        f"this process peaked at {out['peak_rss_mb']:.1f} MB and loaded none of {', '.join(HEAVY)}",
        file=sys.stderr,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
