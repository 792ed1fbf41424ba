"""`powerplane run`'s runtime heals routine faults and notifies: the ops stack (engine + healer + notifier) is wired
in by default, behind the alert engine's interface the cockpit uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from powerplane.core.errors import PowerPlaneError
from powerplane.runtime.live import LiveOptions, LiveRuntime
from powerplane.runtime.ops_loop import OpsStack
from powerplane.twin.jobs import State


def _runtime(tmp_path: Path, **kw: object) -> LiveRuntime:
    opts = LiveOptions(scenario="small", policy="threshold", state_dir=tmp_path / "state", history=False)
    for k, v in kw.items():
        setattr(opts, k, v)
    return LiveRuntime(opts, forecaster=None)


def _inject_xid79(rt: LiveRuntime) -> int:
    wl = rt.twin.workload
    job = next(int(j) for j in wl.active_ids() if wl.jobs.state[j] == State.RUNNING and wl.jobs.n_gpus[j] >= 8)
    wl.inject_fault(job, rt.twin.now_s, xid=79, gpu=int(wl.jobs.gpus[job][0]))
    return job


@pytest.mark.parametrize("heal", [True, False])
def test_the_live_runtime_heals_an_xid_79_unless_told_not_to(tmp_path: Path, heal: bool) -> None:
    rt = _runtime(tmp_path, heal=heal)
    try:
        assert isinstance(rt.alerts, OpsStack) == heal  # --no-heal without --notify: the plain engine
        rt.step()
        _inject_xid79(rt)
        rt.step()
        rt.step()
        assert any(a["rule"] == "GpuXid" and a["state"] == "firing" for a in rt.state.alerts or [])
        kinds = [a["kind"] for a in getattr(rt.alerts, "heal_actions", [])]
        assert (kinds[:2] == ["drain_node", "reboot_node"]) if heal else kinds == []
        assert (tmp_path / "state" / "ops_audit.jsonl").exists() == heal
    finally:
        rt.stop()


def test_a_broken_notify_config_is_refused_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "notify.yaml"
    bad.write_text("receivers: [{name: im}]\nroutes: [{match: {severity: critical}, receivers: [nobody]}]\n")
    with pytest.raises((PowerPlaneError, ValueError)):
        _runtime(tmp_path, notify=bad)
