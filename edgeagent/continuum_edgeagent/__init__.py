"""continuum edge agent: the daemon on each board (``edgeagent``).

Edge-safe: imports only the light dependencies (paho-mqtt, cbor2, psutil).
"""

__all__: list[str] = []
