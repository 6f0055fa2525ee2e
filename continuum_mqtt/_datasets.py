"""Partitioned data as active objects: a :class:`Dataset` is a list of
blocks, each an object resident on a node, found again by the dataset's name.

:func:`create_dataset` creates ``count`` blocks of one class, placed across
the live nodes hosting it (``"round_robin"`` in node order, or ``"size"``:
each block, largest first, on the node holding the fewest bytes so far),
block ``i`` under the alias ``<name>#<i>`` (:func:`block_alias`), the creates
in flight together. :func:`open_dataset` finds them again from any process:
it resolves ``<name>#0``, ``<name>#1``... in bulk until one is missing.

:meth:`Dataset.fan_out` calls a method on every block where it lives (the
client's fan-out: pipelined per node, per-block results and errors, a
deadline, progress), with per-block keyword arguments; :meth:`Dataset.reduce`
hands the whole computation to an active object on a chosen node (a
*driver*), which fans out from there and merges the blocks' results where it
runs: intermediate results go node to node, the edge sends one call and gets
one answer. On the wire all of these are ordinary gateway requests and calls
(docs/protocol.md §25).

Edge-safe: imports the standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._errors import BadRequest, ContinuumError, NoNodeAvailable, UnknownObject
from ._protocol import canonical_class_path

if TYPE_CHECKING:
    from ._fanout import FanOutResult, ProgressFn2
    from ._proxy import ObjectProxy, _Directory
    from .service._requester import ProgressFn

__all__ = ["PLACEMENTS", "Dataset", "block_alias", "create_dataset", "open_dataset", "place"]

PLACEMENTS = ("round_robin", "size")
_PROBE = 256  # aliases resolved per request by open_dataset


def block_alias(name: str, index: int) -> str:
    """The alias of block ``index`` of dataset ``name``."""
    return f"{name}#{index}"


def place(
    nodes: Sequence[str],
    count: int,
    placement: str = "round_robin",
    sizes: Sequence[int] | None = None,
) -> list[str]:
    """The node of each of ``count`` blocks (see the module doc)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
    if not nodes:
        raise NoNodeAvailable("no live node hosts the blocks' class")
    if placement == "round_robin":
        return [nodes[i % len(nodes)] for i in range(count)]
    if sizes is None or len(sizes) != count:
        raise ValueError("placement 'size' needs the size of every block")
    load = dict.fromkeys(nodes, 0)
    out = [""] * count
    for i in sorted(range(count), key=lambda i: (-sizes[i], i)):
        node = min(nodes, key=lambda n: (load[n], n))
        out[i] = node
        load[node] += sizes[i]
    return out


class Dataset:
    """The blocks of a dataset, in order (``blocks``: proxies), named ``name``."""

    def __init__(self, client: _Directory, name: str, blocks: list[ObjectProxy]) -> None:
        self.client = client
        self.name = name
        self.blocks = blocks

    @property
    def refs(self) -> list[str]:
        """The blocks' object ids, in order."""
        return [b._id for b in self.blocks if b._id is not None]

    def __len__(self) -> int:
        return len(self.blocks)

    def nodes(self) -> dict[str, int]:
        """Blocks per node, as this client last knew their locations."""
        counts: dict[str, int] = {}
        for b in self.blocks:
            node = self.client._node_of(b) or ""
            counts[node] = counts.get(node, 0) + 1
        return counts

    def fan_out(
        self,
        method: str,
        *args: Any,
        per_block: Sequence[Mapping[str, Any]] | None = None,
        window: int = 4,
        timeout: float | None = None,
        on_progress: ProgressFn2 | None = None,
        **kwargs: Any,
    ) -> FanOutResult:
        """``method(*args, **kwargs)`` on every block where it lives (the
        client's :meth:`fan_out`; results keyed by block id, in block order);
        ``per_block[i]``: keyword arguments of block ``i``'s own."""
        per_object = None
        if per_block is not None:
            if len(per_block) != len(self.blocks):
                raise ValueError(f"per_block has {len(per_block)} entries for {len(self)} blocks")
            per_object = dict(zip(self.refs, per_block, strict=True))
        return self.client.fan_out(
            self.blocks,
            method,
            *args,
            window=window,
            timeout=timeout,
            on_progress=on_progress,
            per_object=per_object,
            **kwargs,
        )

    def reduce(
        self,
        driver: ObjectProxy,
        method: str,
        *args: Any,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
        **kwargs: Any,
    ) -> Any:
        """``driver.method(block ids, *args, **kwargs)``: one active call to
        the object ``driver`` (placed on the node of your choice), which
        computes over the blocks from there (see the module doc)."""
        m = getattr(driver, method).options(timeout=timeout, on_progress=on_progress)
        return m(self.refs, *args, **kwargs)

    def delete(self) -> None:
        """Delete every block (and with them their aliases)."""
        for b in self.blocks:
            try:
                self.client.delete(b)
            except UnknownObject:
                pass
        self.blocks = []

    def __repr__(self) -> str:
        return f"<Dataset {self.name!r}: {len(self)} blocks on {self.nodes()}>"


