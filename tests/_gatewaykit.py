"""The gateway's methods in-process, over a directory of their own: one online
node n1 hosting the classes given, node calls answered at once."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from continuum_gateway._api import DirectoryApi
from continuum_gateway._directory import Directory
from continuum_gateway._rights import AccessApi

from continuum_mqtt.service import Dispatcher, Rights, Topics

__all__ = ["directory_api"]


def directory_api(
    db: Path, classes: Iterable[str], admins: Iterable[str] = ()
) -> tuple[DirectoryApi, Dispatcher]:
    directory = Directory(str(db))
    manifest = {c: {"methods": {}} for c in classes}
    directory.node_status("n1", {"state": "online", "classes": manifest})
    pool = ThreadPoolExecutor(1)
    api = DirectoryApi(
        directory,
        Topics("t"),
        lambda node, method, kwargs, deadline: {"id": kwargs.get("obj")},
        pool=pool,
        alias_pool=pool,
        rights=Rights(admins),
    )
    return api, Dispatcher("gateway").register(api).register(AccessApi(api.access, api.node_call))
