"""Self-healing: act on firing alerts through the scheduler and the actuator, with guard rails and an audit trail.

An alert labelled ``heal`` names what to do: ``heal: xid`` takes the Xid catalog's immediate-action bucket
(``action`` label, see :mod:`powerplane.ops.xid`), ``heal: reset_gpu`` / ``heal: reboot_node`` /
``heal: restart_job`` / ``heal: drain_node`` name it directly. The plans:

- RESTART_APP: restart the job from its last checkpoint now (not after its restart delay);
- RESET_GPU: drain the GPU's node (the scheduler stops placing there and moves its jobs, which restart from their
  checkpoints elsewhere), reset the GPU, return the node to the pool after ``reset_s``;
- RESTART_BM: the same with a node reboot (every GPU of the node reset) and ``reboot_s``;
- CHECK_MECHANICALS, CONTACT_SUPPORT: drain the node and keep it out until an operator reverts the drain;
- IGNORE: nothing.

Guard rails: at most ``max_drain_fraction`` of the nodes drained within ``drain_window_s`` (default 5 % in
10 minutes); a drain beyond that waits for an operator's :meth:`Healer.approve`. One plan per node at a time.
Every action is written to the audit log with actor, reason, before and after, and can be reverted
(:meth:`Healer.revert`: undrain; a restart needs no inverse, the job runs from its checkpoint either way).
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

    def node_of_gpu(self, gpu: int) -> int: ...
    def job_of_gpu(self, gpu: int) -> int: ...  # -1: none
    def drain_node(self, node: int, now_s: float) -> list[int]: ...  # jobs moved
    def undrain_node(self, node: int, now_s: float) -> None: ...
    def restart_job(self, job: int, now_s: float) -> bool: ...
    def reset_gpu(self, gpu: int, now_s: float) -> bool: ...
    def reboot_node(self, node: int, now_s: float) -> bool: ...


class HealConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    max_drain_fraction: float = 0.05
    drain_window_s: float = 600.0
    reset_s: float = 60.0  # a GPU reset, then the node returns to the pool
    reboot_s: float = 300.0  # a node reboot


@dataclass
class HealAction:
    id: str
    t_s: float
    kind: str  # drain_node | undrain_node | restart_job | reset_gpu | reboot_node
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
    Action.CHECK_MECHANICALS: "drain_node",
    Action.CONTACT_SUPPORT: "drain_node",
}
_DIRECT = {"reset_gpu", "reboot_node", "restart_job", "drain_node"}


class Healer:
    ACTOR = "self-heal"

    def __init__(self, executor: Executor, audit: AuditLog, config: HealConfig | None = None) -> None:
        self.ex = executor
        self.audit = audit
        self.config = config or HealConfig()
        self.actions: dict[str, HealAction] = {}
        self.drained: dict[int, str] = {}  # node -> the drain action holding it out
        self.awaiting: dict[int, str] = {}  # node -> a drain waiting for an operator's approval
        self._drains: deque[float] = deque()  # times of drains inside the window
        self._follow: list[tuple[float, int, str]] = []  # (due t_s, node, drain action id): undrain when due
        self._ids = itertools.count(1)
        self._alert_id = ""  # the alert being acted on, recorded with each action
        self.errors = 0

    @property
    def drain_limit(self) -> int:
        return max(1, math.floor(self.config.max_drain_fraction * self.ex.n_nodes))

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
        if node < 0:
            return out
        if node in self.drained:
            return out  # one plan per node at a time: the node is already out of the pool
        if node in self.awaiting:
            return out  # already waiting for an operator
        self._expire_window(t)
        if len(self._drains) >= self.drain_limit:
            a = self._new(
                t,
                "drain_node",
                f"node/{node}",
                reason,
                node=node,
                plan=plan,
                gpu=gpu,
                limit=f"{self.drain_limit} drains per {self.config.drain_window_s:.0f} s",
            )
            a.status = "awaiting_approval"
            self.awaiting[node] = a.id
            self._audit(a)
            return [a]
        return self._drain_and_fix(plan, gpu, node, reason, t)

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
            r = self._new(
                t, "reset_gpu", f"gpu/{gpu}", reason, gpu=gpu, before="faulted", after="reset" if ok else "failed"
            )
            r.status = "done" if ok else "failed"
            self._audit(r)
            out.append(r)
            self._follow.append((t + self.config.reset_s, node, d.id))
        elif plan == "reboot_node":
            ok = self.ex.reboot_node(node, t)
            r = self._new(
                t,
                "reboot_node",
                f"node/{node}",
                reason,
                node=node,
                before="faulted",
                after="rebooted" if ok else "failed",
            )
            r.status = "done" if ok else "failed"
            self._audit(r)
            out.append(r)
            self._follow.append((t + self.config.reboot_s, node, d.id))
        # drain_node alone (hardware check): stays drained until an operator reverts it.
        return out

    def _expire_window(self, t: float) -> None:
        while self._drains and t - self._drains[0] >= self.config.drain_window_s:
            self._drains.popleft()

    def tick(self, now_s: float) -> list[HealAction]:
        """Due follow-ups: nodes whose reset or reboot is over return to the pool."""
        due = [f for f in self._follow if f[0] <= now_s]
        self._follow = [f for f in self._follow if f[0] > now_s]
        out = []
        for _, node, drain_id in due:
            if self.drained.get(node) == drain_id:
                out.append(self._undrain(node, drain_id, now_s, self.ACTOR, "repair finished"))
        return out

    def _undrain(self, node: int, drain_id: str, t: float, actor: str, reason: str) -> HealAction:
        self.ex.undrain_node(node, t)
        self.drained.pop(node, None)
        self.actions[drain_id].status = "reverted"
        u = self._new(
            t,
            "undrain_node",
            f"node/{node}",
            reason,
            node=node,
            reverts=drain_id,
            before="drained",
            after="schedulable",
            inverse="drain_node",
        )
        self._audit(u, actor=actor)
        return u

    # --------------------------------------------------------------------------------- operators

    def approve(self, action_id: str, by: str, now_s: float) -> list[HealAction]:
        """An operator lets a drain past the rate limit go ahead."""
        a = self.actions.get(action_id)
        if a is None or a.status != "awaiting_approval":
            return []
        a.status = "approved"
        self.audit.write(by, "approve", a.target, {"action_id": a.id}, t_s=now_s)
        node = int(a.detail["node"])
        self.awaiting.pop(node, None)
        if node in self.drained:
            return []
        return self._drain_and_fix(str(a.detail["plan"]), int(a.detail.get("gpu", -1)), node, a.reason, now_s)

    def revert(self, action_id: str, by: str, now_s: float) -> HealAction | None:
        """Undo a drain (the node returns to the pool). Other actions have nothing to undo."""
        a = self.actions.get(action_id)
        if a is None or a.kind != "drain_node" or a.status != "done":
            return None
        node = int(a.detail["node"])
        if self.drained.get(node) != action_id:
            return None
        self._follow = [f for f in self._follow if f[2] != action_id]
        return self._undrain(node, action_id, now_s, by, f"operator {by} reverted {action_id}")

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for a in self.actions.values():
            kinds[f"{a.kind}:{a.status}"] = kinds.get(f"{a.kind}:{a.status}", 0) + 1
        return {"actions": kinds, "drained_nodes": sorted(self.drained), "drain_limit": self.drain_limit}