def _live_nodes(client: _Directory, class_path: str) -> list[str]:
    return sorted(
        n["id"]
        for n in client.nodes()
        if n.get("state") == "online" and class_path in (n.get("classes") or [])
    )


def create_dataset(
    client: _Directory,
    name: str,
    class_path: str,
    count: int,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    per_block: Sequence[Mapping[str, Any]] | None = None,
    placement: str = "round_robin",
    sizes: Sequence[int] | None = None,
    nodes: Sequence[str] | None = None,
    replicas: int = 0,
) -> Dataset:
    """``count`` objects of ``class_path`` (constructor ``args``, ``kwargs``,
    and ``per_block[i]`` over them) placed across ``nodes`` (default: the live
    nodes hosting the class) by ``placement``, with ``replicas`` copies each;
    block ``i`` is aliased :func:`block_alias` ``(name, i)``. Creation
    arguments go through the gateway (1 MiB a request): fill large blocks with
    calls afterwards. On a failure the blocks made are deleted again and the
    error is raised."""
    if not name or "#" in name:
        raise BadRequest("a dataset name is non-empty text without '#'")
    if count < 1:
        raise ValueError("a dataset has at least one block")
    if per_block is not None and len(per_block) != count:
        raise ValueError(f"per_block has {len(per_block)} entries for {count} blocks")
    path = canonical_class_path(class_path)
    live = list(nodes) if nodes else _live_nodes(client, path)
    # no node lists the class (local mode lists none): the gateway places each
    # block, or answers why it cannot (unknown_class, no_node)
    targets: list[str | None] = (
        list(place(live, count, placement, sizes)) if live else [None] * count
    )
    send: Callable[..., Future[Any]] | None = getattr(client, "_gateway_future", None)
    timeout = float(getattr(client, "timeout", 30.0))
    futures: list[Future[Any]] = []
    for i, node in enumerate(targets):
        request = {
            "cls": path,
            "args": list(args),
            "kwargs": {**(kwargs or {}), **(per_block[i] if per_block else {})},
            "node": node,
            "alias": block_alias(name, i),
            "replicas": replicas or None,
        }
        if send is not None:  # all in flight together
            futures.append(send("create", timeout, **request))
        else:
            fut: Future[Any] = Future()
            try:
                fut.set_result(client._gateway("create", **request))
            except ContinuumError as exc:
                fut.set_exception(exc)
            futures.append(fut)
    blocks: list[ObjectProxy] = []
    error: ContinuumError | None = None
    for fut in futures:
        try:
            blocks.append(client._proxy(fut.result()))
        except ContinuumError as exc:
            error = error or exc
    if error is not None:
        Dataset(client, name, blocks).delete()
        raise error
    return Dataset(client, name, blocks)


def open_dataset(client: _Directory, name: str) -> Dataset:
    """The dataset ``name``, from its blocks' aliases; ``unknown_object``
    when it has no block 0."""
    blocks: list[ObjectProxy] = []
    while True:
        start = len(blocks)
        refs = [block_alias(name, i) for i in range(start, start + _PROBE)]
        found = client._resolve_many(refs, float(getattr(client, "timeout", 30.0)))
        for ref in refs:
            got = found.get(ref)
            if got is None or isinstance(got, ContinuumError):
                if isinstance(got, ContinuumError) and not isinstance(got, UnknownObject):
                    raise got
                if not blocks:
                    raise UnknownObject(f"no dataset {name!r} (no object {block_alias(name, 0)!r})")
                return Dataset(client, name, blocks)
            blocks.append(got)
