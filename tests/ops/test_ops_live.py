"""The ops stack (engine + healer + notifier) inside the live runtime: a fault in its twin is alerted, healed,
and notified through the delivery thread to a webhook on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from powerplane.core.clock import WallClock
from powerplane.ops.notify import Notifier, NotifyConfig
from powerplane.ops.outbox import Outbox
from powerplane.runtime.live import LiveOptions, LiveRuntime
from powerplane.runtime.ops_loop import OpsStack
from powerplane.twin.jobs import State


@pytest.mark.slow
def test_ops_stack_in_the_live_runtime(tmp_path: Path, hook_server: Callable[..., Any]) -> None:
    hooks = hook_server()
    rt = LiveRuntime(
        LiveOptions(scenario="small", policy="threshold", state_dir=tmp_path / "state", history=False),
        alert_engine=None,
        forecaster=None,
    )
    cfg = NotifyConfig.model_validate(
        {
            "receivers": [{"name": "im", "webhook": {"kind": "wecom", "url": f"http://127.0.0.1:{hooks.port}/w"}}],
            "routes": [{"match": {"severity": "critical"}, "receivers": ["im"], "group_wait": "0s"}],
        }
    )
    notifier = Notifier(cfg, Outbox(tmp_path / "outbox.sqlite"))
    notifier.start(WallClock(), interval_s=0.05)
    stack = OpsStack.for_twin(rt.twin, notifier, str(tmp_path / "audit.jsonl"))
    rt.alerts, rt.alert_status = stack, "ok"
    rt.step()
    wl = rt.twin.workload
    job = next(int(j) for j in wl.active_ids() if wl.jobs.state[j] == State.RUNNING and wl.jobs.n_gpus[j] >= 8)
    wl.inject_fault(job, rt.twin.now_s, xid=79, gpu=int(wl.jobs.gpus[job][0]))
    rt.step()
    both = {a["rule"]: a for a in stack.active() if a["rule"] in ("GpuXid", "GpuFallenOffBus")}
    assert both["GpuFallenOffBus"]["state"] == "firing" and both["GpuXid"]["inhibited"]
    rt.step()
    assert any(a["rule"] == "GpuXid" and a["state"] == "firing" for a in stack.active())
    kinds = [a["kind"] for a in stack.heal_actions]
    assert kinds[:2] == ["drain_node", "reboot_node"]
    assert wl.jobs.state[job] in (State.STARTING, State.RUNNING, State.QUEUED)
    deadline = time.monotonic() + 10
    while not hooks.posts and time.monotonic() < deadline:
        time.sleep(0.05)
    texts = [body["markdown"]["content"] for _, body in hooks.posts]
    # GpuXid is inhibited by GpuFallenOffBus on the same GPU (an inhibit rule of the defaults) while both fire, so
    # the first page is the fallen-off GPU alone. Once the healer drains the node, GpuFallenOffBus resolves (its
    # node no longer reports) and the still-firing GpuXid is delivered, as Alertmanager does when an inhibitor ends.
    assert texts and "GpuFallenOffBus" in texts[0] and "GpuXid" not in texts[0], texts
    notifier.stop()
    notifier.outbox.close()
