"""Self-healing: act on firing alerts through the scheduler and the actuator, with guard rails and an audit trail.

An alert labelled ``heal`` names what to do: ``heal: xid`` takes the Xid catalog's immediate-action bucket
(``action`` label, see :mod:`powerplane.ops.xid`), ``heal: reset_gpu`` / ``heal: check_gpu`` /
``heal: reboot_node`` / ``heal: restart_job`` / ``heal: drain_node`` name it directly. The plans:

- RESTART_APP: restart the job from its last checkpoint now (not after its restart delay);
- RESET_GPU, and the workflow buckets' fallback (Xid 48 double-bit ECC, 63/64 row remapping, NVLink): isolate just
  that GPU (the scheduler cordons it and moves the jobs holding it, which restart from their checkpoints elsewhere;
  the node's other GPUs keep working), reset it, return it to the pool after ``reset_s`` (a failed reset keeps it
  cordoned). The ``GpuFallenOffBus`` and ``GpuEccDoubleBit`` rules ask for this too: the first fires only while
  the node still reports, i.e. while the node stays healthy;
- RESTART_BM (Xid 79 by the catalog, a GPU recovery action "node reboot"): drain the node, reboot it (every GPU
  reset), return it after ``reboot_s``;
- CHECK_MECHANICALS, CONTACT_SUPPORT: cordon the GPU (the node, ``drain_node``, when the alert names no GPU) and
  keep it out until an operator reverts it after the hardware check;
- IGNORE: nothing.

Guard rails: at most ``max_drain_fraction`` of the nodes drained within ``drain_window_s`` (default 5 % in
10 minutes), and, counted apart, at most ``max_isolate_fraction`` of the GPUs cordoned within
``isolate_window_s`` (default 1 % in 10 minutes); an action beyond its limit waits for an operator's
:meth:`Healer.approve`. One plan per node and per GPU at a time; a GPU of a drained node is left alone (the node
is out already), while a node plan goes ahead over cordoned GPUs (they stay cordoned when the node returns).
Every action is written to the audit log with actor, reason, before and after, and can be reverted
(:meth:`Healer.revert`: undrain, uncordon; a restart needs no inverse, the job runs from its checkpoint either way).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from powerplane.ops.audit import AuditLog
from powerplane.ops.xid import WORKFLOW_FALLBACK, Action


class Executor(Protocol):
    """What the healer acts through (the scheduler and the device actuator of a site, or the twin's)."""

    n_nodes: int
    n_gpus: int

    def node_of_gpu(self, gpu: int) -> int: ...
    def job_of_gpu(self, gpu: int) -> int: ...  # -1: none
    def drain_node(self, node: int, now_s: float) -> list[int]: ...  # jobs moved
    def undrain_node(self, node: int, now_s: float) -> None: ...
    def cordon_gpu(self, gpu: int, now_s: float) -> list[int]: ...  # cordon and move its jobs; the jobs moved
    def uncordon_gpu(self, gpu: int, now_s: float) -> None: ...
    def restart_job(self, job: int, now_s: float) -> bool: ...
    def reset_gpu(self, gpu: int, now_s: float) -> bool: ...
    def reboot_node(self, node: int, now_s: float) -> bool: ...


class HealConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    max_drain_fraction: float = 0.05
    drain_window_s: float = 600.0
    max_isolate_fraction: float = 0.01  # GPUs cordoned per isolate_window_s without an operator's approval
    isolate_window_s: float = 600.0
    reset_s: float = 60.0  # a GPU reset, then the GPU returns to the pool
    reboot_s: float = 300.0  # a node reboot


@dataclass
class HealAction:
    id: str
    t_s: float
    kind: str  # drain_node | undrain_node | cordon_gpu | uncordon_gpu | restart_job | reset_gpu | reboot_node
    target: str
    reason: str
    status: str = "done"  # done | failed | awaiting_approval | reverted | skipped
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "t_s": self.t_s,
            "kind": self.kind,
            "target": self.target,
            "reason": self.reason,
            "status": self.status,
            **self.detail,
        }


_PLAN = {
    Action.RESTART_APP: "restart_job",
    Action.RESET_GPU: "reset_gpu",
    Action.RESTART_BM: "reboot_node",
    Action.CHECK_MECHANICALS: "check_gpu",
    Action.CONTACT_SUPPORT: "check_gpu",
}
_DIRECT = {"reset_gpu", "check_gpu", "reboot_node", "restart_job", "drain_node"}
_GPU_PLANS = {"reset_gpu", "check_gpu"}  # isolate one GPU (a node plan when the alert names no GPU)
# returning a GPU or a node to the pool: (action kind, state before, the inverse, the reason when a repair is over)
_RELEASE = {
    "gpu": ("uncordon_gpu", "cordoned", "cordon_gpu", "reset finished"),
    "node": ("undrain_node", "drained", "drain_node", "repair finished"),
}


