"""``edgeagent``: the daemon on each board, and operator commands.

``edgeagent run`` started as a program (not :func:`main` called with
``argv``) first starts itself again, the same process (``exec``), with
``MALLOC_ARENA_MAX=1`` in its environment: glibc's malloc then keeps one heap
for all of the agent's threads instead of one per thread, which saves 1.0-1.3
MB of the agent's 30 MB budget (docs/edgeagent.md, Footprint). An
environment that sets ``MALLOC_ARENA_MAX`` already (any value) is left as it
is. The agent's own modules are imported after that, not before; and ``run``
parses its two options without argparse when it can (:func:`run_args`), so
that the daemon does not carry argparse (about 0.3 MB).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from ._config import AgentConfig

ARENA_ENV = "MALLOC_ARENA_MAX"

EPILOG = """\
commands:
  run       the daemon: samples the board's metrics every interval into a local
            outbox (SQLite) and sends them to the broker (QoS 1, deleted on PUBACK,
            in order, at a bounded rate); keeps the device's
            forecaster on a cloud node fed, and runs the forecast / train / alert jobs.
            SIGTERM flushes and stops, SIGHUP reloads the config.
  status    what the running agent reports: connection, outbox depth, dropped
            counts, last forecast and alert
  call      an ad-hoc remote call: edgeagent call forecaster-opi-01 info
  config    print a complete config file with every default

