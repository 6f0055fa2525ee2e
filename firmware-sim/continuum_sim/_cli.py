"""The ``firmware-sim`` command line: the parser (``run`` and ``export``,
their options, help and examples) and the fleet it describes
(:func:`fleet_spec`). The commands are in ``__main__``."""

from __future__ import annotations

import argparse
import time

from continuum_mqtt import DEFAULT_ROOT

from ._series import DATASETS, SAMPLE_PERIOD, parse_time
from ._sources import FleetSpec

__all__ = ["build_parser", "fleet_spec"]

_EPILOG = """\
examples:
  firmware-sim run --devices 10000 --rate 10000 --duration 60
      10,000 synthetic boards, one sample each per second (a 5-minute sample
      every second: 300x), QoS 1, over 8 MQTT connections
  firmware-sim run --source replay --dataset node_3 --devices 50 --period-ms 20 --samples 1989
      50 boards replaying the node_3 series, each from its own row and phase
  firmware-sim run --devices 20 --rate 200 --jobs --train-epochs 3
      and a forecaster per board on the cloud side (needs a gateway and a node
      hosting continuum_node.forecast)
  firmware-sim export --devices 100 --samples 288 --out fleet.csv
      one simulated day of 100 boards, as a CSV

The live line (stderr, about once a second) shows the samples sent and their
rate, PUBACKs received, messages in flight, how many samples the loop is
behind its schedule, and errors. See docs/firmware-sim.md.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; a default shown once, where there is one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default:" in text or "%(default)" in text:
            return text
        if action.default is None or action.default is False or action.default == "":
            return text
        if action.default == argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def _start(text: str) -> float:
    if text == "now":
        return time.time()
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601, 'YYYY-MM-DD HH:MM:SS' UTC, Unix seconds or 'now')"
        ) from None


def _add_fleet_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fleet (what the boards measure)")
    g.add_argument(
        "--devices", type=_positive_int, default=100, metavar="N", help="simulated boards"
    )
    g.add_argument(
        "--prefix", default="sim-", help="device id prefix; ids are PREFIX0000, PREFIX0001, ..."
    )
    g.add_argument(
        "--source",
        choices=("synthetic", "replay"),
        default="synthetic",
        help="synthetic board model, or replay of a real series (default: %(default)s)",
    )
    g.add_argument(
        "--dataset",
        default="node_3",
        metavar="NAME|CSV",
        help=f"series to replay: {', '.join(DATASETS)} (bundled in cloudnode/continuum_node/datasets/) or a "
        "CSV path with CPU,MEM (or input_1,input_2) and timestamp columns (default: %(default)s)",
    )
    g.add_argument("--seed", type=int, default=0, metavar="S", help="seed; same seed, same samples")
    g.add_argument(
        "--fields",
        choices=("full", "minimal"),
        default="full",
        help="full: cpu, mem and the agent's optional load1, disk, net_rx, net_tx, temp "
        "(with sensor dropouts); minimal: cpu and mem only (default: %(default)s)",
    )
    g.add_argument(
        "--start",
        type=_start,
        default=None,
        metavar="TIME",
        help="board time of the first sample: ISO 8601, Unix seconds or 'now' (default: the "
        "series' own first time for a replay, 2024-09-02 00:00 UTC for synthetic boards)",
    )
    g.add_argument(
        "--jitter",
        type=float,
        default=0.5,
        metavar="PP",
        help="replay: std of noise added to CPU and MEM, percentage points",
    )
    g.add_argument(
        "--ts-jitter",
        type=float,
        default=1.0,
        metavar="S",
        help="std of noise on sample times, board seconds",
    )
    g.add_argument(
        "--no-offsets",
        action="store_true",
        help="replay: every device starts at the first row, at the same time",
    )
    g.add_argument(
        "--exact",
        action="store_true",
        help="replay the series exactly: same as --jitter 0 --ts-jitter 0 --no-offsets",
    )
    g.add_argument(
        "--seq-start",
        type=_positive_int,
        default=1,
        metavar="SEQ",
        help="first seq of every device, to continue an earlier run's sequence",
    )


def fleet_spec(args: argparse.Namespace) -> FleetSpec:
    exact = args.exact
    return FleetSpec(
        devices=args.devices,
        source=args.dataset if args.source == "replay" else "synthetic",
        seed=args.seed,
        prefix=args.prefix,
        fields=args.fields,
        start=args.start,
        jitter=0.0 if exact else args.jitter,
        ts_jitter=0.0 if exact else args.ts_jitter,
        offsets=not (exact or args.no_offsets),
        seq_start=args.seq_start,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="firmware-sim",
        description="Simulate a fleet of edge boards publishing the continuum edge agent's\n"
        "metrics samples (CBOR, <root>/dev/<device>/metrics, QoS 1) on an accelerated\n"
        "clock, from a real series or a synthetic board model; optionally run each\n"
        "board's forecasting jobs against the cloud side.",
        formatter_class=_Formatter,
        epilog=_EPILOG,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,export}")
    r = sub.add_parser(
        "run",
        help="publish the fleet's samples to a broker",
        description="Publish the fleet's samples to a broker, with a live summary on stderr.",
        formatter_class=_Formatter,
    )
    _add_fleet_options(r)
    g = r.add_argument_group("broker and connections")
    g.add_argument("--broker", default="mqtt://127.0.0.1:1883", metavar="URL", help="broker URL")
    g.add_argument("--root", default=DEFAULT_ROOT, help="topic root")
    g.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS of the samples")
    g.add_argument(
        "--connections",
        type=_positive_int,
        default=8,
        metavar="K",
        help="MQTT connections the devices are multiplexed over (device i uses connection "
        "i*K//N); see docs/firmware-sim.md for why not one per device",
    )
    g.add_argument(
        "--window",
        type=_positive_int,
        default=1000,
        metavar="W",
        help="most unacknowledged QoS 1 messages per connection; publishing waits beyond it",
    )
    g.add_argument(
        "--engine",
        choices=("wire", "paho"),
        default="wire",
        help="wire: pre-built packets, bulk sends and PUBACK parsing (fast); paho: one "
        "paho-mqtt client per connection (slower, supports mqtts://)",
    )
    g.add_argument(
        "--client-id-prefix",
        default="",
        metavar="PREFIX",
        help="MQTT client ids are PREFIX-<k> (default: firmware-sim-<pid>)",
    )
    g = r.add_argument_group("pace (one of --rate, --period-ms, --speedup)")
    pace = g.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate",
        type=_positive_float,
        metavar="R",
        help="aggregate samples per second, all devices together",
    )
    pace.add_argument(
        "--period-ms",
        type=_positive_float,
        metavar="MS",
        help="wall milliseconds between two samples of one device (default: 1000)",
    )
    pace.add_argument(
        "--speedup",
        type=_positive_float,
        metavar="X",
        help=f"board time / wall time: a {SAMPLE_PERIOD:.0f} s sample every "
        f"{SAMPLE_PERIOD:.0f}/X wall seconds per device",
    )
    g = r.add_argument_group("how long (the first reached ends the run; none: until Ctrl-C)")
    g.add_argument("--duration", type=_positive_float, metavar="S", help="wall seconds")
    g.add_argument("--samples", type=_positive_int, metavar="M", help="samples per device")
    g.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="at the end, seconds to wait for outstanding PUBACKs and jobs",
    )
    g = r.add_argument_group("output")
    g.add_argument("--json", metavar="PATH", help="write the final summary as JSON")
    g.add_argument("--quiet", action="store_true", help="no live line")
    g.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="live line period, seconds",
    )
    g = r.add_argument_group("cloud jobs (--jobs)")
    g.add_argument(
        "--jobs",
        action="store_true",
        help="create and bind a forecaster per device (of a subset), train it remotely and "
        "request forecasts, through continuum_mqtt.Client",
    )
    g.add_argument(
        "--jobs-devices",
        type=int,
        default=16,
        metavar="M",
        help="devices with jobs, evenly spread over the fleet (0: all)",
    )
    g.add_argument(
        "--jobs-class",
        default="continuum_node.forecast.Forecaster",
        metavar="PATH",
        help="class path",
    )
    g.add_argument(
        "--jobs-node", metavar="ID", help="node to create the objects on (default: gateway picks)"
    )
    g.add_argument(
        "--jobs-device",
        default="cpu",
        metavar="DEV",
        help="torch device argument of the forecasters (cpu, cuda, auto)",
    )
    g.add_argument(
        "--train-after",
        type=_positive_int,
        default=48,
        metavar="M",
        help="samples of a device before its first training",
    )
    g.add_argument(
        "--train-every",
        type=int,
        default=0,
        metavar="M",
        help="retrain every this many samples (0: once)",
    )
    g.add_argument(
        "--train-epochs", type=_positive_int, default=5, metavar="E", help="epochs per training"
    )
    g.add_argument(
        "--forecast-every",
        type=int,
        default=12,
        metavar="M",
        help="request a forecast every this many samples, once trained (0: never)",
    )
    g.add_argument(
        "--jobs-inflight",
        type=_positive_int,
        default=64,
        metavar="N",
        help="most job calls in flight; more are skipped and counted",
    )
    g.add_argument(
        "--jobs-timeout", type=_positive_float, default=60.0, metavar="S", help="call deadline, s"
    )
    g.add_argument("--jobs-keep", action="store_true", help="keep the forecasters after the run")

    e = sub.add_parser(
        "export",
        help="write the fleet's samples to a CSV",
        description="Write the samples the same fleet would publish (same options, same "
        "seed: same values) to a CSV: timestamp, device, CPU, MEM, then the optional "
        "fields (empty where a board did not send one). Rows are grouped by device, "
        "in time order.",
        formatter_class=_Formatter,
    )
    _add_fleet_options(e)
    e.add_argument(
        "--samples", type=_positive_int, required=True, metavar="M", help="samples per device"
    )
    e.add_argument("--out", required=True, metavar="PATH", help="CSV path ('-': stdout)")
    return p