class Healer:
    ACTOR = "self-heal"

    def __init__(self, executor: Executor, audit: AuditLog, config: HealConfig | None = None) -> None:
        self.ex = executor
        self.audit = audit
        self.config = config or HealConfig()
        self.actions: dict[str, HealAction] = {}
        self.drained: dict[int, str] = {}  # node -> the drain action holding it out
        self.awaiting: dict[int, str] = {}  # node -> a drain waiting for an operator's approval
        self.cordoned: dict[int, str] = {}  # GPU -> the cordon action holding it out
        self.awaiting_gpu: dict[int, str] = {}  # GPU -> a cordon waiting for an operator's approval
        self._drains: deque[float] = deque()  # times of drains inside the window
        self._isolations: deque[float] = deque()  # times of GPU cordons inside their window
        # (due t_s, "node" | "gpu", node or GPU, action id): undrain or uncordon when due
        self._follow: list[tuple[float, str, int, str]] = []
        self._ids = itertools.count(1)
        self._alert_id = ""  # the alert being acted on, recorded with each action
        self.errors = 0

    @property
    def drain_limit(self) -> int:
        return max(1, math.floor(self.config.max_drain_fraction * self.ex.n_nodes))

    @property
    def isolate_limit(self) -> int:
        return max(1, math.floor(self.config.max_isolate_fraction * self.ex.n_gpus))

    def _new(self, t: float, kind: str, target: str, reason: str, **detail: Any) -> HealAction:
        if self._alert_id:
            detail.setdefault("alert_id", self._alert_id)
        a = HealAction(f"heal-{next(self._ids)}", t, kind, target, reason, detail=detail)
        self.actions[a.id] = a
        return a

    def _audit(self, a: HealAction, actor: str | None = None, **extra: Any) -> None:
        rec = a.to_dict()
        rec.pop("t_s")
        action_id = rec.pop("id")
        kind = rec.pop("kind")
        target = rec.pop("target")
        self.audit.write(actor or self.ACTOR, kind, target, {"action_id": action_id, **rec, **extra}, t_s=a.t_s)

    # --------------------------------------------------------------------------------- decisions

    def plan_for(self, alert: dict[str, Any]) -> str | None:
        labels = alert.get("labels", {})
        how = labels.get("heal")
        if how == "xid":
            try:
                bucket = Action(labels.get("action", ""))
            except ValueError:
                return None
            bucket = WORKFLOW_FALLBACK.get(bucket, bucket)
            return _PLAN.get(bucket)
        return how if how in _DIRECT else None

    def handle(self, transitions: list[dict[str, Any]], now_s: float) -> list[HealAction]:
        """Act on this cycle's newly firing alerts; run due follow-ups. Returns the actions taken."""
        done = self.tick(now_s)
        if not self.config.enabled:
            return done
        for alert in transitions:
            if alert.get("transition", alert.get("state")) != "firing":
                continue
            plan = self.plan_for(alert)
            if plan is None:
                continue
            self._alert_id = str(alert.get("id", ""))
            try:
                labels = alert["labels"]
                gpu = int(labels["gpu_index"]) if "gpu_index" in labels else -1
                node = int(labels["node_index"]) if "node_index" in labels else -1
                if node < 0 and gpu >= 0:
                    node = self.ex.node_of_gpu(gpu)
                reason = f"{alert['id']}: {alert.get('annotations', {}).get('summary', alert.get('rule', ''))}"
                done.extend(self._execute(plan, gpu, node, alert, reason, now_s))
            except Exception as e:  # a bad alert or a failing executor: counted and audited, the others go on
                self.errors += 1
                self.audit.write(self.ACTOR, "heal_error", self._alert_id, {"plan": plan, "error": repr(e)}, t_s=now_s)
            finally:
                self._alert_id = ""
        return done

    def _execute(
        self, plan: str, gpu: int, node: int, alert: dict[str, Any], reason: str, t: float
    ) -> list[HealAction]:
        out: list[HealAction] = []
        if plan == "restart_job":
            job = int(alert["labels"].get("job", self.ex.job_of_gpu(gpu) if gpu >= 0 else -1))
            if job < 0:
                return out
            ok = self.ex.restart_job(job, t)
            a = self._new(
                t,
                "restart_job",
                f"job/{job}",
                reason,
                job=job,
                before="stalled" if ok else "not stalled",
                after="restarting from checkpoint" if ok else "unchanged",
                inverse=None,
            )
            a.status = "done" if ok else "skipped"
            self._audit(a)
            return [a]
        if plan in _GPU_PLANS and gpu >= 0:
            return self._execute_gpu(plan, gpu, node, reason, t)
        if plan == "check_gpu":
            plan = "drain_node"  # no GPU named: the node waits for the hardware check
        if node < 0:
            return out
        if node in self.drained:
            return out  # one plan per node at a time: the node is already out of the pool
        if node in self.awaiting:
            return out  # already waiting for an operator
        self._expire_window(t)
        if len(self._drains) >= self.drain_limit:
            limit = f"{self.drain_limit} drains per {self.config.drain_window_s:.0f} s"
            return self._await_approval(
                self.awaiting, node, t, "drain_node", f"node/{node}", reason, node=node, plan=plan, gpu=gpu, limit=limit
            )
        return self._drain_and_fix(plan, gpu, node, reason, t)

    def _execute_gpu(self, plan: str, gpu: int, node: int, reason: str, t: float) -> list[HealAction]:
        if not 0 <= gpu < self.ex.n_gpus:
            raise ValueError(f"no GPU {gpu} on this site")
        if node in self.drained or gpu in self.cordoned or gpu in self.awaiting_gpu:
            return []  # the node is out, or this GPU already has its plan
        self._expire(self._isolations, self.config.isolate_window_s, t)
        if len(self._isolations) >= self.isolate_limit:
            limit = f"{self.isolate_limit} GPU isolations per {self.config.isolate_window_s:.0f} s"
            return self._await_approval(
                self.awaiting_gpu,
                gpu,
                t,
                "cordon_gpu",
                f"gpu/{gpu}",
                reason,
                gpu=gpu,
                node=node,
                plan=plan,
                limit=limit,
            )
        return self._isolate_and_fix(plan, gpu, node, reason, t)

    def _await_approval(
        self, awaiting: dict[int, str], idx: int, t: float, kind: str, target: str, reason: str, **detail: Any
    ) -> list[HealAction]:
        """Past its rate limit a drain or a GPU isolation waits (in ``awaiting``, by node or GPU) for an operator."""
        a = self._new(t, kind, target, reason, **detail)
        a.status = "awaiting_approval"
        awaiting[idx] = a.id
        self._audit(a)
        return [a]

    def _repaired(
        self, ok: bool, t: float, kind: str, target: str, reason: str, after_ok: str, after_failed: str, **detail: Any
    ) -> HealAction:
        """The audited record of a repair (a GPU reset, a node reboot) on a faulted device, done or failed."""
        r = self._new(t, kind, target, reason, **detail, before="faulted", after=after_ok if ok else after_failed)
        r.status = "done" if ok else "failed"
        self._audit(r)
        return r

    def _isolate_and_fix(self, plan: str, gpu: int, node: int, reason: str, t: float) -> list[HealAction]:
        """Cordon the GPU and move its jobs; then reset it and return it after ``reset_s``, or (``check_gpu``)
        keep it out until an operator reverts the cordon."""
        moved = self.ex.cordon_gpu(gpu, t)
        self._isolations.append(t)
        c = self._new(
            t,
            "cordon_gpu",
            f"gpu/{gpu}",
            reason,
            gpu=gpu,
            node=node,
            jobs_moved=moved,
            before="schedulable",
            after="cordoned" if plan == "reset_gpu" else "cordoned until a hardware check",
            inverse="uncordon_gpu",
        )
        self.cordoned[gpu] = c.id
        self._audit(c)
        out = [c]
        if plan == "reset_gpu":
            ok = self.ex.reset_gpu(gpu, t)
            out.append(
                self._repaired(ok, t, "reset_gpu", f"gpu/{gpu}", reason, "reset", "failed: stays cordoned", gpu=gpu)
            )
            if ok:
                self._follow.append((t + self.config.reset_s, "gpu", gpu, c.id))
        return out

    def _drain_and_fix(self, plan: str, gpu: int, node: int, reason: str, t: float) -> list[HealAction]:
        moved = self.ex.drain_node(node, t)
        self._drains.append(t)
        d = self._new(
            t,
            "drain_node",
            f"node/{node}",
            reason,
            node=node,
            jobs_moved=moved,
            before="schedulable",
            after="drained",
            inverse="undrain_node",
        )
        self.drained[node] = d.id
        self._audit(d)
        out = [d]
        if plan == "reset_gpu" and gpu >= 0:
            ok = self.ex.reset_gpu(gpu, t)
            out.append(self._repaired(ok, t, "reset_gpu", f"gpu/{gpu}", reason, "reset", "failed", gpu=gpu))
            self._follow.append((t + self.config.reset_s, "node", node, d.id))
        elif plan == "reboot_node":
            ok = self.ex.reboot_node(node, t)
            out.append(self._repaired(ok, t, "reboot_node", f"node/{node}", reason, "rebooted", "failed", node=node))
            self._follow.append((t + self.config.reboot_s, "node", node, d.id))
        # drain_node alone (hardware check): stays drained until an operator reverts it.
        return out

    def _expire_window(self, t: float) -> None:
        self._expire(self._drains, self.config.drain_window_s, t)

    @staticmethod
    def _expire(times: deque[float], window_s: float, t: float) -> None:
        while times and t - times[0] >= window_s:
            times.popleft()

    def tick(self, now_s: float) -> list[HealAction]:
        """Due follow-ups: nodes and GPUs whose reset or reboot is over return to the pool."""
        due = [f for f in self._follow if f[0] <= now_s]
        self._follow = [f for f in self._follow if f[0] > now_s]
        out = []
        for _, what, idx, action_id in due:
            if self._held(what).get(idx) == action_id:
                out.append(self._release(what, idx, action_id, now_s, self.ACTOR, _RELEASE[what][3]))
        return out

    def _held(self, what: str) -> dict[int, str]:
        """The GPUs cordoned (``what == "gpu"``) or the nodes drained (``"node"``): index -> the holding action."""
        return self.cordoned if what == "gpu" else self.drained

    def _release(self, what: str, idx: int, hold_id: str, t: float, actor: str, reason: str) -> HealAction:
        """Return a cordoned GPU or a drained node to the pool, reverting the action ``hold_id`` that held it out."""
        kind, held, inverse, _ = _RELEASE[what]
        (self.ex.uncordon_gpu if what == "gpu" else self.ex.undrain_node)(idx, t)
        self._held(what).pop(idx, None)
        self.actions[hold_id].status = "reverted"
        u = self._new(
            t,
            kind,
            f"{what}/{idx}",
            reason,
            **{what: idx},
            reverts=hold_id,
            before=held,
            after="schedulable",
            inverse=inverse,
        )
        self._audit(u, actor=actor)
        return u

    # --------------------------------------------------------------------------------- operators

    def approve(self, action_id: str, by: str, now_s: float) -> list[HealAction]:
        """An operator lets a drain or a GPU isolation past its rate limit go ahead."""
        a = self.actions.get(action_id)
        if a is None or a.status != "awaiting_approval":
            return []
        a.status = "approved"
        self.audit.write(by, "approve", a.target, {"action_id": a.id}, t_s=now_s)
        node = int(a.detail["node"])
        if a.kind == "cordon_gpu":
            gpu = int(a.detail["gpu"])
            self.awaiting_gpu.pop(gpu, None)
            if gpu in self.cordoned or node in self.drained:
                return []
            return self._isolate_and_fix(str(a.detail["plan"]), gpu, node, a.reason, now_s)
        self.awaiting.pop(node, None)
        if node in self.drained:
            return []
        return self._drain_and_fix(str(a.detail["plan"]), int(a.detail.get("gpu", -1)), node, a.reason, now_s)

    def revert(self, action_id: str, by: str, now_s: float) -> HealAction | None:
        """Undo a drain or a GPU cordon (the node or GPU returns to the pool). Other actions have nothing to undo."""
        a = self.actions.get(action_id)
        if a is None or a.kind not in ("drain_node", "cordon_gpu") or a.status != "done":
            return None
        what = "gpu" if a.kind == "cordon_gpu" else "node"
        idx = int(a.detail[what])
        if self._held(what).get(idx) != action_id:
            return None
        self._follow = [f for f in self._follow if f[3] != action_id]
        return self._release(what, idx, action_id, now_s, by, f"operator {by} reverted {action_id}")

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for a in self.actions.values():
            kinds[f"{a.kind}:{a.status}"] = kinds.get(f"{a.kind}:{a.status}", 0) + 1
        return {
            "actions": kinds,
            "drained_nodes": sorted(self.drained),
            "drain_limit": self.drain_limit,
            "cordoned_gpus": sorted(self.cordoned),
            "isolate_limit": self.isolate_limit,
        }
