"""Connecting to NATS and declaring the JetStream streams every process relies on.

Clients reconnect forever (a server restart is an outage to ride through, not an error). Declaring a stream
that exists with the same configuration is a no-op, so every process declares what it uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from powerplane.bus import subjects
from powerplane.bus.server import BusError

log = logging.getLogger(__name__)

TEL_MAX_AGE_S = 3600.0  # frames kept one hour: a tracker may be down that long and still lose nothing
ROLLUP_MAX_AGE_S = 3600.0
DUPLICATE_WINDOW_S = 120.0


async def connect(
    url: str,
    name: str,
    *,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    connect_timeout_s: float = 2.0,
) -> Client:
    """A client that reconnects forever every 0.2 s; raises :class:`BusError` when the first connect fails."""

    async def _err(exc: Exception) -> None:
        log.debug("nats %s: %s", name, exc)

    try:
        connecting = nats.connect(
            url,
            name=name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=connect_timeout_s,
            ping_interval=2,
            max_outstanding_pings=2,
            pending_size=64 * 1024 * 1024,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=_err,
        )
        # With endless reconnects nats-py also retries the first connect forever: bound it.
        return await asyncio.wait_for(connecting, 2 * connect_timeout_s)
    except Exception as exc:  # nats raises several unrelated types for an unreachable server
        raise BusError(f"cannot connect to NATS at {url}: {str(exc) or type(exc).__name__}") from exc


async def _add_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


async def ensure_streams(js: JetStreamContext, site: str) -> None:
    """The telemetry stream (``pp.tel.<site>.>``, file storage) and the rollup stream (``pp.rollup.<site>.>``)."""
    for name, kind, max_age_s in (
        (subjects.tel_stream(site), "tel", TEL_MAX_AGE_S),
        (subjects.rollup_stream(site), "rollup", ROLLUP_MAX_AGE_S),
    ):
        await _add_stream(
            js,
            StreamConfig(
                name=name,
                subjects=[f"pp.{kind}.{subjects.token(site)}.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=max_age_s,
                max_bytes=8 * 1024**3,
                discard=DiscardPolicy.OLD,
                duplicate_window=DUPLICATE_WINDOW_S,
            ),
        )


async def lease_bucket(js: JetStreamContext, site: str, ttl_s: float) -> KeyValue:
    """The key-value bucket holding one lease per hall; entries expire ``ttl_s`` after their last renewal."""
    name = subjects.lease_bucket(site)
    try:
        return await js.create_key_value(KeyValueConfig(bucket=name, ttl=ttl_s, history=1))
    except BadRequestError:
        return await js.key_value(name)
    except Exception as exc:
        raise BusError(f"cannot open lease bucket {name}: {exc}") from exc
