"""firmware-sim: a fleet of simulated edge boards for continuum (``firmware-sim``).

The boards publish device metrics samples (``continuum_mqtt.samples``, the edge
agent's format: CBOR on ``<root>/dev/<device>/metrics``) from a real series or
a synthetic board model, on an accelerated clock; optionally they run their
forecasting jobs against the cloud side. See docs/firmware-sim.md.

Edge-light: imports paho-mqtt (``--engine paho`` only) and cbor2, never
torch or numpy.
"""

from ._series import DATASETS, load_series
from ._sources import Fleet, FleetSpec, device_ids

__all__ = ["DATASETS", "Fleet", "FleetSpec", "device_ids", "load_series"]
__version__ = "0.1.0"
