"""What every long-running continuum process shares: config files, logging,
signals, systemd notifications and durable files (stdlib only)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import tomllib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # imported where used: the edge agent's daemon never parses with it
    import argparse

__all__ = [
    "ConfigError",
    "Service",
    "add_common_arguments",
    "add_rights_arguments",
    "fsync_path",
    "parse_args",
    "rights_from",
    "sd_notify",
    "serve",
    "setup_logging",
    "wait_for_signal",
]

log = logging.getLogger("continuum")


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """--broker, --root and --log-level, as every service takes them."""
    from ._protocol import DEFAULT_ROOT

    p.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="broker URL, mqtt:// or mqtts:// (default: %(default)s); the password may "
        "come from CONTINUUM_PASSWORD, the CA file from CONTINUUM_CA_FILE",
    )
    p.add_argument("--root", default=DEFAULT_ROOT, help="topic root (default: %(default)s)")
    p.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)"
    )


def add_rights_arguments(p: argparse.ArgumentParser) -> None:
    """--admin and --no-anonymous: who may do what (protocol.md section 21)."""
    p.add_argument(
        "--admin",
        dest="admins",
        action="append",
        default=[],
        metavar="USER",
        help="a broker account that may call, see and manage every object (repeat it; "
        "e.g. the operator console's). Default: none",
    )
    p.add_argument(
        "--no-anonymous",
        dest="allow_anonymous",
        action="store_false",
        help="refuse requests from clients without a broker username (set it where the "
        "broker requires accounts: anonymous callers then cannot exist, and a request on "
        "a call topic without a username level is refused)",
    )


def rights_from(args: argparse.Namespace) -> Any:
    """The :class:`~continuum_mqtt.service.Rights` of ``add_rights_arguments``' options."""
    from .service._access import Rights

    return Rights(args.admins, allow_anonymous=args.allow_anonymous)


def serve(service: Service) -> int:
    """Start ``service``, tell systemd it is ready, run until SIGTERM/SIGINT
    (pinging the watchdog), stop it. Returns the process exit code."""
    from ._errors import NotConnected

    try:
        service.start()
    except NotConnected as exc:
        log.error("%s", exc)
        return 1
    sd_notify("READY=1")
    try:
        wait_for_signal()
    finally:
        service.stop()
    return 0


class ConfigError(Exception):
    """A config file or option is invalid; the message names the key."""


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config FILE`` (TOML) become defaults that
    the command line overrides. Unknown keys are an error naming the key."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file whose keys are the long option names (dashes or underscores)",
    )
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            with open(pre.config, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            parser.error(f"cannot read config {pre.config}: {exc}")
        # a key is a long option name (--node-timeout: node-timeout or
        # node_timeout; --id: id) or the option's dest (node_id)
        known: dict[str, argparse.Action] = {}
        for a in parser._actions:
            known[a.dest] = a
            for opt in a.option_strings:
                if opt.startswith("--"):
                    known[opt[2:].replace("-", "_")] = a
        defaults: dict[str, Any] = {}
        for key, value in data.items():
            action = known.get(key.replace("-", "_"))
            if action is None or action.dest in ("help", "config"):
                parser.error(f"config {pre.config}: unknown key {key!r}")
            defaults[action.dest] = _config_value(parser, pre.config, key, value, action)
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def _config_value(
    parser: argparse.ArgumentParser, path: str, key: str, value: Any, action: argparse.Action
) -> Any:
    """A config file's ``value`` for ``action``, checked: a flag takes a
    boolean (under the option's name, true means "given": ``no_anonymous =
    true`` refuses anonymous callers; under its dest, the value itself:
    ``allow_anonymous = false``), a repeatable option a list."""
    bad = f"config {path}: bad value for {key!r}"
    if action.nargs == 0:  # store_true, store_false, store_const
        if not isinstance(value, bool):
            parser.error(f"{bad}: {value!r} is not true or false")
        if key.replace("-", "_") == action.dest:
            return value
        return action.const if value else action.default
    import argparse

    if isinstance(action, argparse._AppendAction):
        if not isinstance(value, list):
            parser.error(f"{bad}: {value!r} is not a list")
        return [_typed(parser, bad, v, action) for v in value]
    if isinstance(value, list | bool):
        parser.error(f"{bad}: {value!r}")
    return _typed(parser, bad, value, action)


def _typed(parser: argparse.ArgumentParser, bad: str, value: Any, action: argparse.Action) -> Any:
    import argparse

    if action.type is None:
        return value
    try:
        return action.type(value)  # type: ignore[operator]
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(f"{bad}: {exc}")


def setup_logging(level: str = "INFO") -> None:
    """One line per event; no timestamps under journald (it adds its own)."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if under_journald
        else ("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr
    )


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder by name (a folder: so that a rename or a new
    file in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sd_notify(state: str) -> bool:
    """Send a systemd notification (READY=1, WATCHDOG=1, STOPPING=1) if run under
    systemd with a notify socket; a no-op otherwise."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def wait_for_signal(watchdog: bool = True) -> int:
    """Block until SIGTERM or SIGINT; ping the systemd watchdog meanwhile.
    Returns the signal number."""
    stop = threading.Event()
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    interval = usec / 2e6 if (watchdog and usec) else None
    while not stop.wait(interval):
        sd_notify("WATCHDOG=1")
    sd_notify("STOPPING=1")
    return received[0] if received else 0
