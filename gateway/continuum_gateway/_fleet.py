"""What the gateway learns from the nodes' retained statuses before it trusts
its directory: which nodes hold objects (status field ``objects``), and the
refusal to start on an empty directory while they do."""

from __future__ import annotations

from typing import Any

from ._integrity import RECOVERY_DOC

__all__ = ["MARKER_PREFIX", "empty_directory_refusal", "held_counts", "keeps_aliases"]

# Published by the gateway on its own reply topic after subscribing to the
# node statuses: the broker delivers it after every retained status, so its
# arrival means they have all been seen.
MARKER_PREFIX = b"continuum-gateway-sync:"


def held_counts(statuses: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Online nodes that report holding objects, with the count."""
    out: dict[str, int] = {}
    for node, status in statuses.items():
        n = status.get("objects")
        online = status.get("state") == "online"
        if online and isinstance(n, int) and not isinstance(n, bool) and n > 0:
            out[node] = n
    return out


def keeps_aliases(manifest: dict[str, Any]) -> bool:
    """Nodes that report ``objects`` in their status keep aliases in their
    records (control ``create`` with ``aliases``, control ``aliases``);
    older nodes refuse those arguments."""
    return "objects" in manifest


def empty_directory_refusal(path: str, counts: dict[str, int], broker: str, root: str) -> str:
    held = ", ".join(f"node {n} holds {c} object(s)" for n, c in sorted(counts.items()))
    return (
        f"directory {path} is empty (new, or lost its contents) but {held}, by their "
        f"retained status: this gateway would not know them. Refusing to start (nothing was "
        f"deleted). If the directory was lost or damaged, rebuild it from the nodes "
        f"(the gateway stopped): continuum-gateway rebuild --db {path} --broker {broker} "
        f"--root {root}; or restore a backup. If --db names the wrong file, correct it. "
        f"See {RECOVERY_DOC}."
    )
