"""Self-healing: plans by Xid bucket, the drain rate limit and approval, audit and revert; and end to end in the
twin: injected Xid 79, 48 and 94 detected within 1 s and the job running again within its restart delay."""

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

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.drained: set[int] = set()

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


def test_plans_by_bucket_and_follow_up(tmp_path: Path) -> None:
    ex, audit = Recorder(), AuditLog(tmp_path / "audit.jsonl")
    h = Healer(ex, audit, HealConfig(reset_s=60, reboot_s=300))
    h.handle([xid_alert(3, 94, "RESTART_APP")], T0)
    assert ex.calls == [("restart", 100)]
    h.handle([xid_alert(17, 48, "WORKFLOW_XID_48")], T0)  # workflow bucket -> its fallback, RESET_GPU
    assert ex.calls[1:] == [("drain", 2), ("reset", 17)]
    h.handle([xid_alert(18, 48, "WORKFLOW_XID_48")], T0)  # same node: already out, nothing more
    assert len(ex.calls) == 3
    h.handle([], T0 + 59)
    assert 2 in ex.drained
    h.handle([], T0 + 60)  # the reset is over: the node returns to the pool
    assert ex.calls[-1] == ("undrain", 2) and not ex.drained
    h.handle([xid_alert(40, 13, "IGNORE")], T0 + 61)
    assert len(ex.calls) == 4
    bad = xid_alert(41, 79, "RESTART_BM")
    bad["labels"]["node_index"] = "not-a-number"
    assert h.handle([bad, xid_alert(3, 94, "RESTART_APP")], T0 + 62)[0].kind == "restart_job"  # the next still runs
    assert h.errors == 1 and audit.records()[-2]["action"] == "heal_error"
    recs = audit.records()
    assert [r["action"] for r in recs][:4] == ["restart_job", "drain_node", "reset_gpu", "undrain_node"]
    drain = recs[1]
    assert drain["actor"] == "self-heal" and drain["before"] == "schedulable" and drain["after"] == "drained"
    assert drain["jobs_moved"] == [101] and drain["alert_id"] == "GpuXid:gpu:17"
    assert json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[3])["reverts"] == drain["action_id"]


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
    # A hardware check keeps the node out until an operator reverts the drain.
    h2 = Healer(Recorder(), AuditLog(None))
    (d,) = h2.handle([xid_alert(80, 92, "CONTACT_SUPPORT")], T0)
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
