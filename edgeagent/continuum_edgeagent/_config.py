"""The agent's TOML config: every key, its type and its default, checked whole
before anything starts (a bad file never leaves a half-configured agent).

``docs/edgeagent.md`` lists the keys; :data:`SAMPLE` is a complete file with
the defaults. Secrets do not belong in the file: the broker password comes
from ``[broker] password_file`` or the environment (``EDGEAGENT_PASSWORD``,
then ``CONTINUUM_PASSWORD``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from continuum_mqtt.service import BrokerURL

__all__ = [
    "RANGES",
    "SAMPLE",
    "AgentConfig",
    "BrokerConfig",
    "ConfigError",
    "ForecasterConfig",
    "JobsConfig",
    "OutboxConfig",
    "SamplingConfig",
    "load",
]

DEFAULT_CONFIG = "/etc/edgeagent/edgeagent.toml"


class ConfigError(Exception):
    """The config is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class BrokerConfig:
    url: str = "mqtt://127.0.0.1:1883"
    username: str = ""  # "": the device id
    password_file: str = ""
    ca_file: str = ""
    root: str = "continuum/v1"  # continuum_mqtt.DEFAULT_ROOT
    keepalive: int = 30
    backoff_min: float = 0.5
    backoff_max: float = 60.0


@dataclass(frozen=True)
class SamplingConfig:
    interval: float = 1.0
    disk_path: str = "/"


@dataclass(frozen=True)
class OutboxConfig:
    max_samples: int = 100_000
    max_age: float = 7 * 86400.0
    policy: str = "drop_oldest"  # or "stop_sampling"
    drain_rate: float = 200.0
    max_inflight: int = 50
    flush_timeout: float = 5.0
    # seconds an acknowledged sample is kept and sent again after a reconnect
    # (a crashed broker may have lost it); 0: off
    resend_window: float = 5.0


@dataclass(frozen=True)
class ForecasterConfig:
    enabled: bool = True
    # in the device's namespace: an account may only take aliases "<username>/..."
    alias: str = "{device}/forecaster"
    # a name the nodes know: no model code on the board
    class_: str = "continuum_node.forecast.Forecaster"
    node: str = ""
    replicas: int = 0
    args: dict[str, Any] = field(default_factory=dict)
    timeout: float = 60.0


@dataclass(frozen=True)
class JobsConfig:
    forecast_every: int = 12
    train_after: int = 48
    train_every: int = 0
    train_interval: float = 0.0
    train_epochs: int = 20
    alert_band: float = 15.0
    # fetch the model's edge export after each training and forecast on the
    # board when the cloud is away or too slow (docs/protocol.md §24)
    edge_fallback: bool = True
    forecast_deadline: float = 5.0  # seconds a remote forecast may take


