"""continuum: active objects over MQTT for the edge-to-cloud continuum."""

from ._model import ActiveObject, ActiveSpec, active, progress

__all__ = ["ActiveObject", "ActiveSpec", "active", "progress"]
