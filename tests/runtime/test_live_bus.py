"""The live runtime over a real NATS bus: agents and trackers as processes, a real nats-server, the cockpit API on
top; and `powerplane run --bus` as a real process that starts the site and stops it on Ctrl-C."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from powerplane.api.app import create_app
from powerplane.api.auth import TokenStore
from powerplane.bus.server import NatsServer
from powerplane.bus.wiring import run_site_over_bus
from powerplane.runtime.live import LiveOptions, LiveRuntime
from powerplane.runtime.live_bus import BusLiveRuntime
from powerplane.telemetry.snapshot import Quality


def _live_status(proc_dir: Path) -> dict[str, str] | None:
    """The fields of ``/proc/<pid>/status`` of a live process; None when it is gone or a zombie."""
    try:
        text = (proc_dir / "status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    return None if fields.get("State", "").startswith("Z") else fields


def _processes() -> list[tuple[int, dict[str, str]]]:
    """(pid, status fields) of every live process but this one."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            st = _live_status(d)
            if st is not None:
                out.append((int(d.name), st))
    return out


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that name ``text`` (the agents and trackers name their log directory)."""
    found = []
    for pid, _ in _processes():
        try:
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(cmd)
    return found


@pytest.mark.slow
def test_runtime_over_the_bus_serves_the_cockpit_and_sends_commands(tmp_path: Path) -> None:
    bus = run_site_over_bus(None, "small", agents=2, trackers=2, rate_hz=5.0, log_dir=tmp_path / "bus")
    rt: BusLiveRuntime | None = None
    try:
        bus.wait_ready(60)
        rt = BusLiveRuntime(LiveOptions(scenario="small", state_dir=tmp_path / "state", history=False), bus)
        for _ in range(3):
            state = rt.step()
            time.sleep(0.4)
        snap = state.snapshot
        n = bus.topology.n_gpus
        assert n == 256
        power = snap.levels["gpu"].values["power_w"]
        ok = snap.levels["gpu"].quality["power_w"] == Quality.OK
        assert ok.all() and np.isfinite(power).all()  # every GPU, read through the trackers' rollups
        assert snap.rollups["site"]["gpu.power_w"].coverage[0] == 1.0
        assert state.site["source"] == "bus" and state.site["grid_power_w"] is not None
        # The planner solved on the site model with the SOC and IT load read over the bus; the fast loop follows it.
        assert state.plan is not None and state.plan["solves"] == 1, state.site["planner"]
        assert "read over the bus" in state.site["planner"] and rt.energy.loop.plan_grid_w is not None
        # The fast loop sent the battery its setpoints through the bus, and the plant agent took them.
        sent = [r for r in bus.actuator.audit if r["command"] == "bess_setpoint"]
        assert len(sent) >= 3 and all(r["applied"] for r in sent), sent
        assert rt.bess_commands["applied"] >= 3 and state.bess[0]["setpoint_w"] is not None

        tokens = TokenStore(tmp_path / "state" / "tokens.json")
        op = {"Authorization": f"Bearer {tokens.create('op-1', 'operator')}"}
        with TestClient(create_app(rt, tokens)) as client:
            doc = client.get("/api/snapshot?level=gpu&limit=20000", headers=op).json()
            assert doc["total"] == n and len(doc["rows"]) == n
            assert all(r["power_w"] is not None for r in doc["rows"])
            ov = client.get("/api/overview", headers=op).json()
            assert ov["site"]["source"] == "bus" and ov["site"]["gpu_coverage"] == 1.0
            gpu = client.get(f"/api/entity/gpu/{n - 1}", headers=op).json()
            assert gpu["gpu"]["power_w"] is not None and gpu["gpu"]["job"] is None  # no job placement over the bus
            assert client.get("/api/floor", headers=op).json()["n"] == n
            energy = client.get("/api/energy", headers=op).json()
            assert energy["plan"]["solves"] == 1 and energy["bess"][0]["soc"] is not None
            assert client.get("/api/alerts", headers=op).status_code == 200
            jobs = client.get("/api/jobs", headers=op).json()
            assert jobs["total"] == 0 and "not available over the bus" in jobs["note"]
            # An operator GPU cap goes to the owning agent (the second one plays the last nodes) and back.
            gpus = list(range(n - 8, n))
            r = client.post(
                "/api/commands", json={"command": {"kind": "cap_gpus", "gpus": gpus, "cap_w": 300}}, headers=op
            )
            cap_id = r.json()["id"]
            r = client.post("/api/commands", json={"command": {"kind": "cap_job", "job": 3, "cap_w": 300}}, headers=op)
            job_id = r.json()["id"]
            rt.step()
            res = client.get(f"/api/commands/{cap_id}", headers=op).json()
            assert res["status"] == "applied", res
            refused = client.get(f"/api/commands/{job_id}", headers=op).json()
            assert refused["status"] == "refused" and "not available over the bus" in refused["detail"]
            audit = client.get("/api/audit?actor=operator", headers=op).json()["records"]
            assert {(a["command"], a["status"]) for a in audit} == {("cap_gpus", "applied"), ("cap_job", "refused")}
            caps = [a for a in bus.actuator.audit if a["command"] == "gpu_power_cap"]
            assert len(caps) == 1 and caps[0]["applied"]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # the agent's next frames report the new cap
                time.sleep(0.5)
                cap = rt.step().snapshot.levels["gpu"].values["power_cap_w"]
                if np.all(cap[n - 8 :] == 300.0):
                    break
            assert np.all(cap[n - 8 :] == 300.0) and np.all(cap[: n - 8] > 300.0)
    finally:
        if rt is not None:
            rt.stop()
        else:
            bus.close()
    assert all(p.poll() is not None for p in bus.processes.values())
    assert bus.server is not None and bus.server.proc is None
    assert not _processes_mentioning(str(tmp_path))
    assert (tmp_path / "bus" / "bus_audit.jsonl").read_text().count("gpu_power_cap") == 1


@pytest.mark.slow
def test_powerplane_run_over_the_bus_starts_and_stops_on_ctrl_c(tmp_path: Path, powerplane_run: Any) -> None:
    srv = NatsServer(tmp_path / "nats").start()
    try:
        state = tmp_path / "state"
        args = ["--scenario", "small", "--bus", srv.url, "--agents", "1", "--trackers", "1"]
        run = powerplane_run([*args, "--state-dir", str(state), "--no-history"], wait_s=90)
        proc, text = run.proc, run.text
        try:
            assert f"bus: {srv.url}" in text, text
            hdr = {"Authorization": f"Bearer {run.token}"}
            ov = httpx.get(f"{run.url}api/overview", headers=hdr, timeout=10).json()
            assert ov["site"]["source"] == "bus" and ov["site"]["gpu_coverage"] == 1.0
            assert _processes_mentioning(str(state / "bus"))  # the agent and the tracker run
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, text + out
        assert "stopped" in out
        assert not _processes_mentioning(str(state / "bus"))
    finally:
        srv.stop()


def test_cap_gpus_in_the_embedded_runtime_and_bad_arguments(tmp_path: Path) -> None:
    rt = LiveRuntime(LiveOptions(scenario="small", speed=10, state_dir=tmp_path, history=False, policy="none"))
    try:
        rt.step()
        ok = rt.submit("cap_gpus", {"gpus": [0, 1, 2], "cap_w": 250.0}, "op-1")
        bad = rt.submit("cap_gpus", {"gpus": [999], "cap_w": 250.0}, "op-1")
        rt.step()
        assert rt.result(ok)["status"] == "applied"  # type: ignore[index]
        assert rt.result(bad)["status"] == "refused"  # type: ignore[index]
        assert np.all(rt.twin.fleet.cap_w[:3] == 250.0) and rt.twin.fleet.cap_w[3] > 250.0
        _, audit = rt.audit(10, "operator")
        assert [a["status"] for a in audit] == ["refused", "applied"]
    finally:
        rt.stop()


def _alive_children(ppid: int) -> list[int]:
    """Pids of live (not zombie) processes whose parent is ``ppid``."""
    return [pid for pid, st in _processes() if st.get("PPid", "").strip() == str(ppid)]


def _alive(pid: int) -> bool:
    return _live_status(Path("/proc") / str(pid)) is not None


@pytest.mark.slow
def test_kill_9_of_run_over_a_local_bus_takes_its_children_with_it(tmp_path: Path, powerplane_run: Any) -> None:
    args = ["--scenario", "small", "--bus", "local", "--agents", "1", "--trackers", "1"]
    run = powerplane_run([*args, "--state-dir", str(tmp_path / "state"), "--no-history"], wait_s=90)
    children = _alive_children(run.proc.pid)
    try:
        assert len(children) == 3, children  # the agent, the tracker and our nats-server
    finally:
        run.proc.kill()  # SIGKILL: no finally, no atexit; only the kernel's parent-death signal can clean up
        run.proc.communicate(timeout=30)
    deadline = time.monotonic() + 20.0
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [c for c in children if _alive(c)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bus", "local", "--speed", "60"], "--speed does not apply over the bus"),
        (["--bus", "http://127.0.0.1:4222"], "--bus takes a NATS URL"),
        (["--bus", "local", "--policy", "oracle"], "unknown live policy 'oracle' over the bus"),
    ],
)
def test_run_over_the_bus_refuses_bad_options_before_starting_anything(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from powerplane.cli import app

    res = CliRunner().invoke(app, ["run", "--scenario", "small", "--state-dir", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert not (tmp_path / "bus").exists()
