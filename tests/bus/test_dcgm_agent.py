"""An agent reading dcgm-exporter scrapes (saved files here) publishes the nodes it read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from powerplane.bus.agent import Agent
from powerplane.bus.server import NatsServer
from powerplane.bus.tracker import Tracker
from powerplane.bus.verify import audit_rollups
from powerplane.config.loader import load_scenario
from powerplane.sources.dcgm import DcgmSource
from powerplane.sources.dcgm_synth import synth_scrape_per_host
from powerplane.topology import Topology

from .helpers import expected_of


def test_dcgm_agent_publishes_what_it_scraped(nats_server: NatsServer, tmp_path: Path) -> None:
    site, _ = load_scenario("small")
    topo = Topology.from_site(site)
    targets = []
    for host, text in list(synth_scrape_per_host(topo).items())[:2]:
        (tmp_path / f"{host}.prom").write_text(text)
        targets.append(f"file://{tmp_path}/{host}.prom")
    src = DcgmSource(topo, targets)
    agent = Agent(nats_server.url, topo, src, nodes=np.array([0, 1]), rate_hz=5.0)
    tracker = Tracker(nats_server.url, topo, tick_s=0.2)

    async def scenario() -> dict[str, object]:
        task = asyncio.create_task(tracker.run(duration_s=4.0))
        await agent.run(duration_s=2.0)
        return await task

    stats = asyncio.run(scenario())
    src.close()
    audit = asyncio.run(audit_rollups(nats_server.url, topo))
    result = audit.compare(expected_of(agent))
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["expected"] == agent.stats.frames_produced
    assert stats["halls"]["hall-1"]["rejected"] == {}  # type: ignore[index]
