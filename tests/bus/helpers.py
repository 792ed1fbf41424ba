"""Running agents and trackers on a background event loop while the test thread plays the site runtime."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from powerplane.bus.agent import Agent
from powerplane.config.loader import load_scenario
from powerplane.sources.base import TwinSource
from powerplane.twin.twin import Twin


class LoopThread:
    """An event loop in a thread; ``spawn`` schedules a coroutine there and returns its concurrent future."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def twin_agent(url: str, scenario: str = "small", rate_hz: float = 10.0, **kw: Any) -> tuple[Agent, Twin]:
    site, path = load_scenario(scenario)
    twin = Twin(site, path, dt_s=1.0 / rate_hz)
    return Agent(url, twin.topo, TwinSource(twin), plant=True, actuator=twin, rate_hz=rate_hz, **kw), twin


def expected_of(agent: Agent) -> dict[int, tuple[int, int]]:
    st = agent.stats
    return {int(n): (st.first_seq, st.last_seq) for n in agent.played}
