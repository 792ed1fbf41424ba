"""Operator commands of the live runtime: what each does to the running stack, and when it is refused.

The web handlers only queue commands (:meth:`LiveRuntime.submit`); the runtime's cycle calls
:func:`apply_command` for each at its start, audits the outcome with the token's name and publishes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from powerplane.core.commands import GpuPowerCap, JobPowerCap
from powerplane.runtime.energy import ManagedPolicy, make_policy
from powerplane.twin.jobs import State

if TYPE_CHECKING:
    from powerplane.runtime.live import LiveRuntime
    from powerplane.runtime.live_core import LiveCore

COMMAND_KINDS = ("dr_start", "dr_end", "set_policy", "cap_job", "cap_gpus", "ack_alert", "silence", "unsilence")


@dataclass(frozen=True)
class OperatorCommand:
    id: str
    kind: str
    args: dict[str, Any]
    actor: str


@dataclass
class CommandResult:
    id: str
    kind: str
    status: str  # queued | applied | refused | failed
    detail: str = ""
    t_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "detail": self.detail,
            "t_s": self.t_s,
            **self.extra,
        }


class CommandRefused(ValueError):
    """An operator command that cannot be applied as asked (the message says why)."""


def apply_command(rt: LiveRuntime, cmd: OperatorCommand) -> tuple[str, dict[str, Any]]:
    a = cmd.args
    now = rt.twin.now_s
    if cmd.kind == "dr_start":
        return _dr_start(rt, float(a.get("reduction", 0.0)), float(a.get("duration_s", 3600.0)), now)
    if cmd.kind == "dr_end":
        if not isinstance(rt.policy, ManagedPolicy) or rt.policy.active_event is None:
            raise CommandRefused("no demand-response event is active")
        s, _, r = rt.policy.active_event
        rt.policy.events = [(s0, min(e0, now) if (s0, r0) == (s, r) else e0, r0) for s0, e0, r0 in rt.policy.events]
        rt.policy.before_block(now)
        return "demand-response event ended", {}
    if cmd.kind == "set_policy":
        return _set_policy(rt, str(a.get("policy", ""))), {}
    if cmd.kind == "cap_job":
        return _cap_job(rt, a), {}
    if cmd.kind == "cap_gpus":
        return _cap_gpus(rt, a), {}
    return _alert_command(rt, cmd)


def _cap_gpus(rt: LiveRuntime, a: dict[str, Any]) -> str:
    """Cap GPUs by site index (``cap_w`` None: back to the default limit); the twin clips to the GPUs' limits."""
    gpus = np.unique(np.asarray(a.get("gpus", []), dtype=np.int64).reshape(-1))
    n = rt.topology.n_gpus
    if gpus.size == 0 or gpus.min() < 0 or gpus.max() >= n:
        raise CommandRefused(f"gpus must be a non-empty list of GPU indices within 0-{n - 1}")
    cap = a.get("cap_w")
    cap_w = float("nan") if cap is None else float(cap)
    if cap is not None and not (np.isfinite(cap_w) and cap_w > 0):
        raise CommandRefused(f"cap_w must be a positive number of watts per GPU, got {cap!r}")
    res = rt.twin.apply([GpuPowerCap(gpus, cap_w)])[0]
    if not res.applied:
        raise CommandRefused(res.detail)
    return f"{gpus.size} GPUs: {res.detail}" + (" (clipped to the GPUs' limits)" if res.clipped else "")


def _dr_start(rt: LiveRuntime, reduction: float, duration_s: float, now: float) -> tuple[str, dict[str, Any]]:
    if not isinstance(rt.policy, ManagedPolicy):
        raise CommandRefused(f"demand response needs the mpc policy (running: {rt.policy.name})")
    if not 0.0 < reduction <= 0.5:
        raise CommandRefused(f"reduction must be in (0, 0.5] (a share of the baseline), got {reduction:g}")
    if not 60.0 <= duration_s <= 24 * 3600.0:
        raise CommandRefused(f"duration must be between 60 s and 24 h, got {duration_s:g} s")
    if rt.policy.active_event is not None:
        raise CommandRefused("a demand-response event is already active; end it first")
    rt.policy.events.append((now, now + duration_s, reduction))
    rt.policy.before_block(now)
    if isinstance(rt.policy, ManagedPolicy) and hasattr(rt.policy, "_next_plan_s"):
        rt.policy._next_plan_s = -np.inf  # replan with the event in the horizon
    base = rt.policy.baseline_w or 0.0
    return (
        f"demand response -{reduction:.0%} for {duration_s / 60:.0f} min from baseline {base / 1e6:.2f} MW",
        {"baseline_w": base},
    )


