"""The update stream: one message per runtime cycle to every WebSocket client, encoded once per cycle.

The cycle thread only schedules a wake-up on the event loop (``call_soon_threadsafe``); encoding and sending
happen on the loop. A slow client is never queued up: when it is ready again it gets the newest state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from powerplane.api import views
from powerplane.runtime.live_core import LiveCore
from powerplane.runtime.live_state import LiveState


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


class Broadcaster:
    def __init__(self, runtime: LiveCore) -> None:
        self.runtime = runtime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._cache: dict[tuple[int, str], str] = {}
        self._topology: str | None = None
        self.clients = 0
        self.sent = 0
        self.bytes_sent = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            return
        self._loop = loop
        self._event = asyncio.Event()
        self.runtime.subscribe(self._on_state)

    def _on_state(self, state: LiveState) -> None:  # cycle thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:  # loop thread
        old = self._event
        self._event = asyncio.Event()
        if old is not None:
            old.set()

    # ------------------------------------------------------------------ encoded documents (cached per version)

    def _cached(self, state: LiveState, key: str, build: Any) -> str:
        k = (state.version, key)
        hit = self._cache.get(k)
        if hit is None:
            if len(self._cache) > 16:
                self._cache = {kk: v for kk, v in self._cache.items() if kk[0] >= state.version - 1}
            hit = _dumps(build())
            self._cache[k] = hit
        return hit

    def topology_json(self) -> str:
        if self._topology is None:
            self._topology = _dumps(views.topology_doc(self.runtime))
        return self._topology

    def floor_json(self, state: LiveState, metric: str) -> str:
        if metric not in views.FLOOR_METRICS:
            raise ValueError(f"unknown floor metric {metric!r}; valid: {', '.join(views.FLOOR_METRICS)}")
        return self._cached(state, "floor:" + metric, lambda: views.floor_doc(self.runtime, state, metric))

    def message(self, state: LiveState, floor: str | None) -> str:
        def build() -> str:
            ov = self._cached(state, "overview", lambda: views.overview_doc(state))
            fl = self.floor_json(state, floor) if floor else "null"
            return f'{{"type":"update","version":{state.version},"overview":{ov},"floor":{fl}}}'

        k = (state.version, f"msg:{floor}")
        hit = self._cache.get(k)
        if hit is None:
            hit = build()
            self._cache[k] = hit
        return hit

    # ------------------------------------------------------------------ one client

    async def serve(self, ws: WebSocket, still_valid: Callable[[], bool] = lambda: True) -> None:
        """Stream to one client until it leaves or its token stops being valid (revoked: closed with 4401)."""
        sub: dict[str, str | None] = {"floor": None}
        self.clients += 1

        async def receive() -> None:
            while True:
                text = await ws.receive_text()
                try:
                    msg = json.loads(text)
                except ValueError:
                    await ws.send_text(_dumps({"type": "error", "detail": "messages must be JSON objects"}))
                    continue
                floor = msg.get("floor") if isinstance(msg, dict) else None
                if floor is not None and floor not in views.FLOOR_METRICS:
                    await ws.send_text(_dumps({"type": "error", "detail": f"unknown floor metric {floor!r}"}))
                    continue
                sub["floor"] = floor
                wake.set()

        wake = asyncio.Event()
        receiver = asyncio.create_task(receive())
        last = -1
        last_floor: str | None = None
        try:
            while not receiver.done():
                if not still_valid():
                    await ws.close(code=4401, reason="token revoked")
                    break
                ev = self._event
                if self.runtime.ready:
                    state = self.runtime.state
                    if state.version != last or sub["floor"] != last_floor:
                        last, last_floor = state.version, sub["floor"]
                        text = self.message(state, last_floor)
                        await ws.send_text(text)
                        self.sent += 1
                        self.bytes_sent += len(text)
                waiters = [asyncio.ensure_future(wake.wait()), receiver]
                if ev is not None:
                    waiters.append(asyncio.ensure_future(ev.wait()))
                _, pending = await asyncio.wait(waiters, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
                for w in pending:
                    if w is not receiver:
                        w.cancel()
                wake.clear()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.clients -= 1
            receiver.cancel()
            with contextlib.suppress(BaseException):
                await receiver
