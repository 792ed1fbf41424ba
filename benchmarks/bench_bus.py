"""Bus benchmark: the texas site (10,240 GPUs, 1,280 nodes) at 10 Hz through a real nats-server with JetStream.

One `powerplane agent` process plays every node of the twin (rack-batched messages, JetStream publish acks),
two `powerplane tracker` processes share the four halls (each prefers two, stands by for the others), and this
process is the site runtime (a BusSource taking every hall rollup). The run has three phases:

1. steady load: node frames per second stored on the bus and aggregated into hall rollups, and the latency
   from the agent's publish to the rollup arriving at the site (p50/p99);
2. kill -9 the tracker holding hall-a: time until hall-a's rollups come from the other tracker;
3. restart nats-server (down 2 s): the agent buffers, JetStream keeps its store.

At the end every stored rollup is read back and every node frame counted against what the agent produced:
frames lost and frames counted twice. Baseline, in the same run: the one-process path without a bus (the twin
read and `telemetry.Tracker.ingest` of the whole 10,240-GPU frame), as node frames per second it can take.

    python benchmarks/bench_bus.py --duration 60 --record
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import add_table_row, machine
from powerplane.bus import subjects
from powerplane.bus.server import NatsServer
from powerplane.bus.source import BusSource
from powerplane.bus.verify import audit_rollups, backlog
from powerplane.config.loader import load_scenario
from powerplane.sources.base import TwinSource
from powerplane.telemetry.tracker import Tracker as TelemetryTracker
from powerplane.topology import Topology
from powerplane.twin.twin import Twin

POWERPLANE = str(Path(sys.executable).parent / "powerplane")
HEADING = "## Bus: 10,240 GPUs at 10 Hz through NATS JetStream, trackers drained before stop (bench_bus.py)"
NOTE = (
    "One agent process plays all 1,280 nodes of the texas twin (one message per rack of 4 node frames, JetStream "
    "publish acks), two tracker processes share the 4 halls, the benchmark process is the site (BusSource). "
    "Latency: agent publish to hall rollup at the site. Failover: SIGKILL of the tracker holding hall-a until "
    "hall-a's next rollup from the other tracker. Lost/doubled: every stored rollup read back, every node frame "
    "counted against what the agent produced. Baseline: one process without a bus (twin read + Tracker.ingest "
    "of the whole frame), node frames/s it can take. Backlog: seconds the trackers needed after the load stopped "
    "to acknowledge every stored frame (the run above this table stopped them after 4 s, so 65,724 frames still "
    "waiting in the stream were counted as lost)."
)
HEADER = [
    "| date | machine | s | node frames/s stored | node frames/s in rollups | p50 ms | p99 ms | late ticks "
    "| failover s | lost | doubled | server restart: agent resent | backlog after load s "
    "| baseline one process, frames/s | note |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def baseline_frames_per_s(seconds: float = 5.0) -> float:
    site, path = load_scenario("texas")
    twin = Twin(site, path, dt_s=0.1)
    src = TwinSource(twin)
    tr = TelemetryTracker(twin.topo, site)
    tr.ingest(src.read())
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tr.ingest(src.read())
        n += 1
    return n * twin.topo.n_nodes / (time.perf_counter() - t0)


async def lease_holder(url: str, site: str, hall: str) -> tuple[str, int]:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(subjects.lease_bucket(site))
        e = await kv.get(subjects.token(hall))
        return (e.value or b"").decode(), int(e.revision or 0)
    finally:
        await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load in all (>= 30)")
    ap.add_argument("--record", action="store_true", help="append a row to benchmarks/BENCHMARKS.md")
    ap.add_argument("--note", default="shared machine, other jobs running")
    ap.add_argument("--batch", default="rack", choices=("rack", "row", "node"), help="agent messages")
    args = ap.parse_args()
    duration = max(30.0, args.duration)
    site, _ = load_scenario("texas")
    topo = Topology.from_site(site)
    print("baseline: one process, no bus ...", flush=True)
    base = baseline_frames_per_s()
    tmp = Path(tempfile.mkdtemp(prefix="bench-bus-"))
    srv = NatsServer(tmp / "nats").start()
    url = srv.url
    logs = []

    def spawn(name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed at the end)
        logs.append(log)
        return subprocess.Popen([POWERPLANE, *argv], stdout=log, stderr=subprocess.STDOUT)

    halls = topo.hall_names
    trackers = {}
    for name, pref in (("tr-1", halls[:2]), ("tr-2", halls[2:])):
        prefer = [a for h in pref for a in ("--prefer", h)]
        trackers[name] = spawn(
            name,
            "tracker",
            "--url",
            url,
            "--scenario",
            "texas",
            "--ident",
            name,
            *prefer,
            "--stats",
            str(tmp / f"{name}.json"),
        )
    time.sleep(4.0)  # trackers up before the load starts
    agent_stats = tmp / "agent.json"
    agent = spawn(
        "agent",
        "agent",
        "--url",
        url,
        "--scenario",
        "texas",
        "--plant",
        "--rate",
        "10",
        "--batch",
        args.batch,
        "--stats",
        str(agent_stats),
    )
    src = BusSource(url, site, topo, first_timeout_s=60.0)
    src.read()  # first rollup
    t_start, frames0 = time.monotonic(), src.frames
    print(f"load running: {topo.n_nodes} nodes x 10 Hz; steady phase {duration / 3:.0f} s", flush=True)
    time.sleep(duration / 3)
    steady_frames, steady_s = src.frames - frames0, time.monotonic() - t_start
    lat = np.array(src.latency_s)
    src.latency_s.clear()
    # Phase 2: kill -9 the tracker holding hall-a.
    holder, _ = asyncio.run(lease_holder(url, site.name, halls[0]))
    killed_at = time.perf_counter()
    os.kill(trackers[holder].pid, signal.SIGKILL)
    trackers[holder].wait()
    failover_s = float("nan")
    while time.perf_counter() - killed_at < 20.0 and not np.isfinite(failover_s):
        failover_s = _first_rollup_after(src, killed_at)
        time.sleep(0.02)
    new_holder = asyncio.run(lease_holder(url, site.name, halls[0]))[0]
    print(f"killed {holder}; hall-a taken by {new_holder} after {failover_s:.2f} s", flush=True)
    time.sleep(max(0.0, duration / 3 - (time.perf_counter() - killed_at)))
    # Phase 3: restart nats-server.
    srv.restart(down_s=2.0)
    print("nats-server restarted (down 2 s)", flush=True)
    time.sleep(max(5.0, duration / 3 - 2.0))
    agent.send_signal(signal.SIGTERM)
    agent.wait(60)
    # The trackers work off their backlog before they stop (a frame still in the stream is not lost).
    t_stop = time.perf_counter()
    while time.perf_counter() - t_stop < 180.0 and asyncio.run(backlog(url, topo)) > 0:
        time.sleep(0.5)
    drain_s = time.perf_counter() - t_stop
    time.sleep(1.5)  # the last ticks close on their timeout
    for p in trackers.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
    src.close()
    st = json.loads(agent_stats.read_text())
    expected = {int(n): (int(st["first_seq"]), int(st["last_seq"])) for n in st["nodes"]}
    result = asyncio.run(audit_rollups(url, topo)).compare(expected)
    srv.stop()
    for log in logs:
        log.close()
    total_s = st["ticks"] / 10.0
    stored_fps = st["frames_acked"] / total_s
    rollup_fps = steady_frames / steady_s
    p50, p99 = (np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3) if lat.size else (np.nan, np.nan)
    rows = [
        ("node frames/s stored (agent, whole run)", f"{stored_fps:,.0f}"),
        ("node frames/s in rollups at the site (steady)", f"{rollup_fps:,.0f}"),
        ("agent publish -> hall rollup p50 / p99 [ms]", f"{p50:.1f} / {p99:.1f}"),
        ("agent late ticks", f"{st['late_ticks']} of {st['ticks']}"),
        ("tracker kill -9 failover [s]", f"{failover_s:.2f}"),
        ("frames lost / doubled (whole run)", f"{result['lost']} / {result['duplicated']} of {result['expected']:,}"),
        (
            "agent: disconnects, frames resent, dropped",
            f"{st['disconnects']}, {st['frames_resent']}, {st['frames_dropped']}",
        ),
        ("trackers' backlog worked off after the load stopped [s]", f"{drain_s:.1f}"),
        ("baseline: one process, node frames/s", f"{base:,.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.record:
        row = (
            f"| {dt.date.today().isoformat()} | {machine()} | {total_s:.0f} | {stored_fps:,.0f} | {rollup_fps:,.0f} "
            f"| {p50:.1f} | {p99:.1f} | {st['late_ticks']}/{st['ticks']} | {failover_s:.2f} | {result['lost']} "
            f"| {result['duplicated']} | {st['frames_resent']:,} | {drain_s:.1f} | {base:,.0f} "
            f"| {args.batch} messages; {args.note} |"
        )
        add_table_row(Path(__file__).parent / "BENCHMARKS.md", HEADING, NOTE, HEADER, row)
        print("recorded in benchmarks/BENCHMARKS.md")


def _first_rollup_after(src: BusSource, killed_at: float) -> float:
    """Seconds from the kill to the first hall-a rollup with a new epoch seen by the site (NaN if none yet)."""
    t = src.epoch_change_s.get(0)
    return float("nan") if t is None or t < killed_at else t - killed_at


if __name__ == "__main__":
    main()
