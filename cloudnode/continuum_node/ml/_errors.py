"""The ML application's typed errors (wire codes ``ml.*``)."""

from __future__ import annotations

from continuum_mqtt import ApplicationError

__all__ = ["BadBlock", "BlocksFailed"]


class BadBlock(ApplicationError, ValueError):
    """Block data or parameters a caller sent are not valid (an array map with
    the wrong size, rows of another width, a parameter out of range). Extra
    field: ``field``, when one argument is to blame."""

    code = "ml.bad_block"


class BlocksFailed(ApplicationError):
    """A driver's computation needed every block and some failed. Extra field:
    ``errors``: ``{block reference: {"code", "message"}}``, one entry per
    failed block (its node died, its deadline passed...). Nothing is returned
    from a computation over part of the data."""

    code = "ml.blocks_failed"
