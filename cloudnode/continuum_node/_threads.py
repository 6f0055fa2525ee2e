"""Compute threads of a node: the intra-op thread setting that holds whatever
a hosted class imports, and whenever; and which jobs are *long* (methods
marked ``@active(long=True)``), for the scheduler's long-call budget.

The intra-op setting works at two levels:

* :func:`set_thread_env` puts ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``... in the node's environment before any hosted
  module is imported (those the operator set are left as they are): OpenMP and
  BLAS runtimes read them when they load, and size every thread's team from
  them, so a worker thread that first touches torch (or numpy's BLAS) later
  gets a team of that size, not one per core.
* :func:`hold_torch_threads` calls ``torch.set_num_threads`` (and
  ``set_num_interop_threads``) at once if torch is loaded, else right after
  torch's import completes, from a ``sys.meta_path`` finder: a class that
  imports torch inside its methods gets the setting before its first op. The
  finder costs nothing per call (imports of loaded modules never reach
  ``sys.meta_path``) and about a microsecond per first import of any other
  module; a check of ``sys.modules`` at each call start would cost every
  call instead, for the same effect.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from types import ModuleType
from typing import Any

__all__ = [
    "THREAD_ENV",
    "PostImport",
    "default_long_workers",
    "hold_torch_threads",
    "is_long",
    "set_thread_env",
]

log = logging.getLogger("continuum.node")

THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
)
"""The variables through which OpenMP, MKL, OpenBLAS, numexpr, Accelerate and
BLIS size their thread pools."""


def set_thread_env(n: int, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set each of :data:`THREAD_ENV` to ``n`` in ``environ`` (default
    ``os.environ``) unless set already (the operator's choice stands); returns
    the values now in force. Call before the libraries load."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError("thread count must be a positive integer")
    env = os.environ if environ is None else environ
    for name in THREAD_ENV:
        if not env.get(name):
            env[name] = str(n)
    return {name: env[name] for name in THREAD_ENV}


def default_long_workers(threads: int, cores: int | None = None) -> int:
    """Long calls that fit the cores but one (left to the network and light
    calls), at ``threads`` intra-op threads each; at least 1."""
    cores = cores or os.cpu_count() or 2
    return max(1, (cores - 1) // max(1, threads))


# -- torch ------------------------------------------------------------------------


def _apply_torch(torch: Any, threads: int, interop: int | None) -> None:
    torch.set_num_threads(threads)
    if interop is not None:
        try:
            torch.set_num_interop_threads(interop)
        except RuntimeError:  # inter-op work started already: it can be set only once
            log.warning("torch inter-op threads were set already; kept")
    log.info("torch: %d intra-op thread(s)", torch.get_num_threads())


class _Loader(importlib.abc.Loader):
    """The module's own loader, then ``then(module)``."""

    def __init__(self, inner: importlib.abc.Loader, then: Callable[[ModuleType], None]) -> None:
        self.inner = inner
        self.then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        module.__loader__ = self.inner  # as if imported plainly
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        self.then(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package...
        return getattr(self.inner, name)


class PostImport(importlib.abc.MetaPathFinder):
    """Runs ``hooks[name](module)`` once top-level module ``name`` has been
    imported (executed in full), on the importing thread, before the import
    returns; once per name. Put it first in ``sys.meta_path``."""

    def __init__(self, hooks: Mapping[str, Callable[[ModuleType], None]]) -> None:
        self.hooks = dict(hooks)
        self._busy = threading.local()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        hook = self.hooks.get(fullname)
        if hook is None or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname  # the finders after this one find the real spec
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None:
            return spec
        del self.hooks[fullname]  # once
        spec.loader = _Loader(spec.loader, hook)
        return spec


def hold_torch_threads(threads: int, interop: int | None = None) -> PostImport | None:
    """Give torch ``threads`` intra-op threads (and ``interop`` inter-op ones,
    None: torch's default) now if it is loaded, else as soon as any code of
    the process imports it. Returns the finder installed, if one was."""
    torch = sys.modules.get("torch")
    if torch is not None:
        _apply_torch(torch, threads, interop)
        return None
    finder = PostImport({"torch": lambda m: _apply_torch(m, threads, interop)})
    sys.meta_path.insert(0, finder)
    return finder


# -- long calls -----------------------------------------------------------------------


def is_long(actor: Any, job: Any, classes: Mapping[str, type] | None = None) -> bool:
    """Whether ``job`` (a call or a feed sample, for ``actor``'s object or for
    a pool's instance) runs a method marked ``@active(long=True)``. An object
    whose instance is not in memory (evicted) is looked up by its class path
    in ``classes``."""
    req = getattr(job, "req", None)
    if req is None:
        return False
    instance = getattr(job, "instance", None) or getattr(actor, "instance", None)
    if instance is not None:
        cls: type | None = type(instance)
    else:
        cls = (classes or {}).get(getattr(actor, "cls_path", None) or "")
    methods = getattr(cls, "__active_methods__", None)
    spec = methods.get(req.method) if isinstance(methods, dict) else None
    return bool(getattr(spec, "long", False))
