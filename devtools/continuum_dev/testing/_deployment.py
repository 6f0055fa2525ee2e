"""One parameterised deployment: a broker (given, or a mosquitto of its own), a
gateway, cloud nodes, edge agents and firmware-sim as child processes of this
one, under one topic root, each with its log file, every one of them stopped by
:meth:`Deployment.close` and killed by the kernel if this process dies."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import continuum_mqtt
from continuum_mqtt.service import Topics

from ._agent import Agent, toml_text
from ._broker import LocalBroker
from ._probes import wait_for, wait_line, wait_status
from ._process import child_env, preexec, stop_process

__all__ = ["Deployment"]

PathLike = str | os.PathLike[str]


class Deployment:
    """Processes of a continuum deployment for tests, benchmarks and the demo.

    ``url``: the broker; None starts a :class:`LocalBroker` of its own (options
    in ``broker_options``) on :meth:`open`. ``tmp``: the folder for logs
    (``<name>.log``), the directory database and state folders; None makes a
    temporary one, removed by :meth:`close` unless ``keep`` (or the ``with``
    block failed). ``root``: the topic root; default a fresh
    ``test-XXXXXXXX/continuum/v1``. Children run in ``cwd`` (default: the
    current directory) with ``pythonpath`` (default: ``[cwd]``, where
    ``examples`` is found) in front of PYTHONPATH, ``--log-level log_level``
    when given, and behind ``prefix`` (a command such as ``ip netns exec NS``).
    """

    def __init__(
        self,
        url: str | None = None,
        tmp: PathLike | None = None,
        *,
        root: str | None = None,
        cwd: PathLike | None = None,
        pythonpath: Iterable[PathLike] | None = None,
        log_level: str | None = None,
        prefix: Sequence[str] = (),
        logs: PathLike | None = None,
        broker_options: Mapping[str, Any] | None = None,
        keep: bool = False,
    ) -> None:
        self._owns_tmp = tmp is None
        self.tmp = Path(tmp) if tmp is not None else Path(tempfile.mkdtemp(prefix="continuum-"))
        self.logs = Path(logs) if logs is not None else self.tmp
        self.keep = keep
        self.root = root or f"test-{uuid.uuid4().hex[:8]}/continuum/v1"
        self.topics = Topics(self.root)
        self.db = str(self.tmp / "directory.db")
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        self.env = child_env([self.cwd] if pythonpath is None else pythonpath)
        self.log_level = log_level
        self.prefix = list(prefix)
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self._services: dict[str, str] = {}  # name -> 'gateway' or the node's id
        self.broker: LocalBroker | None = None
        if url is None:
            opts = {"log_path": str(self.logs / "mosquitto.log"), **(broker_options or {})}
            self.broker = LocalBroker(**opts)
            url = self.broker.url
        self.url = url

    # -- life cycle ------------------------------------------------------------------------
    def open(self) -> Deployment:
        """Make the folders; start the broker of its own, if it has one and it is down."""
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.broker is not None and self.broker.proc is None:
            self.broker.start()
        return self

    def start(
        self,
        nodes: Sequence[str] = ("n1",),
        *node_args: str,
        modules: Sequence[str] = ("examples.counter",),
        durable: bool = False,
        timeout: float = 60.0,
    ) -> Deployment:
        """A gateway and ``nodes`` (state folders ``tmp/<id>`` when ``durable``),
        started together; returns once the gateway lists every node online."""
        self.start_gateway(wait=False)
        for nid in nodes:
            state = self.tmp / nid if durable else None
            self.start_node(nid, *node_args, modules=modules, state_dir=state, wait=False)
        self.wait_nodes(nodes, timeout)
        return self

    def close(self) -> None:
        """Stop every process (last started first), the broker of its own, and
        remove the temporary folder of its own unless ``keep``."""
        for name in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(name)
        if self.broker is not None:
            self.broker.stop()
        if self._owns_tmp and not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Deployment:
        return self.open()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is not None and et is not KeyboardInterrupt and self._owns_tmp:
            self.keep = True
            print(f"logs kept in {self.logs}", file=sys.stderr)
        self.close()

    # -- processes -------------------------------------------------------------------------
    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        prefix: Sequence[str] | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        text: bool = False,
        bufsize: int = -1,
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` as ``name``: stderr (and stdout unless given) to
        ``logs/<name>.log``; it gets SIGTERM if this process dies."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise ValueError(f"{name} is running already")
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [*(self.prefix if prefix is None else prefix), *argv],
                cwd=self.cwd,
                env=self.env,
                stdin=stdin,
                stdout=log if stdout is None else stdout,
                stderr=log,
                text=text,
                bufsize=bufsize,
                preexec_fn=preexec(),
            )
        self.procs[name] = proc
        return proc

    def python(self, name: str, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """:meth:`spawn` of ``python *args`` (this interpreter)."""
        return self.spawn(name, [sys.executable, *args], **kw)

    def _common(self) -> list[str]:
        args = ["--broker", self.url, "--root", self.root]
        return args + (["--log-level", self.log_level] if self.log_level else [])

    def start_gateway(
        self,
        *extra: str,
        name: str = "gateway",
        db: PathLike | None = None,
        prefix: Sequence[str] | None = None,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.Popen[Any]:
        """``python -m continuum_gateway`` on ``db`` (default: ``tmp/directory.db``); with
        ``wait``, returns once its status is online."""
        self.open()
        args = ["-m", "continuum_gateway", *self._common(), "--db", str(db or self.db), *extra]
        proc = self.python(name, *args, prefix=prefix)
        self._services[name] = "gateway"
        if wait:
            self._wait_status(name, self.topics.gateway_status, timeout)
        return proc

    def start_node(
        self,
        node_id: str = "n1",
        *extra: str,
        modules: Sequence[str] = ("examples.counter",),
        state_dir: PathLike | None = None,
        name: str | None = None,
        prefix: Sequence[str] | None = None,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.Popen[Any]:
        """``python -m continuum_node --id node_id`` hosting ``modules`` (durable with
        ``state_dir``), ``extra`` arguments last; with ``wait``, returns once it is
        online and, if a gateway runs, the gateway lists it online."""
        self.open()
        name = name or node_id
        args = ["-m", "continuum_node", *self._common(), "--id", node_id]
        for m in modules:
            args += ["--module", m]
        if state_dir is not None:
            args += ["--state-dir", str(state_dir)]
        proc = self.python(name, *args, *extra, prefix=prefix)
        self._services[name] = node_id
        if wait:
            self._wait_status(name, self.topics.node_status(node_id), timeout)
            if any(self.alive(s) for s, kind in self._services.items() if kind == "gateway"):
                self.wait_nodes([node_id], timeout)
        return proc

    def start_agent(
        self,
        device: str,
        *,
        interval: float = 1.0,
        settings: Mapping[str, Any] | None = None,
        name: str | None = None,
        prefix: Sequence[str] | None = None,
    ) -> Agent:
        """``python -m continuum_edgeagent run`` for ``device``, sampling every ``interval``
        s, forecaster off; ``settings`` (top-level keys and sections) go over that
        configuration. State in ``tmp/<name>``, config ``tmp/<name>.toml``."""
        self.open()
        name = name or f"agent-{device}"
        state = self.tmp / name
        config: dict[str, Any] = {
            "device": device,
            "state_dir": str(state),
            **({"log_level": self.log_level} if self.log_level else {}),
            "broker": {"url": self.url, "root": self.root},
            "sampling": {"interval": interval},
            "forecaster": {"enabled": False},
        }
        for key, value in (settings or {}).items():
            if isinstance(value, Mapping) and isinstance(config.get(key), Mapping):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path = self.tmp / f"{name}.toml"
        path.write_text(toml_text(config))
        proc = self.python(name, "-m", "continuum_edgeagent", "run", "-c", str(path), prefix=prefix)
        return Agent(proc, state / "status.json")

    def start_firmware_sim(
        self,
        *args: str,
        name: str = "firmware-sim",
        prefix: Sequence[str] | None = None,
    ) -> subprocess.Popen[Any]:
        """``python -m continuum_sim run`` against this broker and root, ``args`` last."""
        self.open()
        argv = ["-m", "continuum_sim", "run", "--broker", self.url, "--root", self.root]
        return self.python(name, *argv, *args, prefix=prefix)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` to ``name`` and wait for it (SIGKILL after ``timeout``);
        it is forgotten. Returns its exit status."""
        self._services.pop(name, None)
        return stop_process(self.procs.pop(name), sig, timeout)

    def kill(self, name: str) -> int:
        return self.stop(name, signal.SIGKILL)

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def log(self, name: str) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, name: str, lines: int = 20) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    # -- probes ------------------------------------------------------------------------------
    def client(self, **kw: Any) -> continuum_mqtt.Client:
        """A client of this deployment (not connected yet: use it with ``with``)."""
        kw.setdefault("timeout", 10.0)
        return continuum_mqtt.Client(self.url, root=self.root, **kw)

    def check_services(self, node_ids: Iterable[str] | None = None) -> None:
        """RuntimeError (with its log's tail) if a gateway, or a node of
        ``node_ids`` (default: any), has exited."""
        nodes = None if node_ids is None else set(node_ids)
        for name, what in sorted(self._services.items()):
            if what != "gateway" and nodes is not None and what not in nodes:
                continue
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def _wait_status(self, name: str, topic: str, timeout: float) -> None:
        try:
            wait_status(self.url, topic, "online", timeout, self.procs[name])
        except (TimeoutError, RuntimeError) as exc:
            raise type(exc)(f"{name}: {exc}\n{self.log_tail(name)}") from None

    def wait_nodes(
        self,
        node_ids: Iterable[str],
        timeout: float = 30.0,
        *,
        classes: Iterable[str] = (),
        client: continuum_mqtt.Client | None = None,
    ) -> None:
        """Until the gateway lists every node of ``node_ids`` online (hosting
        ``classes``), asked through ``client`` (default: a client of its own);
        fails at once if a gateway or node exits."""
        want, need = set(node_ids), set(classes)
        end = time.monotonic() + timeout
        last: Exception | None = None
        with contextlib.ExitStack() as stack:
            c = client or stack.enter_context(self.client(timeout=2.0))
            while True:
                self.check_services(want)
                try:
                    listed = c.nodes()
                    online = {
                        n["id"]
                        for n in listed
                        if n["state"] == "online" and need <= set(n.get("classes") or ())
                    }
                    if want <= online:
                        return
                except Exception as exc:  # the gateway may not be up yet
                    last = exc
                if time.monotonic() > end:
                    raise TimeoutError(
                        f"nodes {sorted(want)} not online within {timeout} s ({last!r})"
                    )
                time.sleep(0.1)

    def wait_gateway(self, timeout: float = 30.0) -> None:
        """Until the gateway answers a request. After a broker crash its retained
        ``online`` status survives (no will was published), so a client does not
        wait for it: its requests are republished until the gateway is back
        (PUBACK 0x10, protocol.md section 20), which this waits for."""

        def answers() -> bool:
            try:
                with self.client(timeout=2.0) as client:
                    client.nodes()
                return True
            except continuum_mqtt.DeadlineExpired:
                return False

        wait_for(answers, timeout, 0.1, "the gateway did not answer")

    def wait_line(self, name: str, want: str, timeout: float = 15.0) -> None:
        """Until ``name`` (spawned with ``stdout=PIPE``) prints the line ``want``."""
        stream = self.procs[name].stdout
        assert stream is not None, f"{name} has no stdout pipe"
        if not wait_line(stream, want, timeout):
            raise RuntimeError(f"{name} did not print {want!r}:\n{self.log_tail(name)}")
