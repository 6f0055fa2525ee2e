"""``firmware-sim``: a fleet of simulated edge boards publishing the edge agent's
metrics samples, and optionally loading the cloud side with their jobs.

The commands (``run``, ``export``) and the run summary; the parser is in
:mod:`._cli`."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli import build_parser, fleet_spec
from ._series import format_time
from ._sources import Fleet

EXPORT_COLUMNS = ("timestamp", "device", "CPU", "MEM")
OPTIONAL_COLUMNS = ("load1", "disk", "net_rx", "net_tx", "temp")


def export(args: argparse.Namespace) -> int:
    spec = fleet_spec(args)
    fleet = Fleet(spec)
    columns = EXPORT_COLUMNS + (OPTIONAL_COLUMNS if spec.fields == "full" else ())
    fh: Any = sys.stdout if args.out == "-" else open(args.out, "w", newline="", encoding="utf-8")  # noqa: SIM115
    try:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        rows = 0
        for dev, _seq, ts, m in fleet.rows(args.samples):
            row = [format_time(ts), dev, repr(m["cpu"]), repr(m["mem"])]
            if spec.fields == "full":
                row += [m.get(f, "") for f in OPTIONAL_COLUMNS]
            w.writerow(row)
            rows += 1
    finally:
        if fh is not sys.stdout:
            fh.close()
    print(
        f"firmware-sim: wrote {rows} rows ({args.devices} devices x {args.samples} samples) "
        f"to {args.out}",
        file=sys.stderr,
    )
    return 0


def _summary_text(s: dict[str, Any]) -> str:
    lines = [
        f"firmware-sim: {s['end']} after {s['elapsed_s']:.1f} s ({s['active_s']:.1f} s publishing)",
        f"  devices {s['devices']} over {s['connections']} connections ({s['engine']}, "
        f"QoS {s['qos']}), source {s['source']}",
        f"  sent {s['sent']:,} samples, {s['rate_achieved']:,.0f}/s "
        f"(target {s['rate_target']:,.0f}/s, one per device every {s['period_ms']:.1f} ms, "
        f"{s['speedup']:,.0f}x board time)",
    ]
    if s["qos"]:
        lines.append(
            f"  acked {s['acked']:,}, failed {s['failed']:,}, in flight at end "
            f"{s['in_flight_at_end']:,}, resent after reconnect {s['resent']:,}"
        )
    lines.append(
        f"  errors {s['errors']}, most behind schedule {s['behind_max']:,} samples, "
        f"CPU {s['cpu_s']:.1f} s ({s['cpu_us_per_sample'] or 0:.1f} us/sample)"
    )
    for msg in s["error_messages"][:5]:
        lines.append(f"  error: {msg}")
    j = s.get("jobs")
    if j:
        lines.append(
            f"  jobs: {j['devices']} forecasters (setup {j['setup_s']:.1f} s), "
            f"trained {j['trains_ok']} ({j['trains_err']} errors), "
            f"forecasts {j['forecasts_ok']} ({j['forecasts_err']} errors, p50 "
            f"{j['forecast_ms_p50'] or 0:.1f} ms), skipped {j['skipped_over_inflight_bound']}"
        )
        for msg in j["errors"][:5]:
            lines.append(f"  job error: {msg}")
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    from ._engine import RunConfig, Stop, run
    from ._jobs import JobConfig, Jobs
    from ._wire import MQTTError

    stop = Stop()
    stop.install()
    spec = fleet_spec(args)
    if args.rate is not None:
        rate = args.rate
    elif args.speedup is not None:
        rate = args.devices * args.speedup / spec.period
    else:
        rate = args.devices * 1000.0 / (args.period_ms or 1000.0)
    try:
        fleet = Fleet(spec)
    except (OSError, ValueError) as exc:
        print(f"firmware-sim: cannot load the series: {exc}", file=sys.stderr)
        return 2
    cfg = RunConfig(
        broker=args.broker,
        root=args.root,
        qos=args.qos,
        connections=args.connections,
        window=args.window,
        rate=rate,
        duration=args.duration,
        samples=args.samples,
        engine=args.engine,
        client_prefix=args.client_id_prefix,
        progress=not args.quiet,
        progress_interval=args.progress_interval,
        drain_timeout=args.drain_timeout,
    )
    jobs = None
    try:
        if args.jobs:
            jobs = Jobs(
                JobConfig(
                    devices=args.jobs_devices,
                    cls=args.jobs_class,
                    node=args.jobs_node,
                    train_after=args.train_after,
                    train_every=args.train_every,
                    epochs=args.train_epochs,
                    forecast_every=args.forecast_every,
                    max_inflight=args.jobs_inflight,
                    timeout=args.jobs_timeout,
                    keep=args.jobs_keep,
                    torch_device=args.jobs_device,
                ),
                args.broker,
                args.root,
                fleet.ids,
                spec.seq_start,
            )
            print(
                f"firmware-sim: creating {len(jobs.indices)} forecasters ({args.jobs_class})",
                file=sys.stderr,
            )
            jobs.start()
        summary = run(cfg, fleet, jobs, stop)
    except (OSError, MQTTError, ValueError) as exc:
        print(f"firmware-sim: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.jobs:
            from continuum_mqtt import ContinuumError

            if isinstance(exc, ContinuumError):  # e.g. no node hosts the class
                print(f"firmware-sim: jobs: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
        raise
    finally:
        if jobs is not None:
            jobs.close()
    print(_summary_text(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    clean = summary["errors"] == 0 and summary["in_flight_at_end"] == 0
    return 0 if clean else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        return export(args)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
