"""Split brain: two trackers serving the same hall at once (one stalled past its lease without knowing it).

The rollup publish is fenced on the hall's last stored rollup (``Nats-Expected-Last-Subject-Sequence``), so
whichever tracker publishes on a stale picture is refused and resyncs: still no frame lost, none counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib

from powerplane.bus.jet import connect, ensure_streams
from powerplane.bus.server import NatsServer
from powerplane.bus.tracker import Tracker
from powerplane.bus.verify import audit_rollups, backlog

from .helpers import expected_of, twin_agent


def test_two_trackers_on_one_hall_never_double_count(nats_server: NatsServer) -> None:
    url = nats_server.url
    agent, twin = twin_agent(url)
    topo = twin.topo

    async def scenario() -> list[Tracker]:
        trs = [Tracker(url, topo, ident=n, ack_wait_s=1.0) for n in ("a", "b")]
        for epoch, t in enumerate(trs, start=1):
            t.nc = await connect(url, t.ident)
            t._js = t.nc.jetstream()
            await ensure_streams(t._js, topo.site_name)
            t.workers[0].epoch = epoch
            await t.workers[0].start_serving()  # both think they hold the lease
        serving = [asyncio.create_task(t._serve_hall(t.workers[0])) for t in trs]
        await agent.run(duration_s=3.0)
        for _ in range(60):  # until both have worked off every frame
            await asyncio.sleep(0.5)
            if await backlog(url, topo) == 0:
                break
        await asyncio.sleep(1.5)
        for t in trs:
            t.stop()
        await asyncio.gather(*serving)
        for t in trs:
            with contextlib.suppress(Exception):
                await t.workers[0].publish_due(force=True)
            assert t.nc is not None
            await t.nc.close()
        return trs

    trs = asyncio.run(scenario())
    result = asyncio.run(audit_rollups(url, topo)).compare(expected_of(agent))
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["unexpected"] == 0, result
    assert sum(t.workers[0].stats.resyncs for t in trs) > 0  # the fence did refuse stale publishes
