"""The directory's rights (protocol.md section 21): which objects a caller may
see and manage, over the toolkit's :class:`~continuum_mqtt.service.Rights`.

An object the caller may not see is answered as if it did not exist
(``unknown_object``): its id, node and aliases stay private."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from continuum_mqtt import Forbidden, UnknownObject
from continuum_mqtt.service import ANONYMOUS, NO_CONTEXT, Access, Context, Rights, method

from ._directory import Directory

__all__ = ["AccessApi", "DirectoryRights", "access_of"]

# what only admins see of a node (where it runs)
_PRIVATE_NODE_FIELDS = ("host", "pid")


def access_of(info: dict[str, Any]) -> Access:
    return Access(info.get("owner") or ANONYMOUS, tuple(info.get("grants") or ()))


class DirectoryRights:
    def __init__(self, directory: Directory, rights: Rights) -> None:
        self.directory = directory
        self.rights = rights

    def open_classes(self) -> set[str]:
        """Classes with at least one open method (``@active(open=True)``), by
        the manifests of the online nodes."""
        return {
            path
            for path, entry in self.directory.classes().items()
            if any(m.get("open") for m in (entry.get("methods") or {}).values())
        }

    def visible(
        self, info: dict[str, Any], caller: str, open_classes: set[str] | None = None
    ) -> bool:
        if self.rights.may_see(access_of(info), caller):
            return True  # without reading the nodes' manifests (a resolve's usual case)
        opened = self.open_classes() if open_classes is None else open_classes
        return info.get("class") in opened

    def resolve(self, ref: str, caller: str) -> dict[str, Any]:
        """The object ``ref`` names, if ``caller`` may see it."""
        self.rights.check_caller(caller)
        info = self.directory.resolve(ref)
        if not self.visible(info, caller):
            raise UnknownObject(f"no object with id or alias {ref!r}", ref=ref)
        return info

    def managed(self, ref: str, caller: str) -> dict[str, Any]:
        """The object ``ref`` names, if ``caller`` may change it."""
        info = self.resolve(ref, caller)
        self.rights.check_manage(access_of(info), caller, f"object {info['id']}")
        return info

    def objects(self, found: list[dict[str, Any]], caller: str) -> list[dict[str, Any]]:
        self.rights.check_caller(caller)
        if self.rights.is_admin(caller):
            return found
        opened = self.open_classes()
        return [o for o in found if self.visible(o, caller, opened)]

    def nodes(self, found: list[dict[str, Any]], caller: str) -> list[dict[str, Any]]:
        self.rights.check_caller(caller)
        if self.rights.is_admin(caller):
            return found
        return [{k: v for k, v in n.items() if k not in _PRIVATE_NODE_FIELDS} for n in found]


class AccessApi:
    """The gateway methods that change who may use an object: ``grant``,
    ``revoke`` and ``set_owner`` (protocol.md section 16). The object's node
    learns the change first (it checks calls on its own), then the directory."""

    def __init__(self, access: DirectoryRights, node_call: Callable[..., Any]) -> None:
        self.access = access
        self.rights = access.rights
        self.directory = access.directory
        self.node_call = node_call

    @method(changes=True, context=("ctx",))
    def grant(self, ref: str, user: str, _ctx: Context = NO_CONTEXT) -> dict[str, Any]:
        """Let ``user`` (a username, or ``*``: everyone) call the object."""
        info = self.access.managed(ref, _ctx.caller)
        return self._set_access(info, info["owner"], [*info["grants"], user], _ctx, "grant")

    @method(changes=True, context=("ctx",))
    def revoke(self, ref: str, user: str, _ctx: Context = NO_CONTEXT) -> dict[str, Any]:
        info = self.access.managed(ref, _ctx.caller)
        grants = [g for g in info["grants"] if g != user]
        return self._set_access(info, info["owner"], grants, _ctx, "revoke")

    @method(changes=True, context=("ctx",))
    def set_owner(self, ref: str, owner: str, _ctx: Context = NO_CONTEXT) -> dict[str, Any]:
        """Give the object to ``owner`` (admins only: e.g. objects of a 0.1
        directory, which belong to the anonymous account)."""
        if not self.rights.is_admin(_ctx.caller):
            raise Forbidden("only an admin may change an object's owner", caller=_ctx.caller)
        info = self.directory.resolve(ref)
        return self._set_access(info, owner, info["grants"], _ctx, "set_owner")

    def _set_access(
        self, info: dict[str, Any], owner: str, grants: list[str], ctx: Context, method: str
    ) -> dict[str, Any]:
        access = Access.of(owner, grants)  # checks the names, drops repeats
        self.node_call(info["node"], "access", {"obj": info["id"], **access.wire()}, ctx.deadline)
        return self.directory.set_access(
            info["id"], access.owner, list(access.grants), rid=ctx.rid, method=method
        )
