"""The whole site over the bus in one call, for ``powerplane run --bus nats://...`` and local trials.

:func:`run_site_over_bus` starts (as subprocesses) twin agents that play the site's nodes and hall trackers that
share its halls, optionally a local nats-server, and returns a :class:`BusSite` whose ``source`` (a
:class:`~powerplane.bus.source.BusSource`) and ``actuator`` (a :class:`~powerplane.bus.source.BusActuator`) the
runtime uses in place of the embedded twin. :meth:`BusSite.close` stops everything it started.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from powerplane.bus.server import BusError, NatsServer, die_with_parent
from powerplane.bus.source import BusActuator, BusLink, BusSource
from powerplane.config.loader import load_scenario
from powerplane.config.schema import SiteConfig
from powerplane.core.clock import perf_counter_s
from powerplane.topology import Topology


@dataclass
class BusSite:
    url: str
    site: SiteConfig
    topology: Topology
    source: BusSource
    actuator: BusActuator
    server: NatsServer | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_dir: Path | None = None
    _logs: list[IO[bytes]] = field(default_factory=list)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until every GPU has been heard from (raises :class:`BusError` after ``timeout_s``)."""
        t0 = perf_counter_s()
        while perf_counter_s() - t0 < timeout_s:
            if self.source.reported_share() >= 1.0:
                return
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead:
                code = self.processes[dead[0]].returncode
                raise BusError(f"{dead[0]} exited with status {code} (logs in {self.log_dir})")
            self.source._any.wait(0.1)
        raise BusError(f"not every GPU reported within {timeout_s:.0f} s (logs in {self.log_dir})")

    def close(self) -> None:
        """Stop the agents first (they flush), then the trackers, the clients and the server we started."""
        agents = [p for n, p in self.processes.items() if n.startswith("agent")]
        others = [p for n, p in self.processes.items() if not n.startswith("agent")]
        for group in (agents, others):
            for p in group:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in group:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.source.close()
        self.actuator.link.close()
        if self.server is not None:
            self.server.stop()
        for log in self._logs:
            log.close()


def run_site_over_bus(
    url: str | None,
    scenario: str,
    *,
    agents: int = 1,
    trackers: int = 2,
    rate_hz: float = 10.0,
    seed: int = 0,
    log_dir: Path | None = None,
    store_dir: Path | None = None,
    tie_to_parent: bool = False,
) -> BusSite:
    """Start the site on the bus at ``url`` (None: a local nats-server on a free loopback port).

    ``scenario`` is a scenario name or YAML file; ``agents`` twin agents split the nodes (the first also publishes
    the plant and takes battery commands); ``trackers`` trackers share the halls, each preferring its share and
    standing by for the others. Process output goes to ``log_dir`` (a temporary directory by default).
    """
    if agents < 1 or trackers < 1:
        raise ValueError("at least one agent and one tracker")
    site, site_file = load_scenario(scenario)
    topo = Topology.from_site(site)
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="powerplane-bus-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    server = None
    if url is None:
        server = NatsServer(store_dir or log_dir / "nats", tie_to_parent=tie_to_parent).start()
        url = server.url
    exe = str(Path(sys.executable).parent / "powerplane")
    scen = str(site_file) if site_file is not None else scenario
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: list[IO[bytes]] = []

    def spawn(name: str, argv: list[str]) -> None:
        log = (log_dir / f"{name}.log").open("wb")
        logs.append(log)
        pre = die_with_parent() if tie_to_parent else None
        procs[name] = subprocess.Popen([exe, *argv], stdout=log, stderr=subprocess.STDOUT, preexec_fn=pre)

    try:
        for i in range(trackers):
            prefer = [a for h in topo.hall_names[i::trackers] for a in ("--prefer", h)]
            spawn(
                f"tracker-{i}",
                [
                    "tracker",
                    "--url",
                    url,
                    "--scenario",
                    scen,
                    "--ident",
                    f"tracker-{i}",
                    "--tick",
                    f"{1.0 / rate_hz:g}",
                    *prefer,
                ],
            )
        for i, part in enumerate(np.array_split(np.arange(topo.n_nodes), agents)):
            argv = [
                "agent",
                "--url",
                url,
                "--scenario",
                scen,
                "--rate",
                f"{rate_hz:g}",
                "--seed",
                str(seed),
                "--nodes",
                f"{part[0]}-{part[-1]}",
                "--stats",
                str(log_dir / f"agent-{i}.json"),
            ]
            spawn(f"agent-{i}", [*argv, "--plant"] if i == 0 else argv)
        link = BusLink(url, "powerplane-site")
        source = BusSource(url, site, topo, link=link)
        actuator = BusActuator(url, site, topo, link=link, audit_path=log_dir / "bus_audit.jsonl")
    except BaseException:
        for p in procs.values():
            p.kill()
        if server is not None:
            server.stop()
        raise
    return BusSite(url, site, topo, source, actuator, server, procs, log_dir, logs)