exit status: 0 ok, 1 runtime failure (run: the state directory's file system is
full or failing), 2 bad config or usage (run: also a state directory or outbox
that cannot be used), 3 (status) the agent is not running.
The config is TOML (docs/edgeagent.md); the broker password comes from
[broker] password_file or $EDGEAGENT_PASSWORD, never from the command line.
"""


def one_malloc_arena(argv: Sequence[str] | None) -> None:
    """For ``edgeagent run`` as a program: exec this command again with
    ``MALLOC_ARENA_MAX=1`` unless the environment sets it (Linux only; the
    pid, and so systemd's view of the service, stays the same). Returns when
    there is nothing to do or the exec failed (the agent then runs as it is)."""
    if (
        argv is not None
        or sys.argv[1:2] != ["run"]
        or ARENA_ENV in os.environ
        or not sys.platform.startswith("linux")
        or not sys.executable
    ):
        return
    os.environ[ARENA_ENV] = "1"
    try:
        os.execv(sys.executable, sys.orig_argv)
    except OSError:
        pass


def run_args(argv: Sequence[str]) -> SimpleNamespace | None:
    """``run [-c PATH | --config PATH] [--log-level LEVEL]`` (also ``--opt=VALUE``)
    as :func:`build_parser` parses it, without importing argparse; None for
    anything else (argparse then parses it: help, abbreviations, errors)."""
    from ._config import DEFAULT_CONFIG

    if not argv or argv[0] != "run":
        return None
    found = {"config": os.environ.get("EDGEAGENT_CONFIG", DEFAULT_CONFIG), "log_level": None}
    names = {"-c": "config", "--config": "config", "--log-level": "log_level"}
    rest = list(argv[1:])
    while rest:
        opt, eq, value = rest.pop(0).partition("=")
        if opt not in names or (eq and opt == "-c"):
            return None
        if not eq:
            if not rest:
                return None
            value = rest.pop(0)
        if not value or value.startswith("-"):
            return None
        found[names[opt]] = value
    return SimpleNamespace(command="run", **found)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from ._config import DEFAULT_CONFIG

    p = argparse.ArgumentParser(
        prog="edgeagent",
        description=(
            "continuum edge agent: runs on the board (no torch, numpy or model code) "
            "and offloads forecasting to the device's object on a cloud node."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-c",
            "--config",
            default=os.environ.get("EDGEAGENT_CONFIG", DEFAULT_CONFIG),
            help="TOML config file (default: $EDGEAGENT_CONFIG or %(default)s)",
        )

    run = sub.add_parser("run", help="run the agent (the daemon)")
    with_config(run)
    run.add_argument("--log-level", help="override the config's log_level")

    st = sub.add_parser("status", help="show the running agent's state")
    with_config(st)
    st.add_argument("--json", action="store_true", help="print the raw status as JSON")

    call = sub.add_parser("call", help="call an active method of an object, print the JSON result")
    with_config(call)
    call.add_argument("ref", help="object alias or id")
    call.add_argument("method", help="active method name")
    call.add_argument(
        "args",
        nargs="?",
        default="[]",
        help="JSON array of arguments or object of keyword arguments (default: [])",
    )
    call.add_argument(
        "--broker",
        help="broker URL (default: the config's [broker] url, else mqtt://127.0.0.1:1883)",
    )
    call.add_argument("--root", help="topic root (default: the config's, else continuum/v1)")
    call.add_argument(
        "--timeout", type=float, default=30.0, help="deadline in seconds (default: %(default)s)"
    )

    sub.add_parser("config", help="print a complete config file with the defaults")
    return p


def _load(path: str, *, required: bool) -> AgentConfig:
    from ._config import AgentConfig, load

    if not required and not os.path.exists(path):
        return AgentConfig()
    return load(path)


def _run(args: Any) -> int:
    from continuum_mqtt.service import setup_logging

    from ._config import load

    cfg = load(args.config)
    cfg.password()  # an unreadable password file stops us here, not later
    if args.log_level:
        cfg = dataclasses.replace(cfg, log_level=args.log_level)
    setup_logging(cfg.log_level)
    from ._agent import Agent
    from ._statedir import StateError

    try:
        return Agent(cfg).run()
    except StateError as exc:  # before anything started: no traceback, a message
        print(f"edgeagent: {cfg.source}: {exc}", file=sys.stderr)
        return 1 if exc.transient else 2


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True  # alive, and someone else's (the agent runs as its own user)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _status(args: argparse.Namespace) -> int:
    from ._agent import status_path
    from ._statusfile import read_status

    cfg = _load(args.config, required=False)
    path = status_path(cfg)
    try:
        st = read_status(path)
    except (OSError, ValueError) as exc:
        print(f"edgeagent: no status at {path} ({exc}); is the agent running?", file=sys.stderr)
        return 1
    age = time.time() - float(st.get("updated", 0))
    # the agent rewrites the file every status_interval: an old one means a
    # hung agent, or a pid that now belongs to another process
    fresh = age <= 3 * cfg.status_interval + 10
    running = st.get("state") == "running" and _pid_alive(st.get("pid")) and fresh
    if args.json:
        print(json.dumps({**st, "alive": running}, indent=1))
        return 0 if running else 3
    ob = st.get("outbox", {})
    lines = [
        f"device     {st.get('device')}  "
        + (
            f"running (pid {st.get('pid')})"
            if running
            else f"NOT running ({st.get('state')}{'' if fresh else ', no update'})"
        )
        + f", status {age:.0f} s old",
        f"broker     {st.get('broker')}  "
        + ("connected" if st.get("connected") else f"DISCONNECTED ({st.get('last_error')})")
        + f", {st.get('connects')} connects",
        f"outbox     {ob.get('depth')} waiting (oldest {ob.get('oldest_age_s')} s), "
        f"{ob.get('in_flight')} in flight, next seq {ob.get('next_seq')}",
        f"dropped    {ob.get('dropped_full')} (outbox full), {ob.get('dropped_age')} (too old), "
        f"{ob.get('not_sampled')} not sampled, {ob.get('failed', 0)} failed (not stored); "
        f"{st.get('refused')} refusals by the broker (kept, sent again)",
        f"sent       {st.get('sent')} sent, {st.get('acked')} acknowledged since start",
    ]
    if st.get("refusal"):
        lines.append(f"REFUSED    {st['refusal']}")
    if ob.get("error"):
        lines.append(f"STORAGE    cannot write the outbox: {ob['error']}")
    fc = st.get("forecaster")
    if fc:
        lines.append(
            f"forecaster {fc.get('alias')} ({fc.get('state')}), trained: {fc.get('trained')}, "
            f"{fc.get('forecasts')} forecasts, {fc.get('trains')} trainings, "
            f"{fc.get('alerts')} alerts, {fc.get('errors')} errors"
        )
        last = fc.get("last_forecast")
        if last:
            lines.append(
                f"forecast   cpu {last['cpu']:.1f}% mem {last['mem']:.1f}% "
                f"(after #{last['after_seq']}, {time.time() - last['ts']:.0f} s ago)"
            )
        if fc.get("last_alert"):
            a = fc["last_alert"]
            lines.append(
                f"alert      {a['metric']} {a['actual']:.1f} vs forecast {a['forecast']:.1f} "
                f"+- {a['band']} at #{a['seq']}"
            )
        if fc.get("last_error"):
            lines.append(f"last error {fc['last_error']}")
    else:
        lines.append("forecaster off")
    print("\n".join(lines))
    return 0 if running else 3


def _call(args: argparse.Namespace) -> int:
    import continuum_mqtt
    from continuum_mqtt.service import BrokerURL

    cfg = _load(args.config, required=False)
    try:
        params = json.loads(args.args)
    except json.JSONDecodeError as exc:
        print(f"edgeagent: arguments are not JSON: {exc}", file=sys.stderr)
        return 2
    pos, kw = (
        (params, {})
        if isinstance(params, list)
        else ([], params)
        if isinstance(params, dict)
        else ([params], {})
    )
    url = BrokerURL.parse(args.broker) if args.broker else cfg.broker_url()
    try:
        with continuum_mqtt.Client(
            url,
            root=args.root or cfg.broker.root,
            timeout=args.timeout,
            ca_file=cfg.broker.ca_file or None,
        ) as client:
            obj = client.get(args.ref)
            result = getattr(obj, args.method).options(
                on_progress=lambda u: print(json.dumps(u, default=repr), file=sys.stderr)
            )(*pos, **kw)
    except continuum_mqtt.ContinuumError as exc:
        print(f"edgeagent: {type(exc).__name__} [{exc.code}]: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, default=repr))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    one_malloc_arena(argv)
    from ._config import SAMPLE, ConfigError

    args: Any = run_args(sys.argv[1:] if argv is None else argv) or build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args)
        if args.command == "call":
            return _call(args)
        if args.command == "config":
            print(SAMPLE, end="")
            return 0
    except ConfigError as exc:
        print(f"edgeagent: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