def _set_policy(rt: LiveRuntime, name: str) -> str:
    if name not in ("none", "threshold", "mpc"):
        raise CommandRefused(f"unknown live policy {name!r}; valid: none, threshold, mpc")
    old = rt.policy
    if name == old.name:
        return f"already running {name}"
    if isinstance(old, ManagedPolicy):  # lift the caps the compute lever set; operator caps stay
        lever = np.flatnonzero(np.isfinite(old.lever.caps_w))
        operator = set()
        for j in rt.job_caps_w:
            operator.update(rt.twin.workload.jobs.gpus[j].tolist())
        lift = np.array([g for g in lever.tolist() if g not in operator], dtype=np.int64)
        if lift.size:
            rt.twin.apply([GpuPowerCap(lift, float("nan"))])
        rt.twin.workload.sched.set_power_budget(float("inf"))  # no power-aware admission without the planner
    new = make_policy(name, rt.twin, [])
    new.events = list(old.events)
    rt.policy = new
    rt.feed_planner(new)
    rt._controller = new.controller()
    rt._policy_audit_seen = 0
    return f"policy {old.name} -> {name}"


def _cap_job(rt: LiveRuntime, a: dict[str, Any]) -> str:
    job = int(a["job"])
    jobs = rt.twin.workload.jobs
    if not 0 <= job < jobs.n:
        raise CommandRefused(f"unknown job {job}")
    cap = a.get("cap_w")
    if cap is None:
        res = rt.twin.apply([JobPowerCap(job, float("nan"))])[0]
        rt.job_caps_w.pop(job, None)
        return f"cap removed from job {job}: {res.detail}"
    cap_w = float(cap)
    if not (np.isfinite(cap_w) and cap_w > 0):
        raise CommandRefused(f"cap_w must be a positive number of watts per GPU, got {cap!r}")
    if jobs.state[job] not in (State.STARTING, State.RUNNING, State.CHECKPOINT, State.STALLED, State.PAUSED):
        raise CommandRefused(f"job {job} holds no GPUs (state {State(int(jobs.state[job])).name.lower()})")
    res = rt.twin.apply([JobPowerCap(job, cap_w)])[0]
    if not res.applied:
        raise CommandRefused(res.detail)
    gpus = jobs.gpus[job]
    applied = float(np.nanmax(rt.twin.fleet.cap_w[gpus])) if len(gpus) else cap_w
    rt.job_caps_w[job] = applied
    clipped = " (clipped to the GPUs' limits)" if res.clipped else ""
    return f"job {job}: {res.detail}{clipped}"


def _alert_command(rt: LiveCore, cmd: OperatorCommand) -> tuple[str, dict[str, Any]]:
    if rt.alerts is None:
        raise CommandRefused(rt.alert_status)
    a = cmd.args
    if cmd.kind == "ack_alert":
        if not rt.alerts.acknowledge(str(a["alert_id"]), cmd.actor):
            raise CommandRefused(f"no alert {a['alert_id']!r} to acknowledge")
        return f"alert {a['alert_id']} acknowledged", {}
    if cmd.kind == "silence":
        matchers = {str(k): str(v) for k, v in dict(a.get("matchers") or {}).items()}
        if not matchers:
            raise CommandRefused("a silence needs at least one label matcher")
        duration = float(a.get("duration_s", 3600.0))
        if not 60.0 <= duration <= 7 * 86400.0:
            raise CommandRefused(f"silence duration must be between 60 s and 7 days, got {duration:g} s")
        sid = rt.alerts.silence(matchers, duration, cmd.actor, str(a.get("comment", "")))
        return f"silence {sid} for {duration / 60:.0f} min on {matchers}", {"silence_id": sid}
    if not rt.alerts.unsilence(str(a["silence_id"]), cmd.actor):
        raise CommandRefused(f"no silence {a['silence_id']!r}")
    return f"silence {a['silence_id']} lifted", {}


# ------------------------------------------------------------------ publishing
