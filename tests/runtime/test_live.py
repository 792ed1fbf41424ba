"""The live runtime on the real small twin: cycles, the command queue, audit, alerts, errors, the ledger."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from powerplane.runtime.live import LiveOptions, LiveRuntime
from powerplane.runtime.live_state import Ledger, SeriesRing
from powerplane.twin.jobs import State


def make(tmp_path: Path, **kw: object) -> LiveRuntime:
    opts = LiveOptions(scenario="small", speed=60, period_s=1.0, state_dir=tmp_path / "state", history=False)
    for k, v in kw.items():
        setattr(opts, k, v)
    return LiveRuntime(opts)


def running_job(rt: LiveRuntime) -> int:
    j = rt.state.jobs
    return int(j["job"][np.flatnonzero(j["state"] == State.RUNNING)[0]])


def test_cycle_publishes_consistent_state(tmp_path: Path) -> None:
    rt = make(tmp_path)
    s1 = rt.step()
    s2 = rt.step()
    assert s2.version == s1.version + 1
    assert s2.t_s - s1.t_s == pytest.approx(60.0)  # speed 60 x period 1 s, 1 s steps
    site = s2.site
    # Power balance at the point of connection: grid + batteries + renewables + backup = facility.
    supply = (
        site["grid_power_w"]
        + site["bess_power_w"]
        + site["renewable_power_w"]
        + site["ups_power_w"]
        + site["generator_power_w"]
        + site["unserved_power_w"]
    )
    assert supply == pytest.approx(site["facility_power_w"], rel=1e-3)
    assert site["pue"] == pytest.approx(site["facility_power_w"] / site["it_power_w"], rel=1e-3)
    assert len(s2.bess) == len(rt.site.bess)
    assert s2.snapshot.levels["gpu"].values["power_w"].shape == (rt.topology.n_gpus,)
    assert s2.policy == "mpc" and s2.plan is not None and s2.plan["status"]
    assert len(s2.prices["t_s"]) == 97
    assert s2.cycle.cycles == 2 and s2.cycle.errors == 0
    rt.stop()


def test_commands_are_applied_next_cycle_and_audited(tmp_path: Path) -> None:
    rt = make(tmp_path)
    rt.step()
    job = running_job(rt)
    cid = rt.submit("cap_job", {"job": job, "cap_w": 300.0}, "alice")
    assert rt.result(cid)["status"] == "queued"  # type: ignore[index]
    gpus = rt.twin.workload.jobs.gpus[job]
    assert not np.all(rt.twin.fleet.cap_w[gpus] == 300.0)  # nothing happens before the cycle
    s = rt.step()
    r = rt.result(cid)
    assert r is not None and r["status"] == "applied", r
    caps = rt.twin.fleet.cap_w[gpus]
    assert np.all(caps <= 300.0 + 1e-9) and np.all(caps >= rt.twin.fleet.min_cap_w[gpus] - 1e-9)
    assert s.job_caps_w[job] <= 300.0
    # Demand response: start, then end.
    d = rt.submit("dr_start", {"reduction": 0.2, "duration_s": 1800}, "alice")
    s = rt.step()
    assert rt.result(d)["status"] == "applied"  # type: ignore[index]
    assert s.dr["active"] and s.dr["reduction"] == pytest.approx(0.2)
    assert s.dr["limit_w"] == pytest.approx(s.dr["baseline_w"] * 0.8 * 0.99, rel=1e-6)
    e = rt.submit("dr_end", {}, "alice")
    s = rt.step()
    assert rt.result(e)["status"] == "applied" and not s.dr["active"]  # type: ignore[index]
    # Refusals are clear and audited too.
    bad = rt.submit("cap_job", {"job": 10_000, "cap_w": 300.0}, "bob")
    rt.step()
    assert rt.result(bad)["status"] == "refused" and "unknown job" in rt.result(bad)["detail"]  # type: ignore[index]
    total, rows = rt.audit(50, actor="operator:")
    assert total > 0
    mine = [r for r in rows if r["command_id"] in (cid, d, e, bad)]
    assert {r["actor"] for r in mine} == {"operator:alice", "operator:bob"}
    assert {r["status"] for r in mine} == {"applied", "refused"}
    # The audit file holds the same records as JSON lines.
    lines = [json.loads(x) for x in rt.audit_path.read_text().splitlines()]
    assert any(x.get("command_id") == cid and x["actor"] == "operator:alice" for x in lines)
    with pytest.raises(ValueError, match="unknown command"):
        rt.submit("reboot_site", {}, "mallory")
    rt.stop()


def test_policy_switch_lifts_lever_caps_and_refuses_dr_without_mpc(tmp_path: Path) -> None:
    rt = make(tmp_path)
    rt.step()
    cid = rt.submit("set_policy", {"policy": "none"}, "ops")
    s = rt.step()
    assert rt.result(cid)["status"] == "applied" and s.policy == "none"  # type: ignore[index]
    assert s.plan is None and not s.dr["supported"]
    d = rt.submit("dr_start", {"reduction": 0.2, "duration_s": 600}, "ops")
    rt.step()
    r = rt.result(d)
    assert r is not None and r["status"] == "refused" and "mpc" in r["detail"]
    bad = rt.submit("set_policy", {"policy": "oracle"}, "ops")
    rt.step()
    assert rt.result(bad)["status"] == "refused"  # type: ignore[index]
    rt.stop()


def test_alerts_fire_from_the_real_engine_and_can_be_acknowledged(tmp_path: Path) -> None:
    rt = make(tmp_path)
    if rt.alerts is None:
        pytest.fail(f"the alert engine did not load: {rt.alert_status}")
    rt.step()
    job = running_job(rt)
    gpu = int(rt.twin.workload.jobs.gpus[job][0])
    rt.twin.workload.inject_fault(job, rt.twin.now_s, 79, gpu)
    firing: list[dict[str, object]] = []
    for _ in range(5):
        s = rt.step()
        firing = [a for a in s.alerts or [] if a["state"] == "firing"]
        if firing:
            break
    assert firing, "an injected Xid 79 must fire an alert"
    aid = str(firing[0]["id"])
    cid = rt.submit("ack_alert", {"alert_id": aid}, "carol")
    s = rt.step()
    assert rt.result(cid)["status"] == "applied"  # type: ignore[index]
    acked = [a for a in s.alerts or [] if a["id"] == aid]
    assert acked and acked[0]["acknowledged_by"] == "carol"
    sid_cmd = rt.submit("silence", {"matchers": {"alertname": str(firing[0]["rule"])}, "duration_s": 600}, "carol")
    rt.step()
    res = rt.result(sid_cmd)
    assert res is not None and res["status"] == "applied" and res["silence_id"]
    un = rt.submit("unsilence", {"silence_id": res["silence_id"]}, "carol")
    rt.step()
    assert rt.result(un)["status"] == "applied"  # type: ignore[index]
    rt.stop()


class BrokenForecaster:
    calls = 0

    def observe(self, snapshot: object) -> None:
        BrokenForecaster.calls += 1
        raise RuntimeError("model file corrupt")

    def forecast(self, now_s: float, timeline: object | None = None) -> dict[str, object]:
        raise AssertionError("not reached")


def test_a_failing_part_is_counted_and_the_cycle_goes_on(tmp_path: Path) -> None:
    rt = LiveRuntime(
        LiveOptions(scenario="small", speed=10, state_dir=tmp_path, history=False), forecaster=BrokenForecaster()
    )
    s1 = rt.step()
    s2 = rt.step()
    assert s2.version == s1.version + 1 and s2.t_s > s1.t_s
    assert s2.cycle.errors == 2 and "model file corrupt" in s2.cycle.last_error
    assert "model file corrupt" in s2.forecast_status
    rt.stop()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="between 1 and 600"):
        LiveRuntime(LiveOptions(scenario="small", speed=1000, state_dir=tmp_path))
    with pytest.raises(ValueError, match="policy"):
        LiveRuntime(LiveOptions(scenario="small", policy="oracle", state_dir=tmp_path))


def test_thread_cycles_at_the_period_and_stops(tmp_path: Path) -> None:
    rt = LiveRuntime(LiveOptions(scenario="small", speed=5, period_s=0.05, state_dir=tmp_path, history=True))
    seen: list[int] = []
    rt.subscribe(lambda s: seen.append(s.version))
    rt.start()
    time.sleep(0.6)
    rt.stop()
    n = len(seen)
    assert n >= 4, n
    assert seen == sorted(seen)
    time.sleep(0.15)
    assert len(seen) == n  # stopped
    assert (tmp_path / "history.duckdb").exists()


def test_ledger_exact() -> None:
    led = Ledger()
    grid = np.array([1000.0, -500.0])  # W
    bess = np.array([500.0, 0.0])  # batteries cover 500 W in the first second
    price = np.array([0.36, 0.36])  # per kWh
    led.add(1, grid, bess, price, export_price=0.0, dt_s=3600.0)
    assert led.spent == pytest.approx(0.36)  # 1 kWh imported, export unpaid
    assert led.saved == pytest.approx(0.18)  # without batteries: 1.5 kWh
    led.add(2, grid, bess, price, export_price=0.0, dt_s=3600.0)  # a new day starts from zero
    assert led.spent == pytest.approx(0.36)


def test_series_ring_keeps_the_newest_rows_in_order() -> None:
    ring = SeriesRing(("a",), capacity=4)
    for t in range(6):
        ring.push(float(t), {"a": t * 10.0})
    tail = ring.tail()
    assert tail["t_s"] == [2.0, 3.0, 4.0, 5.0] and tail["a"] == [20.0, 30.0, 40.0, 50.0]
    assert ring.tail(since_s=3.5)["t_s"] == [4.0, 5.0]
    assert len(ring.tail(max_points=2)["t_s"]) == 2


def test_audit_file_rolls_over_and_stays_bounded(tmp_path: Path) -> None:
    rt = make(tmp_path, audit_max_bytes=2000)
    for i in range(40):
        rt.record_admin("test", f"record {i} " + "x" * 100)
    cur, prev = rt.audit_path, rt.audit_path.with_name("audit.1.jsonl")
    assert prev.exists() and cur.stat().st_size < 2000 + 400 and prev.stat().st_size < 2000 + 400
    last = json.loads(cur.read_text().splitlines()[-1])
    assert last["why"].startswith("record 39") and last["actor"] == "admin:test"
    assert rt.audit(5)[0] >= 40  # in memory, nothing lost
    rt.stop()
