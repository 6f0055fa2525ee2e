"""The gateway's exactly-once outcomes in its directory: the
:class:`~continuum_mqtt.service.OutcomeStore` of its
:class:`~continuum_mqtt.service.ExactlyOnce` table.

The changing methods write their outcome in the same transaction as the
change (``rid=`` of the directory's methods), so a request resent after a
restart is answered, not run again; :meth:`DirectoryOutcomes.put` stores the
others (errors) and is a no-op for those already stored (the first wins).
Bounds (``MAX_OUTCOMES``, ``MAX_OUTCOME_BYTES``) are applied by the
housekeeping's :meth:`Directory.prune`.
"""

from __future__ import annotations

import logging
import sqlite3

from continuum_mqtt import ContinuumError
from continuum_mqtt.service import Outcome

from ._directory import Directory

__all__ = ["DirectoryOutcomes"]

log = logging.getLogger("continuum.gateway")


class DirectoryOutcomes:
    """Outcomes in the directory's ``outcomes`` table. A failure to read one
    is logged and reads as none (the request runs); a failure to store one is
    logged (a resend then runs again)."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    def get(self, rid: str) -> Outcome | None:
        try:
            return self.directory.outcome(rid)
        except (sqlite3.Error, ContinuumError) as exc:
            log.error("could not read the outcome of %s: %s", rid, exc)
            return None

    def put(self, rid: str, method: str, outcome: Outcome) -> None:
        try:
            self.directory.store_outcome(rid, method, outcome)
        except (sqlite3.Error, ContinuumError) as exc:
            log.error("could not store the outcome of %s %s: %s", method, rid, exc)
