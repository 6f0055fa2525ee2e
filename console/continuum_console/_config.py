"""The console's options: command line, or a TOML file (``--config``) whose keys
are the long option names, as for every continuum service."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from continuum_mqtt.service import add_common_arguments, parse_args

__all__ = ["Config", "build_parser", "load_config"]


@dataclass(slots=True)
class Config:
    accounts: str
    broker: str = "mqtt://127.0.0.1:1883"
    root: str = "continuum/v1"
    log_level: str = "INFO"
    ca_file: str | None = None
    name: str = "console"
    listen: str = "127.0.0.1"
    port: int = 8080
    tls_cert: str | None = None
    tls_key: str | None = None
    cookie_secure: bool = False
    audit_log: str = "/var/lib/continuum-console/audit.jsonl"
    session_idle: float = 1800.0
    session_ttl: float = 43200.0
    history: int = 360
    offline_after: float = 60.0
    max_devices: int = 100_000
    objects_interval: float = 5.0
    push_interval: float = 0.5
    metrics_qos: int = 0
    forecaster_alias: str = "{device}/forecaster"
    retrain_epochs: int = 20

    @property
    def secure(self) -> bool:
        """Whether cookies are marked Secure (served over TLS, here or by a proxy)."""
        return self.cookie_secure or bool(self.tls_cert)


def _positive(v: str) -> float:
    f = float(v)
    if not 0 < f < 1e7:
        raise ValueError(f"must be a positive number of seconds, not {v}")
    return f


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="continuum-console",
        description="The operator console: a web UI of the fleet, the nodes and the "
        "objects, live from the broker and the gateway, with admin actions written to "
        "an audit log. 'continuum-console hash-password' prints a password hash for "
        "the accounts file. Options may also come from --config FILE.toml.",
        epilog="docs/console.md has the accounts file, the broker account's ACL and "
        "the reverse proxy setup.",
    )
    add_common_arguments(p)
    p.add_argument("--ca-file", help="CA bundle for an mqtts:// broker (default: the system's)")
    p.add_argument("--name", default="console", help="client id prefix (default: %(default)s)")
    p.add_argument(
        "--accounts",
        metavar="FILE",
        help="(required) TOML file of operators: [operators.NAME] role = 'admin'|'readonly', "
        "password = '<hash from hash-password>'",
    )
    p.add_argument("--listen", default="127.0.0.1", help="HTTP address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default: %(default)s)")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", help="the key of --tls-cert (PEM)")
    p.add_argument(
        "--cookie-secure",
        action="store_true",
        help="mark session cookies Secure (set it behind a TLS reverse proxy; implied "
        "by --tls-cert)",
    )
    p.add_argument(
        "--audit-log",
        default="/var/lib/continuum-console/audit.jsonl",
        metavar="FILE",
        help="JSON lines of every admin action (default: %(default)s)",
    )
    p.add_argument(
        "--session-idle",
        type=_positive,
        default=1800.0,
        help="seconds without a request before a session ends (default: %(default)s)",
    )
    p.add_argument(
        "--session-ttl",
        type=_positive,
        default=43200.0,
        help="seconds a session lasts at most (default: %(default)s)",
    )
    p.add_argument(
        "--history", type=int, default=360, help="samples kept per device (default: %(default)s)"
    )
    p.add_argument(
        "--offline-after",
        type=_positive,
        default=60.0,
        help="a device that never published a status (firmware-sim) counts as offline "
        "this many seconds after its last sample (default: %(default)s)",
    )
    p.add_argument(
        "--max-devices",
        type=int,
        default=100_000,
        help="devices tracked at most; more are ignored (default: %(default)s)",
    )
    p.add_argument(
        "--objects-interval",
        type=_positive,
        default=5.0,
        help="seconds between the gateway's objects listings (default: %(default)s)",
    )
    p.add_argument(
        "--push-interval",
        type=_positive,
        default=0.5,
        help="seconds between live updates to a page (default: %(default)s)",
    )
    p.add_argument(
        "--metrics-qos",
        type=int,
        choices=(0, 1),
        default=0,
        help="QoS of the metrics subscription (default: %(default)s)",
    )
    p.add_argument(
        "--forecaster-alias",
        default="{device}/forecaster",
        help="alias of a device's forecaster, retrained by the retrain action "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--retrain-epochs",
        type=int,
        default=20,
        help="epochs of a retraining (default: %(default)s)",
    )
    return p


def load_config(argv: Sequence[str] | None = None) -> Config:
    args = parse_args(build_parser(), argv)
    if not args.accounts:
        build_parser().error("--accounts FILE is required (on the command line or in --config)")
    if bool(args.tls_cert) != bool(args.tls_key):
        build_parser().error("--tls-cert and --tls-key go together")
    if args.history < 2 or args.max_devices < 1:
        build_parser().error("--history must be >= 2 and --max-devices >= 1")
    if args.retrain_epochs < 1:
        build_parser().error("--retrain-epochs must be >= 1")
    return Config(**{k: v for k, v in vars(args).items() if k != "config"})
