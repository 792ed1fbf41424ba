"""Self-healing: plans by Xid bucket, the drain and GPU-isolation rate limits and approval, audit and revert; and
end to end in the twin: injected Xid 79, 48 and 94 detected within 1 s and the job running again within its
restart delay, Xid 48 isolating only its GPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from powerplane.cli import app
from powerplane.ops.audit import AuditLog
from powerplane.ops.heal import HealConfig, Healer
from powerplane.runtime.ops_loop import run_fault_test

T0 = 1_732_390_200.0


class Recorder:
    """An executor that records calls (a site of 40 nodes of 8 GPUs)."""

    n_nodes = 40
    n_gpus = 320

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.drained: set[int] = set()
        self.cordoned: set[int] = set()

    def node_of_gpu(self, gpu: int) -> int:
        return gpu // 8

    def job_of_gpu(self, gpu: int) -> int:
        return 100 + gpu // 16

    def drain_node(self, node: int, now_s: float) -> list[int]:
        self.calls.append(("drain", node))
        self.drained.add(node)
        return [100 + node // 2]

    def undrain_node(self, node: int, now_s: float) -> None:
        self.calls.append(("undrain", node))
        self.drained.discard(node)

    def cordon_gpu(self, gpu: int, now_s: float) -> list[int]:
        self.calls.append(("cordon", gpu))
        self.cordoned.add(gpu)
        return [self.job_of_gpu(gpu)]

    def uncordon_gpu(self, gpu: int, now_s: float) -> None:
        self.calls.append(("uncordon", gpu))
        self.cordoned.discard(gpu)

    def restart_job(self, job: int, now_s: float) -> bool:
        self.calls.append(("restart", job))
        return True

    def reset_gpu(self, gpu: int, now_s: float) -> bool:
        self.calls.append(("reset", gpu))
        return True

    def reboot_node(self, node: int, now_s: float) -> bool:
        self.calls.append(("reboot", node))
        return True


def xid_alert(gpu: int, xid: int, action: str) -> dict[str, Any]:
    return {
        "id": f"GpuXid:gpu:{gpu}",
        "rule": "GpuXid",
        "state": "firing",
        "transition": "firing",
        "labels": {
            "heal": "xid",
            "xid": str(xid),
            "action": action,
            "gpu_index": str(gpu),
            "node_index": str(gpu // 8),
        },
        "annotations": {"summary": f"Xid {xid}"},
    }


def gpu_alert(rule: str, gpu: int, heal: str) -> dict[str, Any]:
    return {
        "id": f"{rule}:gpu:{gpu}",
        "rule": rule,
        "transition": "firing",
        "labels": {"heal": heal, "gpu_index": str(gpu), "node_index": str(gpu // 8)},
        "annotations": {"summary": rule},
    }


def test_plans_by_bucket_and_follow_up(tmp_path: Path) -> None:
    ex, audit = Recorder(), AuditLog(tmp_path / "audit.jsonl")
    h = Healer(ex, audit, HealConfig(reset_s=60, reboot_s=300))
    h.handle([xid_alert(3, 94, "RESTART_APP")], T0)
    assert ex.calls == [("restart", 100)]
    h.handle([xid_alert(17, 48, "WORKFLOW_XID_48")], T0)  # workflow bucket -> its fallback, RESET_GPU: one GPU
    assert ex.calls[1:] == [("cordon", 17), ("reset", 17)] and not ex.drained
    h.handle([gpu_alert("GpuEccDoubleBit", 17, "reset_gpu")], T0)  # the same GPU: already isolated, nothing more
    assert len(ex.calls) == 3
    h.handle([], T0 + 59)
    assert ex.cordoned == {17} and h.cordoned.keys() == {17}
    h.handle([], T0 + 60)  # the reset is over: the GPU returns to the pool
    assert ex.calls[-1] == ("uncordon", 17) and not ex.cordoned and not h.cordoned
    h.handle([xid_alert(40, 13, "IGNORE")], T0 + 61)
    assert len(ex.calls) == 4
    bad = xid_alert(41, 79, "RESTART_BM")
    bad["labels"]["node_index"] = "not-a-number"
    assert h.handle([bad, xid_alert(3, 94, "RESTART_APP")], T0 + 62)[0].kind == "restart_job"  # the next still runs
    assert h.errors == 1 and audit.records()[-2]["action"] == "heal_error"
    recs = audit.records()
    assert [r["action"] for r in recs][:4] == ["restart_job", "cordon_gpu", "reset_gpu", "uncordon_gpu"]
    cordon = recs[1]
    assert cordon["actor"] == "self-heal" and cordon["before"] == "schedulable" and cordon["after"] == "cordoned"
    assert cordon["jobs_moved"] == [101] and cordon["alert_id"] == "GpuXid:gpu:17" and cordon["node"] == 2
    assert cordon["target"] == "gpu/17" and cordon["inverse"] == "uncordon_gpu"
    assert json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[3])["reverts"] == cordon["action_id"]


def test_node_buckets_drain_the_node_and_gpu_plans_yield_to_them() -> None:
    ex = Recorder()
    h = Healer(ex, AuditLog(None), HealConfig(reset_s=60, reboot_s=300))
    # A GPU fallen off the bus while its node reports: the rule asks for a GPU reset, so only that GPU goes out.
    assert [a.kind for a in h.handle([gpu_alert("GpuFallenOffBus", 9, "reset_gpu")], T0)] == ["cordon_gpu", "reset_gpu"]
    # Xid 79 (RESTART_BM) on the same node: the node plan goes ahead over the cordoned GPU.
    assert [a.kind for a in h.handle([xid_alert(10, 79, "RESTART_BM")], T0 + 1)] == ["drain_node", "reboot_node"]
    assert ex.drained == {1} and ex.cordoned == {9}
    assert h.handle([gpu_alert("GpuEccDoubleBit", 12, "reset_gpu")], T0 + 2) == []  # its node is out already
    h.handle([], T0 + 301)  # the GPU's reset is over first, then the reboot
    assert ex.calls[-2:] == [("uncordon", 9), ("undrain", 1)] and not ex.drained and not ex.cordoned
    # A hardware check without a GPU named: the node waits for the operator.
    node_only = xid_alert(0, 54, "CHECK_MECHANICALS")
    del node_only["labels"]["gpu_index"]
    (d,) = h.handle([node_only], T0 + 400)
    assert d.kind == "drain_node" and h.drained == {0: d.id}


def test_gpu_isolation_rate_limit_approval_hold_and_revert() -> None:
    ex, audit = Recorder(), AuditLog(None)
    h = Healer(ex, audit, HealConfig(max_isolate_fraction=0.01, isolate_window_s=600, reset_s=60))
    assert h.isolate_limit == 3  # 1 % of 320 GPUs
    acts = [h.handle([xid_alert(8 * n + 1, 48, "WORKFLOW_XID_48")], T0 + n) for n in range(4)]
    assert [ex.calls.count(("cordon", 8 * n + 1)) for n in range(4)] == [1, 1, 1, 0]
    held = acts[3][0]
    assert held.kind == "cordon_gpu" and held.status == "awaiting_approval" and held.detail["gpu"] == 25
    assert h.handle([gpu_alert("GpuEccDoubleBit", 25, "reset_gpu")], T0 + 4) == []  # already waiting
    # Node drains are counted apart: a reboot still goes ahead.
    assert h.handle([xid_alert(8 * 30, 79, "RESTART_BM")], T0 + 5)[0].status == "done"
    done = h.approve(held.id, "carol", T0 + 10)
    assert [a.kind for a in done] == ["cordon_gpu", "reset_gpu"] and ex.cordoned >= {1, 9, 17, 25}
    assert any(r["actor"] == "carol" and r["action"] == "approve" and r["target"] == "gpu/25" for r in audit.records())
    # A GPU awaiting a hardware check stays cordoned until an operator reverts it.
    ex2 = Recorder()
    h2 = Healer(ex2, AuditLog(None))
    (c,) = h2.handle([xid_alert(80, 92, "CONTACT_SUPPORT")], T0)
    assert c.kind == "cordon_gpu" and c.detail["after"] == "cordoned until a hardware check"
    h2.handle([], T0 + 10_000)
    assert h2.cordoned == {80: c.id} and ex2.calls == [("cordon", 80)] and not ex2.drained
    undo = h2.revert(c.id, "dave", T0 + 10_001)
    assert undo is not None and undo.kind == "uncordon_gpu" and undo.detail["reverts"] == c.id and h2.cordoned == {}
    assert ex2.calls[-1] == ("uncordon", 80) and h2.revert(c.id, "dave", T0 + 10_002) is None
    # Reverting a reset's cordon early cancels its follow-up.
    (c1, _) = h2.handle([xid_alert(81, 48, "WORKFLOW_XID_48")], T0 + 20_000)
    assert h2.revert(c1.id, "erin", T0 + 20_001) is not None
    h2.handle([], T0 + 20_100)
    assert ex2.calls.count(("uncordon", 81)) == 1
    # After the window, isolations are allowed again.
    h.handle([], T0 + 700)
    assert h.handle([xid_alert(200, 48, "WORKFLOW_XID_48")], T0 + 700)[0].status == "done"


def test_drain_rate_limit_needs_approval_and_revert() -> None:
    ex, audit = Recorder(), AuditLog(None)
    h = Healer(ex, audit, HealConfig(max_drain_fraction=0.05, drain_window_s=600))
    assert h.drain_limit == 2  # 5 % of 40 nodes
    acts = [h.handle([xid_alert(8 * n, 79, "RESTART_BM")], T0 + n) for n in range(3)]
    assert [ex.calls.count(("drain", n)) for n in range(3)] == [1, 1, 0]
    held = acts[2][0]
    assert held.status == "awaiting_approval" and held.detail["node"] == 2
    assert h.handle([xid_alert(17, 79, "RESTART_BM")], T0 + 3) == []  # node 2 already waits: no second request
    done = h.approve(held.id, "carol", T0 + 10)
    assert [a.kind for a in done] == ["drain_node", "reboot_node"] and ("drain", 2) in ex.calls
    assert any(r["actor"] == "carol" and r["action"] == "approve" for r in audit.records())
    # An operator's drain keeps the node out until the drain is reverted.
    h2 = Healer(Recorder(), AuditLog(None))
    (d,) = h2.handle([gpu_alert("NodeCheck", 80, "drain_node")], T0)
    h2.handle([], T0 + 10_000)
    assert h2.drained == {10: d.id}
    undo = h2.revert(d.id, "dave", T0 + 10_001)
    assert undo is not None and undo.kind == "undrain_node" and h2.drained == {}
    assert h2.revert(d.id, "dave", T0 + 10_002) is None  # nothing left to revert
    # After the window, drains are allowed again.
    h.handle([], T0 + 700)
    assert h.handle([xid_alert(8 * 30, 79, "RESTART_BM")], T0 + 700)[0].status == "done"


@pytest.mark.slow
def test_twin_xid_79_48_94_detected_and_restarted(tmp_path: Path) -> None:
    out = run_fault_test(
        "small",
        0.5,
        plan=((0.02, "xid", 79), (0.3, "xid", 94), (0.4, "xid", 48)),
        audit_path=str(tmp_path / "audit.jsonl"),
    )
    faults = {f["xid"]: f for f in out["faults"] if f["xid"] in (79, 48, 94)}
    assert set(faults) == {79, 48, 94}
    for f in faults.values():
        assert f["detected_after_s"] is not None and f["detected_after_s"] <= 1.0  # the next 1-s reading
        assert f["within_restart_delay"], f
    assert "reboot_node" in faults[79]["healed_by"] and "reset_gpu" in faults[48]["healed_by"]
    assert faults[94]["healed_by"] == ["restart_job"]
    assert {"GpuXid", "GpuFallenOffBus", "GpuEccDoubleBit"} <= set(out["fired"])
    assert out["audit_records"] >= 6


@pytest.mark.slow
def test_twin_xid_48_isolates_only_its_gpu_and_revert() -> None:
    """In the twin: an Xid 48 on one GPU of a running training job cordons just that GPU (the node stays in the
    pool), the job runs again elsewhere within its restart delay, the GPU returns after its reset; a hardware-check
    Xid keeps its GPU cordoned until an operator reverts it."""
    from powerplane.config import load_scenario
    from powerplane.ops.alerts import AlertEngine
    from powerplane.ops.rules import load_rule_file
    from powerplane.runtime.ops_loop import OpsLoop, TwinExecutor
    from powerplane.twin.jobs import State
    from powerplane.twin.twin import Twin

    site, site_file = load_scenario("small")
    twin = Twin(site, site_file, seed=0)
    audit = AuditLog(None)
    healer = Healer(TwinExecutor(twin), audit, HealConfig(reset_s=60))
    loop = OpsLoop(twin, AlertEngine(load_rule_file(None), twin.topo, site, audit), healer)
    pool, wl = twin.workload.sched.pool, twin.workload
    loop.step()
    job, gpu = loop.inject_xid(48)
    node = int(twin.topo.gpu_node[gpu])
    for _ in range(3):
        loop.step()
    kinds = [a["kind"] for a in loop.heal_actions]
    assert kinds == ["cordon_gpu", "reset_gpu"] and loop.heal_actions[0]["jobs_moved"] == [job]
    assert pool.gpu_cordoned.nonzero()[0].tolist() == [gpu] and pool.node_up.all()
    assert healer.drained == {} and pool.available_gpus().sum() == twin.topo.n_gpus - 1
    assert int(pool.available_gpus()[pool.node_gpus(node)].sum()) == int(pool.node_n_gpus[node]) - 1
    for _ in range(600):
        if loop.faults[0].t_running_s is not None:
            break
        loop.step()
    fault = loop.faults[0].to_dict()
    assert fault["detected_after_s"] == 1.0 and fault["within_restart_delay"], fault
    assert wl.jobs.state[job] == State.RUNNING and gpu not in wl.jobs.gpus[job].tolist()
    assert not pool.gpu_cordoned.any()  # the reset (60 s) is over: back in the pool
    assert [a["kind"] for a in loop.heal_actions][2] == "uncordon_gpu"
    # Xid 92 (excessive single-bit ECC, CONTACT_SUPPORT): cordoned until the hardware check, then reverted.
    job2, gpu2 = loop.inject_xid(92)
    for _ in range(200):
        loop.step()
    (c,) = [a for a in loop.heal_actions if a["kind"] == "cordon_gpu" and a["gpu"] == gpu2]
    assert pool.gpu_cordoned.nonzero()[0].tolist() == [gpu2] and healer.cordoned == {gpu2: c["id"]}
    assert c["jobs_moved"] == [job2] and c["after"] == "cordoned until a hardware check"
    undo = healer.revert(c["id"], "dave", twin.now_s)
    assert undo is not None and not pool.gpu_cordoned.any() and pool.available_gpus()[gpu2]
    assert audit.records()[-1]["actor"] == "dave" and audit.records()[-1]["action"] == "uncordon_gpu"


@pytest.mark.slow
def test_alerts_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app, ["alerts", "test", "--scenario", "small", "--hours", "0.1", "--json", str(tmp_path / "o.json")]
    )
    assert r.exit_code == 0, r.output
    assert "GpuXid" in r.output and json.loads((tmp_path / "o.json").read_text())["cycles"] == 360
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups: [{name: g, rules: [{alert: X, expr: 'gpu.temp_c >> 1', severity: warning}]}]\n")
    r = runner.invoke(app, ["alerts", "check", str(bad)])
    assert r.exit_code == 2 and "rule 'X'" in r.output
    r = runner.invoke(app, ["alerts", "rules"])
    assert r.exit_code == 0 and "GpuPcieReplays" in r.output
