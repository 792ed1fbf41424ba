"""The message bus: NATS JetStream between node agents, hall trackers and the site runtime.

``codec`` (binary, versioned frames), ``subjects`` (names that follow the topology), ``server`` (a real
nats-server for tests and local use), ``agent`` (publishes node frames, buffers while the bus is down, applies
commands), ``tracker`` (a hall as a durable JetStream consumer with lease-based failover, publishing hall rollups),
``source`` (:class:`BusSource` and :class:`BusActuator` for the site runtime) and ``wiring`` (all of it at once).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BusActuator", "BusSource"]


def __getattr__(name: str) -> Any:  # lazy: `powerplane --help` should not import the NATS client
    if name in __all__:
        from powerplane.bus import source

        return getattr(source, name)
    raise AttributeError(name)