@dataclass(frozen=True)
class AgentConfig:
    device: str = field(default_factory=socket.gethostname)
    state_dir: str = "/var/lib/edgeagent"
    log_level: str = "INFO"
    status_interval: float = 5.0
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    forecaster: ForecasterConfig = field(default_factory=ForecasterConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    source: str = ""  # the file it came from

    @property
    def username(self) -> str:
        return self.broker.username or self.device

    @property
    def alias(self) -> str:
        return self.forecaster.alias.replace("{device}", self.device)

    def password(self) -> str | None:
        """The broker password: ``password_file``, else the environment."""
        if self.broker.password_file:
            try:
                with open(self.broker.password_file, encoding="utf-8") as fh:
                    return fh.read().strip()
            except OSError as exc:
                raise ConfigError(
                    f"{self.source or 'config'}: [broker] password_file: {exc}"
                ) from None
        return os.environ.get("EDGEAGENT_PASSWORD") or os.environ.get("CONTINUUM_PASSWORD")

    def broker_url(self) -> BrokerURL:
        """The broker with this agent's credentials: those written in the URL,
        else :attr:`username` (default: the device id) and :meth:`password`
        (read now: call it for every connection)."""
        url = BrokerURL.parse(self.broker.url)
        written = urlsplit(
            self.broker.url if "://" in self.broker.url else f"mqtt://{self.broker.url}"
        )
        return dataclasses.replace(
            url,
            username=url.username if written.username else self.username,
            password=url.password if written.password else self.password(),
        )


_SECTIONS: dict[str, type] = {
    "broker": BrokerConfig,
    "sampling": SamplingConfig,
    "outbox": OutboxConfig,
    "forecaster": ForecasterConfig,
    "jobs": JobsConfig,
}


def _check_value(where: str, name: str, value: Any, default: Any) -> Any:
    """``value`` coerced to the type of ``default`` (ints accepted for floats)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:  # pragma: no cover - every field has a default of one of these types
        ok = True
    if not ok:
        raise ConfigError(
            f"{where}{name}: expected {type(default).__name__}, got {type(value).__name__} "
            f"{value!r}"
        )
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    fields = {f.name.rstrip("_"): f for f in dataclasses.fields(cls)}
    instance = cls()
    values: dict[str, Any] = {}
    for key, value in data.items():
        f = fields.get(key)
        if f is None or f.name == "source" or key in _SECTIONS:
            known = sorted(k for k in fields if k != "source" and k not in _SECTIONS)
            known += [f"[{k}]" for k in _SECTIONS if k in fields]
            raise ConfigError(f"{where}{key}: unknown key (known: {', '.join(known)})")
        values[f.name] = _check_value(where, key, value, getattr(instance, f.name))
    return dataclasses.replace(instance, **values)


# Every number in the file: (low, high, unit). Both bounds included; inf and
# nan are outside every range. docs/edgeagent.md lists the same ranges.
_DAY = 86400.0
RANGES: dict[str, tuple[float, float, str]] = {
    "status_interval": (0.05, 3600, " seconds"),
    "[broker] keepalive": (5, 65535, " seconds"),
    "[broker] backoff_min": (0.01, 600, " seconds"),
    "[broker] backoff_max": (0.01, 3600, " seconds"),
    "[sampling] interval": (0.01, _DAY, " seconds"),
    "[outbox] max_samples": (1, 10_000_000, ""),
    "[outbox] max_age": (1, 3650 * _DAY, " seconds"),
    "[outbox] drain_rate": (0.001, 100_000, " samples/s"),
    "[outbox] max_inflight": (1, 65535, ""),
    "[outbox] flush_timeout": (0, 3600, " seconds"),
    "[outbox] resend_window": (0, 300, " seconds"),
    "[forecaster] replicas": (0, 64, ""),
    "[forecaster] timeout": (0.1, _DAY, " seconds"),
    "[jobs] forecast_every": (0, 10_000_000, " samples"),
    "[jobs] train_after": (0, 10_000_000, " samples"),
    "[jobs] train_every": (0, 10_000_000, " samples"),
    "[jobs] train_interval": (0, 3650 * _DAY, " seconds"),
    "[jobs] train_epochs": (0, 10_000, ""),  # the forecaster's own limit (TrainParams.limits)
    "[jobs] alert_band": (0, 100, " percentage points"),
    "[jobs] forecast_deadline": (0.01, 3600, " seconds"),
}


def _value(cfg: AgentConfig, key: str) -> Any:
    section, _, name = key.rpartition(" ")
    return getattr(getattr(cfg, section.strip("[]")) if section else cfg, name)


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def _check_ranges(cfg: AgentConfig, src: str) -> None:
    for key, (low, high, unit) in RANGES.items():
        value = _value(cfg, key)
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(
                f"{src}: {key}: must be {_num(low)}..{_num(high)}{unit}, not {value!r}"
            )


def _validate(cfg: AgentConfig, src: str) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{src}: {key}: {why}")

    from continuum_mqtt.service import valid_topic_text

    if not cfg.device or not valid_topic_text(cfg.device) or any(c in cfg.device for c in "/+#"):
        raise bad("device", f"{cfg.device!r} is not a valid device id (no / + # or control chars)")
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise bad("log_level", "must be DEBUG, INFO, WARNING or ERROR")
    if not cfg.state_dir:
        raise bad("state_dir", "must be a directory path")
    _check_ranges(cfg, src)
    try:
        BrokerURL.parse(cfg.broker.url)
    except ValueError as exc:
        raise bad("[broker] url", str(exc)) from None
    if not cfg.broker.root or not valid_topic_text(cfg.broker.root):
        raise bad("[broker] root", "must be a non-empty topic prefix")
    if cfg.broker.backoff_min > cfg.broker.backoff_max:
        raise bad("[broker] backoff_min", "must be <= backoff_max")
    if cfg.broker.ca_file and not os.path.isfile(cfg.broker.ca_file):
        raise bad("[broker] ca_file", f"no such file {cfg.broker.ca_file!r}")
    if cfg.outbox.policy not in ("drop_oldest", "stop_sampling"):
        raise bad(
            "[outbox] policy",
            f"must be 'drop_oldest' or 'stop_sampling', not {cfg.outbox.policy!r}",
        )
    if cfg.outbox.drain_rate * cfg.sampling.interval <= 1.0:
        raise bad(
            "[outbox] drain_rate",
            f"must exceed the sampling rate ({1 / cfg.sampling.interval:g}/s with [sampling] "
            "interval), or the outbox never empties",
        )
    if "." not in cfg.forecaster.class_:
        raise bad(
            "[forecaster] class", "must be a class path such as continuum_node.forecast.Forecaster"
        )
    if not cfg.alias or not valid_topic_text(cfg.alias):
        raise bad("[forecaster] alias", "must be non-empty text")


def parse(data: dict[str, Any], source: str = "config") -> AgentConfig:
    """An :class:`AgentConfig` from the decoded TOML ``data``."""
    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{key}] must be a table")
            sections[key] = _build(_SECTIONS[key], value, f"{source}: [{key}] ")
        else:
            top[key] = value
    cfg = _build(AgentConfig, top, f"{source}: ")
    cfg = dataclasses.replace(cfg, source=source, **sections)
    _validate(cfg, source)
    return cfg


def load(path: str) -> AgentConfig:
    """Read and check the TOML file ``path``; raises :class:`ConfigError`."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path)


SAMPLE = """\
# edgeagent config (TOML). Every key is optional; the values shown are the defaults.

# device id: the topic level dev/<device>/... and, by default, the broker username
# device = "<host name>"
state_dir = "/var/lib/edgeagent"    # outbox.sqlite and status.json live here
log_level = "INFO"                  # DEBUG, INFO, WARNING, ERROR
status_interval = 5.0               # seconds between status.json updates (edgeagent status)

[broker]
url = "mqtt://127.0.0.1:1883"       # mqtts://host:8883 for TLS
username = ""                       # "": the device id
password_file = ""                  # file holding the password; else $EDGEAGENT_PASSWORD
ca_file = ""                        # CA bundle for mqtts:// (default: the system's)
root = "continuum/v1"               # topic root of the deployment
keepalive = 30                      # seconds
backoff_min = 0.5                   # reconnect backoff: exponential with full jitter,
backoff_max = 60.0                  # between these bounds (seconds)

[sampling]
interval = 1.0                      # seconds between samples
disk_path = "/"                     # file system whose use is reported as 'disk'

[outbox]                            # store-and-forward (SQLite in state_dir)
max_samples = 100000                # bound on samples kept while the broker is away
max_age = 604800.0                  # seconds; older unsent samples are dropped (counted)
policy = "drop_oldest"              # when full: "drop_oldest" or "stop_sampling"
drain_rate = 200.0                  # samples/s when catching up after an outage
max_inflight = 50                   # samples sent but not yet acknowledged (QoS 1)
flush_timeout = 5.0                 # seconds spent sending the outbox on SIGTERM
resend_window = 5.0                 # seconds an acknowledged sample is kept, and sent again
                                    # after a reconnect (a crashed broker may have lost it;
                                    # consumers drop the duplicates by seq); 0: off

[forecaster]                        # the device's resident forecaster on a cloud node
enabled = true                      # false: publish metrics only
alias = "{device}/forecaster"
class = "continuum_node.forecast.Forecaster"
node = ""                           # "": the gateway places it
replicas = 0
args = {}                           # constructor arguments, e.g. { device = "cpu" }
timeout = 60.0                      # seconds, per remote call

[jobs]                              # 0 turns a job off
forecast_every = 12                 # a forecast every N samples -> dev/<device>/forecast (retained)
train_after = 48                    # first remote training after N samples
train_every = 0                     # retrain after every N new samples
train_interval = 0.0                # retrain every N seconds
train_epochs = 20
alert_band = 15.0                   # alert when cpu or mem leaves forecast +- band (points)
edge_fallback = true                # keep the model's edge export; forecast on the board
                                    # when the cloud is away, busy or too slow
forecast_deadline = 5.0             # seconds a remote forecast may take, else on the board
"""
