"""Reconciliation: what the gateway does with the objects a node reports
(control ``list``) when the node comes (back) online.

The rule: a node's copy is deleted only on a positive record that it must go
(a tombstone: deleted by a request, moved off that node by a failover, or
discarded after a create that did not complete). Everything else the
directory does not account for is adopted (a primary the directory does not
know: its entry is re-created from the node's record, aliases included when
free) or reported as a stray (kept on the node, listed in the directory's
``strays`` table, logged at WARNING). A damaged, empty or older directory
therefore costs reports, never objects.

:func:`plan` decides (pure, unit-tested); :class:`Reconciler` applies.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from continuum_mqtt import ContinuumError, ObjectNotHere
from continuum_mqtt.service import ANONYMOUS

from . import _records as rec
from ._directory import Directory

__all__ = ["Held", "Plan", "Reconciler", "parse_list", "plan"]

log = logging.getLogger("continuum.gateway")

LOG_EACH = 50  # per kind and reconciliation; the summary line counts the rest


@dataclass
class Held:
    """One object as a node's control ``list`` reports it."""

    id: str
    cls: str | None
    role: str | None  # "primary" | "replica"; None: the node cannot tell (quarantined)
    replicas: list[str] = field(default_factory=list)
    aliases: list[str] | None = None  # None: the node does not keep aliases (older node)
    quarantined: bool = False
    reason: str | None = None
    owner: str = ANONYMOUS  # older nodes do not say: the anonymous account's
    grants: list[str] = field(default_factory=list)


