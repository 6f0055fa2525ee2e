"""Who may compute over which blocks. A driver calls the blocks with its
node's client (:mod:`continuum_node.peer`), that is as the node's broker
account, which may call every block: so before it touches any block it checks
that its own caller (:func:`continuum_mqtt.current_call`) may call each one
(docs/protocol.md section 21: the owner, an account granted, every account
with ``"*"``, an admin), from the blocks' owner and grants in the directory
(the gateway's ``resolve_many``, as the node's account sees them). Otherwise
the call is refused with ``forbidden`` naming the blocks it may not call, and
no block is called: a device never reads or computes on another's data
through a driver. For a caller other than an admin, a reference that names no
object is refused the same way: as the gateway makes what a caller may not see
look unknown, a driver tells no one whether another's block exists."""

from __future__ import annotations

from typing import Any

from continuum_mqtt import Client, ContinuumError, Forbidden, UnknownObject, current_call
from continuum_mqtt.service import EVERYONE

from ._errors import BadBlock, BlocksFailed

__all__ = ["blocks_for_caller", "failed"]


def failed(errors: dict[str, ContinuumError], names: dict[str, str] | None = None) -> BlocksFailed:
    """``ml.blocks_failed`` for ``errors`` by target, reported under the
    references the caller gave (``names``: target -> reference)."""
    names = names or {}
    detail = {names.get(t, t): {"code": e.code, "message": e.message} for t, e in errors.items()}
    return BlocksFailed(f"{len(errors)} block(s) failed: {sorted(detail)[:5]}", errors=detail)


def _may_call(caller: str, info: dict[str, Any]) -> bool:
    grants = info.get("grants") or []
    return caller == info.get("owner") or caller in grants or EVERYONE in grants


def blocks_for_caller(client: Client, refs: list[str]) -> list[str]:
    """What to call for the blocks ``refs`` (ids or aliases), in order, once
    the caller of the call now running may call every one: the references
    themselves for an admin, else the object ids they resolve to (so a name
    cannot point elsewhere between the check and the calls). Raises
    ``forbidden`` (field ``blocks``: the references refused) when the caller
    may not call some, ``ml.blocks_failed`` when some could not be looked up,
    ``forbidden`` outside a call (no caller to act for)."""
    call = current_call()
    if call is None:
        raise Forbidden("a driver computes over blocks only for the caller of an active call")
    if call.admin:
        return refs
    found = client.lookup(refs)
    refused: list[str] = []
    errors: dict[str, ContinuumError] = {}
    ids: list[str] = []
    for ref, info in zip(refs, found, strict=True):
        if isinstance(info, UnknownObject) or (
            isinstance(info, dict) and not _may_call(call.caller, info)
        ):
            refused.append(ref)
        elif isinstance(info, ContinuumError):
            errors[ref] = info
        else:
            ids.append(str(info["id"]))
    if refused:
        shown = ", ".join(refused[:5]) + (f" (+{len(refused) - 5})" if len(refused) > 5 else "")
        raise Forbidden(
            f"{call.caller} may not call {len(refused)} of the blocks: {shown}",
            caller=call.caller,
            blocks=refused,
        )
    if errors:
        raise failed(errors)
    if len(set(ids)) != len(ids):
        raise BadBlock("a block is listed twice (under two names)", field="blocks")
    return ids
