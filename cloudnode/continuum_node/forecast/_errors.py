"""The forecaster's typed application errors (wire codes ``forecast.*``)."""

from __future__ import annotations

from continuum_mqtt import ApplicationError
from continuum_mqtt.samples import SERIES_TOO_SHORT

__all__ = ["SeriesTooShort", "UnknownDataset"]


class SeriesTooShort(ApplicationError, ValueError):
    """The series holds too few rows to train with this look-back (a device-fed
    forecaster that has not ingested enough samples yet): train again later.

    Extra fields: ``rows`` (the series' length), ``training_rows`` (those of the
    training part) and ``lookback`` (the training part needs more rows than it).
    A ``ValueError`` too, for code that runs the forecaster in-process.
    """

    code = SERIES_TOO_SHORT


class UnknownDataset(ApplicationError, LookupError):
    """``load_csv`` found no dataset of that name on the node. The same error
    whether the name is not a bare ``*.csv`` file name, is outside the node's
    data folders, or is simply not there, so that it tells a caller nothing
    about the node's file system. Extra field: ``name`` (as asked).
    A ``LookupError`` too, for code that runs the forecaster in-process.
    """

    code = "forecast.unknown_dataset"