def _texts(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return list(value)
    return None


def parse_list(node: str, entries: Any) -> list[Held]:
    """The node's ``list`` reply, checked; malformed entries are skipped (and logged)."""
    if not isinstance(entries, list):
        raise ValueError(f"node {node}: 'list' returned a {type(entries).__name__}, not a list")
    out: list[Held] = []
    for e in entries:
        oid = e.get("id") if isinstance(e, dict) else None
        if not isinstance(oid, str) or not oid:
            log.warning("node %s listed a malformed object entry: %.200r", node, e)
            continue
        cls = e.get("class")
        reason = e.get("reason")
        out.append(
            Held(
                id=oid,
                cls=cls if isinstance(cls, str) and cls else None,
                role=e["role"] if e.get("role") in ("primary", "replica") else None,
                replicas=_texts(e.get("replicas")) or [],
                aliases=_texts(e.get("aliases")) if "aliases" in e else None,
                quarantined=e.get("quarantined") is True,
                reason=reason if isinstance(reason, str) else None,
                owner=owner if isinstance((owner := e.get("owner")), str) and owner else ANONYMOUS,
                grants=_texts(e.get("grants")) or [],
            )
        )
    return out


@dataclass
class Plan:
    delete: list[tuple[str, str]] = field(default_factory=list)  # (object, why)
    adopt: list[Held] = field(default_factory=list)
    take_over: list[Held] = field(default_factory=list)  # promoted after the directory's record
    push: list[tuple[str, list[str]]] = field(default_factory=list)  # aliases to send
    strays: list[dict[str, str]] = field(default_factory=list)  # {"id", "kind", "detail"}
    missing: list[str] = field(default_factory=list)  # listed on the node, not held there
    found: list[str] = field(default_factory=list)  # listed on the node and held there
    pending: list[str] = field(default_factory=list)  # a create in progress: left alone


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def tombstone_reason(t: dict[str, Any]) -> str:
    rid = f" (request {t['rid']})" if t.get("rid") else ""
    what = {
        "deleted": "deleted",
        "moved": "moved to another node by a failover",
        "discarded": "discarded: its create did not complete",
    }.get(t["what"], t["what"])
    return f"{what}{rid} at {_when(t['time'])}"


def plan(
    node: str,
    held: list[Held],
    known: dict[str, dict[str, Any]],
    tombstones: dict[str, dict[str, Any]],
    pending: set[str],
    listed_here: list[str],
) -> Plan:
    """Decide, for node ``node`` that holds ``held``: ``known`` is the
    directory's info for the held ids it knows, ``tombstones`` the tombstone
    applying to this node's copy of each id, ``pending`` the ids of creates in
    progress, ``listed_here`` the ids whose primary the directory says is ``node``."""
    p = Plan()
    held_ids = {h.id for h in held}
    for h in held:
        info = known.get(h.id)
        if h.id in pending and info is None:
            p.pending.append(h.id)
            continue
        if info is not None and (info["node"] == node or node in info["replicas"]):
            _keep(p, node, h, info)
            continue
        stone = tombstones.get(h.id)
        if stone is not None and (info is None or stone["node"] == node):
            p.delete.append((h.id, tombstone_reason(stone)))
        elif info is not None:
            p.strays.append(_foreign(node, h, info))
        elif (stray := _not_adoptable(h)) is not None:
            p.strays.append(stray)
        else:
            p.adopt.append(h)
    p.missing = [oid for oid in listed_here if oid not in held_ids]
    return p


def _not_adoptable(h: Held) -> dict[str, str] | None:
    """Why an object the directory does not know cannot be adopted from this
    node (None: it can: a primary of a known class)."""
    why = h.reason or "quarantined"
    if h.cls is None:
        kind, detail = "unknown-class", f"the node cannot tell its class: {why}"
    elif h.role is None:
        kind, detail = "unknown-role", f"the node cannot tell whether it is the primary: {why}"
    elif h.role != "primary":
        kind, detail = (
            "unknown-replica",
            "a replica of an object the directory does not know "
            "(adopted when its primary's node reports it)",
        )
    else:
        return None
    return {"id": h.id, "kind": kind, "detail": detail}


def _keep(p: Plan, node: str, h: Held, info: dict[str, Any]) -> None:
    if info["node"] != node and h.role == "primary":
        p.take_over.append(h)  # promoted by a failover the directory does not record
    if info["node"] == node:
        p.found.append(h.id)
    if h.aliases is not None and not h.quarantined and sorted(h.aliases) != info["aliases"]:
        p.push.append((h.id, info["aliases"]))  # a quarantined copy refuses any change


def _foreign(node: str, h: Held, info: dict[str, Any]) -> dict[str, str]:
    return {
        "id": h.id,
        "kind": "other-primary" if h.role == "primary" else "not-a-replica",
        "detail": f"held as {h.role or 'unknown role'}, but the directory names primary "
        f"{info['node']} "
        f"and replicas {info['replicas']} and has no record of a move off {node}",
    }


class Reconciler:
    """Applies a :class:`Plan`: directory writes in one transaction, then the
    node calls (deletions with a tombstone, alias pushes), all logged."""

    def __init__(
        self,
        directory: Directory,
        node_call: Callable[[str, str, dict[str, Any], float | None], Any],
        deadline: Callable[[], float],
        *,
        quiet: bool = False,
    ) -> None:
        self.directory = directory
        self.node_call = node_call
        self.deadline = deadline
        self.quiet = quiet  # no line per object (rebuild), the summary only

    def run(self, node: str, held: list[Held], *, partial: bool = False) -> Plan:
        """Reconcile ``node``, which holds ``held``. ``partial``: ``held`` is
        not all it holds (no missing objects; reports add to the node's last)."""
        d = self.directory
        with d.transaction() as c:
            ids = [h.id for h in held]
            known = {oid: info for oid in ids if (info := d.find(oid)) is not None}
            stones = rec.tombstones_for(c, ids, node)
            pending = {w["oid"] for _, w in rec.running_creates(c)}
            here = [] if partial else [o["id"] for o in d.objects_on(node)]
            p = plan(node, held, known, stones, pending, here)
            self._write(c, node, p, partial)
        self._act(node, p)
        self._report(node, held, p)
        return p

    # -- directory -----------------------------------------------------------------
    def _write(self, c: Any, node: str, p: Plan, partial: bool) -> None:
        now = time.time()
        for h in p.adopt:
            granted = self._adopt(c, node, h, now, p)
            if h.aliases is not None and not h.quarantined and sorted(h.aliases) != granted:
                p.push.append((h.id, granted))
        for h in p.take_over:
            c.execute(
                "UPDATE objects SET node = ?, replicas = ? WHERE id = ?",
                (node, json.dumps(h.replicas), h.id),
            )
        for oid in p.missing:
            c.execute(
                "UPDATE objects SET state = 'unavailable', reason = ?, state_source = 'missing' "
                "WHERE id = ? AND coalesce(state_source, '') != 'quarantine'",
                (f"node {node} did not hold it when it came online ({_when(now)})", oid),
            )
        for oid in p.found:
            c.execute(
                "UPDATE objects SET state = 'ok', reason = NULL, state_source = NULL "
                "WHERE id = ? AND state_source = 'missing'",
                (oid,),
            )
        missing = [
            {"id": oid, "kind": "missing", "detail": f"listed on {node}, which does not hold it"}
            for oid in p.missing
        ]
        rec.replace_strays(c, node, p.strays + missing, keep=partial)

    def _adopt(self, c: Any, node: str, h: Held, now: float, p: Plan) -> list[str]:
        state, reason = (
            ("unavailable", h.reason or "quarantined") if h.quarantined else ("ok", None)
        )
        c.execute(
            "INSERT OR IGNORE INTO objects (id, class, node, replicas, created, state, reason, "
            "state_source, owner, grants) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                h.id,
                h.cls,
                node,
                json.dumps(h.replicas),
                now,
                state,
                f"quarantined on node {node}: {reason}" if reason else None,
                "quarantine" if h.quarantined else None,
                h.owner,
                json.dumps(h.grants),
            ),
        )
        granted: list[str] = []
        for alias in sorted(h.aliases or []):
            row = c.execute("SELECT object FROM aliases WHERE alias = ?", (alias,)).fetchone()
            if row is None or row[0] == h.id:
                c.execute(
                    "INSERT OR REPLACE INTO aliases (alias, object) VALUES (?,?)", (alias, h.id)
                )
                granted.append(alias)
            else:
                p.strays.append(
                    {
                        "id": h.id,
                        "kind": "alias-conflict",
                        "detail": f"adopted without its alias {alias!r}, which names {row[0]}",
                    }
                )
        return granted

    # -- nodes ---------------------------------------------------------------------
    def _act(self, node: str, p: Plan) -> None:
        for i, (oid, why) in enumerate(p.delete):
            if i < LOG_EACH:
                log.warning("reconcile: deleting node %s's copy of %s: %s", node, oid, why)
            try:
                self.node_call(node, "delete", {"obj": oid}, self.deadline())
            except ObjectNotHere:
                pass
            except ContinuumError as exc:
                log.warning("reconcile: could not delete %s on node %s: %s", oid, node, exc)
        for oid, aliases in p.push:
            try:
                self.node_call(node, "aliases", {"obj": oid, "aliases": aliases}, self.deadline())
            except ContinuumError as exc:
                log.warning(
                    "reconcile: could not send the aliases of %s to node %s: %s", oid, node, exc
                )

    def _report(self, node: str, held: list[Held], p: Plan) -> None:
        if not self.quiet:
            self._report_each(node, p)
        counts = {
            "deleted": len(p.delete),
            "adopted": len(p.adopt),
            "taken over": len(p.take_over),
            "strays": len(p.strays),
            "missing": len(p.missing),
            "pending": len(p.pending),
            "aliases sent": len(p.push),
        }
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        if summary:
            log.warning("reconciled node %s (%d objects held): %s", node, len(held), summary)
        else:
            log.info("reconciled node %s: its %d objects match the directory", node, len(held))

    def _report_each(self, node: str, p: Plan) -> None:
        for h in p.adopt[:LOG_EACH]:
            log.warning(
                "reconcile: adopted %s %s from node %s (the directory did not know it)%s",
                h.cls,
                h.id,
                node,
                f" as {', '.join(h.aliases)}" if h.aliases else "",
            )
        for h in p.take_over[:LOG_EACH]:
            log.warning(
                "reconcile: node %s holds %s as primary (promoted after the directory's "
                "record): the directory now names it primary",
                node,
                h.id,
            )
        for s in p.strays[:LOG_EACH]:
            log.warning(
                "reconcile: node %s: %s %s: %s (kept)", node, s["kind"], s["id"], s["detail"]
            )
        for oid in p.missing[:LOG_EACH]:
            log.warning(
                "reconcile: %s is listed on node %s, which does not hold it: marked unavailable",
                oid,
                node,
            )
