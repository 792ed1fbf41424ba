"""The alert rule engine: rules over telemetry evaluated every cycle, vectorized over entities.

Each rule compiles once (:mod:`powerplane.ops.expr`) to a boolean array over its level's entities; the
pending/firing state of every (rule, entity) pair lives in arrays, so a cycle over 10,240 GPUs is a handful of
vector operations per rule, and a rule with nothing true and nothing active costs one ``any()``. Only the entities
that change state become Python objects (alerts).

Semantics, in the Prometheus/Alertmanager manner:
- an entity whose expression is true becomes *pending*, then *firing* once it has been true for ``for``;
- a firing alert resolves when its ``clear`` expression holds (hysteresis; by default: the expression is false)
  and has held for ``keep_firing_for``; a pending one that turns false is dropped (reported as resolved);
- inhibition: a firing alert matching an inhibit rule's ``source_match`` mutes active alerts matching its
  ``target_match`` that share the ``equal`` labels (default: critical mutes warning on the same target);
- silences (label matchers for a duration) and acknowledgements mute notification, never evaluation;
- grouping and repeat intervals are the router's (:mod:`powerplane.ops.notify`), read from the rule file.

A rule whose references the snapshot lacks (a metric this source does not report, a context key the runtime did
not give) is *unknown* for that cycle: its state is kept and the cycle is counted, nothing fires.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.core.clock import perf_counter_s
from powerplane.ops import xid as xidlib
from powerplane.ops.audit import AuditLog
from powerplane.ops.expr import LEVEL_ORDER, Compiled, Env, ExprError, Unknown, compile_expr
from powerplane.ops.rules import RuleFile, RuleSpec, load_rule_file
from powerplane.physics import gpu_power
from powerplane.telemetry.snapshot import Snapshot
from powerplane.topology import Topology

F64 = NDArray[np.float64]
B = NDArray[np.bool_]
PDU_RATING_FACTOR = 1.25


def static_facts(site: SiteConfig | None, topo: Topology) -> dict[str, dict[str, F64]]:
    """Per-entity constants the rules may read like readings: limits and model data."""
    profiles = [gpu_power.GPU_PROFILES.get(m) for m in topo.gpu_models]

    def per_gpu(attr: str, default: float) -> F64:
        table = np.array([getattr(p, attr) if p is not None else default for p in profiles], dtype=np.float64)
        return np.asarray(table[topo.gpu_model_idx], dtype=np.float64)

    peak = per_gpu("peak_w", 1000.0)
    node_base = np.array([p.node_base_w if p else 1500.0 for p in profiles])[topo.gpu_model_idx]
    node_share = np.array([p.node_gpu_share if p else 0.45 for p in profiles])[topo.gpu_model_idx]
    gpn = np.bincount(topo.gpu_node, minlength=topo.n_nodes).astype(np.float64)
    node_peak = gpu_power.node_power_w(
        topo.rollup_sum(peak, "gpu", "node"),
        topo.rollup_sum(node_base, "gpu", "node") / np.maximum(gpn, 1),
        topo.rollup_sum(node_share, "gpu", "node") / np.maximum(gpn, 1),
    )
    facts: dict[str, dict[str, F64]] = {
        "gpu": {
            "slowdown_temp_c": per_gpu("slowdown_temp_c", 87.0),
            "shutdown_temp_c": per_gpu("shutdown_temp_c", 92.0),
            "tdp_w": per_gpu("tdp_w", 1000.0),
        },
        "node": {"limit_w": np.asarray(node_peak, dtype=np.float64)},
        # PDU rating: 125 % of the rack's design peak (breakers sized for continuous load at 80 %, NEC 210.20).
        "rack": {
            "limit_w": np.asarray(
                PDU_RATING_FACTOR * topo.rollup_sum(np.asarray(node_peak, dtype=np.float64), "node", "rack"),
                dtype=np.float64,
            )
        },
        "hall": {"busbar_limit_w": np.asarray(topo.hall_busbar_limit_w, dtype=np.float64)},
        "site": {},
    }
    if site is not None:
        facts["site"] = {
            "contract_w": np.array([site.electrical.contract_demand_kw * 1e3]),
            "nominal_frequency_hz": np.array([float(site.grid.frequency_hz)]),
        }
        if site.bess:
            facts["bess"] = {
                "soc_min": np.array([u.soc_min for u in site.bess]),
                "soc_max": np.array([u.soc_max for u in site.bess]),
                "power_max_w": np.array([u.power_kw * 1e3 for u in site.bess]),
            }
    return facts


@dataclass
class Alert:
    id: str
    rule: str
    severity: str
    level: str
    entity: int
    state: str  # pending | firing | resolved
    since_s: float
    value: float
    labels: dict[str, str]
    annotations: dict[str, str]
    fired_s: float | None = None
    resolved_s: float | None = None
    acknowledged_by: str | None = None
    acknowledged_s: float | None = None
    silenced: bool = False
    inhibited: bool = False
    group_by: list[str] | None = None  # the rule's own grouping and repeat, for the notifier
    repeat_interval_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "severity": self.severity,
            "state": self.state,
            "acknowledged_by": self.acknowledged_by,
            "silenced": self.silenced,
            "inhibited": self.inhibited,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "since_s": self.since_s,
            "fired_s": self.fired_s,
            "resolved_s": self.resolved_s,
            "value": self.value if np.isfinite(self.value) else None,
            "group_by": self.group_by,
            "repeat_interval_s": self.repeat_interval_s,
        }


@dataclass
class Silence:
    id: str
    matchers: dict[str, str]
    starts_s: float
    ends_s: float
    by: str
    comment: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v or v == "*" for k, v in self.matchers.items())


@dataclass
class _RuleState:
    spec: RuleSpec
    expr: Compiled
    clear: Compiled | None
    level: str
    n: int
    since_s: F64 = field(init=False)  # when the expression became true (NaN: not pending/firing)
    firing: B = field(init=False)
    clear_since_s: F64 = field(init=False)  # first cycle a firing entity was clear (NaN: not clear)
    n_active: int = 0
    unknown_cycles: int = 0
    unknown_ref: str = ""
    errors: int = 0

    def __post_init__(self) -> None:
        self.since_s = np.full(self.n, np.nan)
        self.firing = np.zeros(self.n, dtype=bool)
        self.clear_since_s = np.full(self.n, np.nan)


class _Fmt(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class AlertEngine:
    """Evaluates a rule file over each cycle's snapshot. Thread-safe: the API acknowledges and silences."""

    def __init__(
        self,
        rules: RuleFile,
        topology: Topology,
        site: SiteConfig | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.rule_file = rules
        self.topo = topology
        self.site = site
        self.audit = audit or AuditLog(None)
        self.static = static_facts(site, topology)
        self._lock = threading.RLock()
        self._names: dict[str, list[str]] = {lv: topology.names(lv) for lv in LEVEL_ORDER}  # type: ignore[arg-type]
        if site is not None:
            self._names["bess"] = [u.name for u in site.bess]
        self.rules: list[_RuleState] = []
        for spec in rules.rules():
            try:
                expr = compile_expr(spec.expr, topology, spec.value)
                clear = compile_expr(spec.clear, topology) if spec.clear else None
            except ExprError as e:
                raise ExprError(f"rule {spec.alert!r}: {e}") from None
            level = expr.level
            if clear is not None and clear.level not in (level, "site"):
                raise ExprError(f"rule {spec.alert!r}: clear is over {clear.level!r}, expr over {level!r}")
            n = len(self._names.get(level, ())) if level != "site" else 1
            if level not in self._names:
                raise ExprError(f"rule {spec.alert!r}: level {level!r} has no entities on this site")
            self.rules.append(_RuleState(spec, expr, clear, level, n))
        self.alerts: dict[str, Alert] = {}
        self.silences: dict[str, Silence] = {}
        self.gpu_job: NDArray[np.int64] | None = None  # optional GPU -> job map for the ``job`` label
        self.now_s = float("nan")
        self.stats: Counter[str] = Counter()
        self.last_eval_ms = 0.0

    @classmethod
    def with_default_rules(cls, site: SiteConfig, topology: Topology, audit: AuditLog | None = None) -> AlertEngine:
        return cls(load_rule_file(), topology, site, audit)

    @classmethod
    def from_file(cls, path: str | Path, site: SiteConfig, topology: Topology) -> AlertEngine:
        return cls(load_rule_file(path), topology, site)

    # --------------------------------------------------------------------------------- evaluation

    def evaluate(self, snapshot: Snapshot, context: Mapping[str, float]) -> list[dict[str, Any]]:
        """Evaluate every rule on this cycle; returns the transitions (JSON-ready alert dicts + ``transition``)."""
        t0 = perf_counter_s()
        with self._lock:
            t = float(context.get("t_s", snapshot.t_s))
            self.now_s = t
            env = Env(self.topo, snapshot, context, self.static)
            changed: list[Alert] = []
            for rs in self.rules:
                try:
                    with np.errstate(all="ignore"):  # x / 0 and NaN are unknowns, never breaches or warnings
                        changed.extend(self._step(rs, env, t))
                except Unknown as e:
                    rs.unknown_cycles += 1
                    rs.unknown_ref = str(e)
                    self.stats["unknown"] += 1
                except Exception as e:  # one bad rule or reading is counted and reported; the others still run
                    self.stats[f"error:{rs.spec.alert}"] += 1
                    rs.errors += 1
                    if rs.errors == 1 or rs.errors % 1000 == 0:
                        self.audit.write("alert-engine", "rule_error", rs.spec.alert, {"error": repr(e)}, t_s=t)
            if changed:
                self._inhibit()
            self._expire(t)
            out = [dict(a.to_dict(), transition=a.state) for a in changed]
            self.stats["evaluations"] += 1
            self.stats["transitions"] += len(out)
        self.last_eval_ms = (perf_counter_s() - t0) * 1e3
        return out

    def _bool(self, rs: _RuleState, c: Compiled, env: Env) -> B:
        v = np.asarray(c.fn(env))
        if v.dtype != np.bool_:
            v = np.where(np.isnan(v), False, v != 0)
        return np.broadcast_to(v, (rs.n,)) if v.shape != (rs.n,) else v

    def _step(self, rs: _RuleState, env: Env, t: float) -> list[Alert]:
        cond = self._bool(rs, rs.expr, env)
        if rs.n_active == 0 and not cond.any():
            return []
        spec = rs.spec
        pending = ~np.isnan(rs.since_s)
        new_true = cond & ~pending
        rs.since_s[new_true] = t
        dropped = pending & ~cond & ~rs.firing
        rs.since_s[dropped] = np.nan
        to_fire = cond & ~rs.firing & (t - rs.since_s >= spec.for_s)
        resolve = np.zeros(rs.n, dtype=bool)
        if rs.firing.any():
            clear = self._bool(rs, rs.clear, env) if rs.clear is not None else ~cond
            # keep_firing_for counts from the first cycle the alert was clear (as Prometheus does).
            rs.clear_since_s[rs.firing & ~clear] = np.nan
            start = rs.firing & clear & np.isnan(rs.clear_since_s)
            rs.clear_since_s[start] = t
            resolve = rs.firing & clear & (t - rs.clear_since_s >= spec.keep_firing_for_s)
            rs.clear_since_s[resolve] = np.nan
            rs.firing[resolve] = False
            rs.since_s[resolve] = np.nan
        rs.firing[to_fire] = True
        # A new entity that fires at once (for: 0) is reported once, as firing.
        idx_new = np.flatnonzero(new_true & ~to_fire)
        idx_fire = np.flatnonzero(to_fire)
        idx_drop = np.flatnonzero(dropped)
        idx_res = np.flatnonzero(resolve)
        rs.n_active = int(np.count_nonzero(~np.isnan(rs.since_s) | rs.firing))
        if not (idx_new.size or idx_fire.size or idx_drop.size or idx_res.size):
            return []
        try:
            values = np.broadcast_to(np.asarray(rs.expr.value_fn(env), dtype=np.float64), (rs.n,))
        except (Unknown, ValueError, TypeError):
            values = np.full(rs.n, np.nan)
        changed: list[Alert] = []
        for i in idx_new.tolist():
            changed.append(self._open(rs, i, t, float(values[i]), "pending"))
        for i in idx_fire.tolist():
            a = self.alerts.get(self._id(rs, i))
            if a is None or a.state == "resolved":
                a = self._open(rs, i, t, float(values[i]), "firing")
            a.state, a.fired_s, a.value = "firing", t, float(values[i])
            a.annotations = self._annotate(rs, a)
            changed.append(a)
        for i in idx_drop.tolist():  # pending that never fired: reported once as resolved, then forgotten
            a = self.alerts.pop(self._id(rs, i), None)
            if a is not None:
                a.state, a.resolved_s, a.value = "resolved", t, float(values[i])
                changed.append(a)
        for i in idx_res.tolist():
            a = self.alerts.get(self._id(rs, i))
            if a is None:
                continue
            a.state, a.resolved_s, a.value = "resolved", t, float(values[i])
            changed.append(a)
        return changed

    def _id(self, rs: _RuleState, i: int) -> str:
        return f"{rs.spec.alert}:{rs.level}:{i}"

    def _open(self, rs: _RuleState, i: int, t: float, value: float, state: str) -> Alert:
        labels = self._labels(rs, i, value)
        a = Alert(self._id(rs, i), rs.spec.alert, rs.spec.severity, rs.level, i, state, t, value, labels, {})
        a.group_by, a.repeat_interval_s = rs.spec.group_by, rs.spec.repeat_interval_s
        if state == "firing":
            a.fired_s = t
        a.annotations = self._annotate(rs, a)
        a.silenced = self._silenced(labels, t)
        self.alerts[a.id] = a
        return a

    def _labels(self, rs: _RuleState, i: int, value: float) -> dict[str, str]:
        level = rs.level
        names = self._names.get(level, [self.topo.site_name])
        name = names[i] if i < len(names) else str(i)
        labels = {"alertname": rs.spec.alert, "severity": rs.spec.severity, "level": level, "target": name}
        if level in LEVEL_ORDER:
            for parent in LEVEL_ORDER[LEVEL_ORDER.index(level) + 1 : -1]:
                p = int(self.topo.parent_index_cached(level, parent)[i])  # type: ignore[arg-type]
                labels[parent] = self._names[parent][p]
        if level == "gpu":
            labels["gpu_index"] = str(i)
            labels["node_index"] = str(int(self.topo.gpu_node[i]))
            if self.gpu_job is not None and self.gpu_job.size > i and self.gpu_job[i] >= 0:
                labels["job"] = str(int(self.gpu_job[i]))
        elif level == "node":
            labels["node_index"] = str(i)
        elif level == "rack":
            labels["cooling_unit"] = str(int(self.topo.rack_cooling_unit[i]))
        labels.update(rs.spec.labels)
        if labels.get("heal") == "xid" and np.isfinite(value):
            info = xidlib.xid_info(int(value))
            labels["xid"] = str(int(value))
            labels["action"] = str(xidlib.action_for(int(value)))
            labels["xid_name"] = info.name
        return labels

    def _annotate(self, rs: _RuleState, a: Alert) -> dict[str, str]:
        fmt = _Fmt(a.labels)
        fmt["value"] = a.value
        out = {}
        for k, tmpl in rs.spec.annotations.items():
            try:
                out[k] = tmpl.format_map(fmt)
            except (ValueError, TypeError, KeyError, IndexError):
                out[k] = tmpl
        return out

    def _inhibit(self) -> None:
        """Recompute which active alerts are muted by a firing one (only after a cycle with changes)."""
        live = [a for a in self.alerts.values() if a.state != "resolved"]
        for a in live:
            a.inhibited = False
        for rule in self.rule_file.inhibit_rules:
            sources = {
                tuple(a.labels.get(k, "") for k in rule.equal)
                for a in live
                if a.state == "firing" and all(a.labels.get(k) == v for k, v in rule.source_match.items())
            }
            if not sources:
                continue
            for a in live:
                target = all(a.labels.get(k) == v for k, v in rule.target_match.items())
                if target and tuple(a.labels.get(k, "") for k in rule.equal) in sources:
                    a.inhibited = True

    def _expire(self, t: float) -> None:
        keep = self.rule_file.defaults.resolved_retention_s
        gone = [k for k, a in self.alerts.items() if a.state == "resolved" and t - (a.resolved_s or t) > keep]
        for k in gone:
            del self.alerts[k]
        ended = [k for k, s in self.silences.items() if s.ends_s <= t]
        for k in ended:
            s = self.silences.pop(k)
            self.audit.write("alert-engine", "silence_expired", k, {"matchers": s.matchers}, t_s=t)
        if ended:
            self._resilence(t)

    # --------------------------------------------------------------------------------- operator API

    def active(self) -> list[dict[str, Any]]:
        """Pending, firing and recently resolved alerts, most severe and newest first."""
        from powerplane.ops.rules import SEVERITY_RANK

        with self._lock:
            alerts = sorted(
                self.alerts.values(),
                key=lambda a: (a.state == "resolved", -SEVERITY_RANK[a.severity], -a.since_s),
            )
            return [a.to_dict() for a in alerts]

    def get(self, alert_id: str) -> Alert | None:
        with self._lock:
            return self.alerts.get(alert_id)

    def acknowledge(self, alert_id: str, by: str) -> bool:
        with self._lock:
            a = self.alerts.get(alert_id)
            if a is None or a.state == "resolved" or not by:
                return False
            before = a.acknowledged_by
            a.acknowledged_by, a.acknowledged_s = by, self.now_s
            self.audit.write(by, "acknowledge", alert_id, {"before": before, "after": by}, t_s=self.now_s)
            return True

    def silence(self, matchers: dict[str, str], duration_s: float, by: str, comment: str = "") -> str:
        if not matchers or not all(isinstance(k, str) and isinstance(v, str) for k, v in matchers.items()):
            raise ValueError("a silence needs at least one label matcher (label -> value)")
        if not (np.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"a silence needs a positive duration, got {duration_s}")
        if not by:
            raise ValueError("a silence needs the name of who sets it")
        with self._lock:
            now = self.now_s if np.isfinite(self.now_s) else 0.0
            s = Silence(uuid.uuid4().hex[:12], dict(matchers), now, now + float(duration_s), by, comment)
            self.silences[s.id] = s
            self._resilence(now)
            self.audit.write(by, "silence", s.id, {"matchers": matchers, "duration_s": duration_s, "comment": comment})
            return s.id

    def unsilence(self, silence_id: str, by: str) -> bool:
        with self._lock:
            s = self.silences.pop(silence_id, None)
            if s is None:
                return False
            self._resilence(self.now_s)
            self.audit.write(by, "unsilence", silence_id, {"matchers": s.matchers})
            return True

    def silence_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "id": s.id,
                    "matchers": s.matchers,
                    "starts_s": s.starts_s,
                    "ends_s": s.ends_s,
                    "by": s.by,
                    "comment": s.comment,
                }
                for s in self.silences.values()
            ]

    def is_muted(self, alert_id: str) -> bool:
        """True when notification of this alert is held back (silenced, inhibited or acknowledged)."""
        with self._lock:
            a = self.alerts.get(alert_id)
            return a is None or a.silenced or a.inhibited or a.acknowledged_by is not None

    def _silenced(self, labels: Mapping[str, str], t: float) -> bool:
        return any(s.starts_s <= t < s.ends_s and s.matches(labels) for s in self.silences.values())

    def _resilence(self, t: float) -> None:
        for a in self.alerts.values():
            a.silenced = self._silenced(a.labels, t)

    def rule_status(self) -> list[dict[str, Any]]:
        """Per rule: level, entities, active count, unknown cycles (and the missing reference)."""
        with self._lock:
            return [
                {
                    "rule": rs.spec.alert,
                    "severity": rs.spec.severity,
                    "level": rs.level,
                    "entities": rs.n,
                    "active": rs.n_active,
                    "unknown_cycles": rs.unknown_cycles,
                    "unknown_ref": rs.unknown_ref,
                    "errors": rs.errors,
                }
                for rs in self.rules
            ]
