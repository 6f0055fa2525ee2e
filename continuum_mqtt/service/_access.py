"""Who may do what to an object (protocol.md section 21): :class:`Rights`.

Every object has an *owner* (the broker account that created it) and
*grants* (accounts that may call it too; ``"*"``: everyone). A caller may

* **call** a method of an object it owns, is granted, or, whatever the
  object, a method its class declares open (``@active(open=True)``);
* **see** it (``resolve``, ``objects``) when it may call it or its class has
  open methods;
* **manage** it (alias, unalias, bind, unbind, grant, revoke, delete) only
  as its owner;
* **name** it with an alias in its own namespace, ``<username>/...``;
* **feed** it with a device's metrics only when the device is the caller.

Anonymous callers (no broker username: a development broker) act as one
account, ``anonymous``, with an admin's rights: without accounts there are no
identities to protect (and on such a broker any client may claim any
username). A deployment with accounts runs its services with
``allow_anonymous=False`` (``--no-anonymous``), and they refuse every anonymous
request. Admins (the services' ``--admin`` accounts) may do all of it. The
gateway enforces the directory's rights and a node enforces call rights on its
own: neither takes the other's word for who the caller is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .._errors import BadRequest, Forbidden
from .._protocol import ANONYMOUS

__all__ = ["EVERYONE", "MAX_ALIASES", "MAX_ALIAS_CHARS", "Access", "Rights"]

EVERYONE = "*"
MAX_ALIAS_CHARS = 256
MAX_ALIASES = 16  # per object


@dataclass(frozen=True)
class Access:
    """An object's owner and grants."""

    owner: str = ANONYMOUS
    grants: tuple[str, ...] = ()

    @classmethod
    def of(cls, owner: object, grants: object = ()) -> Access:
        """From request or record fields (checked: BadRequest when malformed)."""
        if not isinstance(owner, str) or not owner or "/" in owner:
            raise BadRequest("'owner' must be a username")
        if not isinstance(grants, list | tuple) or not all(
            isinstance(g, str) and g and "/" not in g for g in grants
        ):
            raise BadRequest("'grants' must be a list of usernames (or '*')")
        return cls(owner, tuple(dict.fromkeys(grants)))

    def wire(self) -> dict[str, object]:
        return {"owner": self.owner, "grants": list(self.grants)}


class Rights:
    """The rights of callers, given the deployment's admin accounts."""

    def __init__(self, admins: Iterable[str] = (), *, allow_anonymous: bool = True) -> None:
        if isinstance(admins, str):
            raise TypeError("admins is a list of usernames, not one string")
        self.admins = frozenset(admins)
        self.allow_anonymous = allow_anonymous

    def is_admin(self, caller: str) -> bool:
        return caller in self.admins or (caller == ANONYMOUS and self.allow_anonymous)

    def may_call(self, access: Access, caller: str, open_method: bool = False) -> bool:
        return (
            open_method
            or caller == access.owner
            or caller in access.grants
            or EVERYONE in access.grants
            or self.is_admin(caller)
        )

    def may_see(self, access: Access, caller: str, has_open: bool = False) -> bool:
        return self.may_call(access, caller, has_open)

    def may_manage(self, access: Access, caller: str) -> bool:
        return caller == access.owner or self.is_admin(caller)

    # -- checks that raise ------------------------------------------------------------
    def check_caller(self, caller: str) -> None:
        """Any request: refused for an anonymous caller where accounts are required."""
        if caller == ANONYMOUS and not self.allow_anonymous:
            raise Forbidden("this deployment requires a broker account (a username)")

    def check_call(
        self, access: Access, caller: str, method: str, obj: str, open_method: bool
    ) -> None:
        """A call of ``method`` on the object ``obj`` (on every call: the
        message is only made for a refusal)."""
        self.check_caller(caller)
        if not self.may_call(access, caller, open_method):
            raise Forbidden(f"{caller} may not call {method} of {obj}", caller=caller)

    def check_manage(self, access: Access, caller: str, what: str) -> None:
        if not self.may_manage(access, caller):
            raise Forbidden(f"only the owner of {what} may change it", caller=caller)

    def check_alias(self, name: object, caller: str) -> str:
        """``name`` if ``caller`` may take it: BadRequest when malformed,
        Forbidden when outside the caller's namespace."""
        if not isinstance(name, str) or not name:
            raise BadRequest("an alias must be a non-empty text string")
        if len(name) > MAX_ALIAS_CHARS:
            raise BadRequest(
                f"an alias has at most {MAX_ALIAS_CHARS} characters", limit=MAX_ALIAS_CHARS
            )
        if self.is_admin(caller):
            return name
        if not name.startswith(f"{caller}/") or len(name) == len(caller) + 1:
            raise Forbidden(
                f"{caller} may only take aliases '{caller}/<name>', not {name!r}", caller=caller
            )
        return name

    def check_aliases(self, names: Sequence[str]) -> None:
        if len(names) > MAX_ALIASES:
            raise BadRequest(f"an object has at most {MAX_ALIASES} aliases", limit=MAX_ALIASES)

    def check_device(self, device: str, caller: str) -> None:
        """Binding ``device``'s metrics needs the right to its stream: the
        broker pins ``<root>/dev/<username>/#`` to the account."""
        if device != caller and not self.is_admin(caller):
            raise Forbidden(
                f"{caller} may not read the metrics of device {device!r}", caller=caller
            )
