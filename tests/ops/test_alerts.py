"""The alert rule engine: expressions, rule files, for/clear/keep_firing_for, inhibition, ack and silence."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from powerplane.config import load_scenario
from powerplane.core.frames import Frame
from powerplane.ops.alerts import AlertEngine
from powerplane.ops.audit import AuditLog
from powerplane.ops.expr import ExprError, compile_expr
from powerplane.ops.rules import RuleFileError, load_rule_file
from powerplane.telemetry.tracker import Tracker
from powerplane.topology import Topology

T0 = 1_732_390_200.0


@pytest.fixture(scope="module")
def small() -> tuple[Any, Topology]:
    site, _ = load_scenario("small")
    return site, Topology.from_site(site)


class Feed:
    """Frames for the small site with chosen readings, through the real Tracker."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.tracker = Tracker(topo)
        self.t = T0
        n = topo.n_gpus
        self.gpu: dict[str, Any] = {
            "power_w": np.full(n, 500.0),
            "temp_c": np.full(n, 60.0),
            "xid_total": np.zeros(n),
            "last_xid": np.zeros(n),
            "pcie_replay_total": np.zeros(n),
        }
        self.node: dict[str, Any] = {"power_w": np.full(topo.n_nodes, 5000.0)}
        self.rack: dict[str, Any] = {
            "power_w": np.full(topo.n_racks, 20000.0),
            "inlet_temp_c": np.full(topo.n_racks, 25.0),
        }
        self.site: dict[str, Any] = {"frequency_hz": np.array([50.0])}
        self.bess: dict[str, Any] = {"power_w": np.zeros(1), "soc": np.array([0.6])}

    def snap(self, dt: float = 1.0) -> Any:
        self.t += dt
        levels = {
            "gpu": {k: np.array(v) for k, v in self.gpu.items()},
            "node": {k: np.array(v) for k, v in self.node.items()},
            "rack": {k: np.array(v) for k, v in self.rack.items()},
            "site": dict(self.site),
            "bess": {k: np.array(v) for k, v in self.bess.items()},
        }
        return self.tracker.ingest(Frame(self.t, "test", levels))


def engine(site: Any, topo: Topology, text: str, audit: AuditLog | None = None) -> AlertEngine:
    return AlertEngine(load_rule_file(text=text), topo, site, audit)


RULES = """
groups:
  - name: t
    rules:
      - alert: Hot
        expr: gpu.temp_c > gpu.slowdown_temp_c - 5
        clear: gpu.temp_c < gpu.slowdown_temp_c - 8
        for: 3s
        severity: warning
        annotations: {summary: "{target} at {value:.1f}"}
      - alert: VeryHot
        expr: gpu.temp_c >= gpu.slowdown_temp_c
        severity: critical
      - alert: Replays
        expr: rate(gpu.pcie_replay_total) * 60 > 8
        keep_firing_for: 2s
        severity: warning
      - alert: InletHot
        expr: gpu.temp_c > 40 and rack.inlet_temp_c > 32
        severity: warning
"""


def transitions(out: list[dict[str, Any]], rule: str) -> list[tuple[str, int]]:
    return [(t["transition"], int(t["id"].rsplit(":", 1)[1])) for t in out if t["rule"] == rule]


def test_for_duration_and_hysteresis(small: Any) -> None:
    site, topo = small
    f, eng = Feed(topo), engine(site, topo, RULES)
    slow = eng.static["gpu"]["slowdown_temp_c"][7]
    f.gpu["temp_c"][7] = slow - 4  # inside the margin
    assert transitions(eng.evaluate(f.snap(), {}), "Hot") == [("pending", 7)]
    assert transitions(eng.evaluate(f.snap(), {}), "Hot") == []
    assert transitions(eng.evaluate(f.snap(), {}), "Hot") == []
    out = eng.evaluate(f.snap(), {})  # 3 s after it became true
    assert transitions(out, "Hot") == [("firing", 7)]
    hot = next(t for t in out if t["rule"] == "Hot")
    assert hot["severity"] == "warning" and hot["value"] == pytest.approx(slow - 4)
    assert hot["labels"]["node"] == topo.node_names[topo.gpu_node[7]]
    assert hot["annotations"]["summary"] == f"{topo.gpu_uuids[7]} at {slow - 4:.1f}"
    f.gpu["temp_c"][7] = slow - 6  # below the trigger but not below the clear level: still firing
    assert transitions(eng.evaluate(f.snap(), {}), "Hot") == []
    assert [a["state"] for a in eng.active() if a["rule"] == "Hot"] == ["firing"]
    f.gpu["temp_c"][7] = slow - 9
    assert transitions(eng.evaluate(f.snap(), {}), "Hot") == [("resolved", 7)]
    # A pending alert that turns false before its `for` is dropped, never fires.
    f.gpu["temp_c"][3] = slow - 4
    assert transitions(eng.evaluate(f.snap(), {}), "Hot") == [("pending", 3)]
    f.gpu["temp_c"][3] = 60.0
    assert transitions(eng.evaluate(f.snap(), {}), "Hot") == [("resolved", 3)]
    assert [a["id"] for a in eng.active() if a["rule"] == "Hot"] == ["Hot:gpu:7"]  # the dropped one is gone


def test_inhibition_ack_and_silence(small: Any) -> None:
    site, topo = small
    audit = AuditLog(None)
    f, eng = Feed(topo), engine(site, topo, RULES, audit)
    slow = eng.static["gpu"]["slowdown_temp_c"][2]
    f.gpu["temp_c"][2] = slow + 1
    for _ in range(4):
        eng.evaluate(f.snap(), {})
    by_rule = {a["rule"]: a for a in eng.active()}
    assert by_rule["VeryHot"]["state"] == "firing" and not by_rule["VeryHot"]["inhibited"]
    assert by_rule["Hot"]["state"] == "firing" and by_rule["Hot"]["inhibited"]  # critical mutes warning
    assert eng.is_muted(by_rule["Hot"]["id"]) and not eng.is_muted(by_rule["VeryHot"]["id"])
    assert eng.acknowledge(by_rule["VeryHot"]["id"], "alice")
    assert not eng.acknowledge("NoSuch:gpu:1", "alice")
    assert next(a for a in eng.active() if a["rule"] == "VeryHot")["acknowledged_by"] == "alice"
    sid = eng.silence({"alertname": "VeryHot"}, 60.0, "bob", "maintenance")
    assert next(a for a in eng.active() if a["rule"] == "VeryHot")["silenced"]
    assert eng.unsilence(sid, "bob") and not eng.unsilence(sid, "bob")
    assert not next(a for a in eng.active() if a["rule"] == "VeryHot")["silenced"]
    with pytest.raises(ValueError, match="positive duration"):
        eng.silence({"alertname": "VeryHot"}, -1, "bob")
    actions = [r["action"] for r in audit.records()]
    assert actions == ["acknowledge", "silence", "unsilence"]
    # A silence expires on the engine's clock.
    eng.silence({"target": topo.gpu_uuids[2]}, 2.0, "bob")
    eng.evaluate(f.snap(), {})
    assert all(a["silenced"] for a in eng.active() if a["state"] != "resolved")
    eng.evaluate(f.snap(), {})
    eng.evaluate(f.snap(), {})
    assert not any(a["silenced"] for a in eng.active())


def test_rate_keep_firing_and_parent_lift(small: Any) -> None:
    site, topo = small
    f, eng = Feed(topo), engine(site, topo, RULES)
    eng.evaluate(f.snap(), {})
    f.gpu["pcie_replay_total"][5] += 10  # 10 per second = 600 per minute
    assert transitions(eng.evaluate(f.snap(), {}), "Replays") == [("firing", 5)]
    assert transitions(eng.evaluate(f.snap(), {}), "Replays") == []  # quiet, kept firing for 2 s
    assert transitions(eng.evaluate(f.snap(), {}), "Replays") == []
    assert transitions(eng.evaluate(f.snap(), {}), "Replays") == [("resolved", 5)]
    # rack-level reading gathered down to the GPUs of that rack.
    rack = 1
    f.rack["inlet_temp_c"][rack] = 34.0
    out = transitions(eng.evaluate(f.snap(), {}), "InletHot")
    gpus_of_rack = np.flatnonzero(topo.parent_index("gpu", "rack") == rack)
    assert sorted(i for _, i in out) == gpus_of_rack.tolist()


def test_unknown_metric_and_invalid_readings_never_fire(small: Any) -> None:
    site, topo = small
    f = Feed(topo)
    eng = engine(
        site,
        topo,
        """
groups:
  - name: t
    rules:
      - {alert: Nvlink, expr: rate(gpu.nvlink_crc_total) > 100, severity: warning}
      - {alert: Cold, expr: gpu.temp_c < 0, severity: warning}
      - {alert: Lag, expr: context.cycle_lag_s > 2, severity: warning}
""",
    )
    f.gpu["temp_c"][0] = np.nan  # invalid reading: unknown, not a breach
    out = eng.evaluate(f.snap(), {})
    assert out == []
    status = {r["rule"]: r for r in eng.rule_status()}
    assert status["Nvlink"]["unknown_cycles"] == 1 and status["Nvlink"]["unknown_ref"] == "gpu.nvlink_crc_total"
    assert eng.evaluate(f.snap(), {"cycle_lag_s": 3.0})[0]["rule"] == "Lag"


def test_expression_whitelist(small: Any) -> None:
    _, topo = small
    for bad in (
        "__import__('os').system('true')",
        "gpu.temp_c[0] > 1",
        "(lambda: 1)()",
        "gpu.temp_c > 'x'",
        "nosuch.temp_c > 1",
        "gpu.temp_c if 1 else 2",
        "open('f')",
    ):
        with pytest.raises(ExprError):
            compile_expr(bad, topo)
    with pytest.raises(ExprError, match="column"):
        compile_expr("gpu.temp_c >> 2", topo)
    assert compile_expr("rack.gpu.temp_c.max > 80", topo).level == "rack"
    assert compile_expr("gpu.temp_c > rack.inlet_temp_c + 40", topo).level == "gpu"
    assert compile_expr("context.t_s > 0", topo).level == "site"


def test_rule_file_errors_name_the_rule(tmp_path: Any) -> None:
    with pytest.raises(RuleFileError, match="rule 'X' field severity"):
        load_rule_file(text="groups: [{name: g, rules: [{alert: X, expr: 'gpu.temp_c > 1', severity: loud}]}]")
    with pytest.raises(RuleFileError, match="not a duration"):
        load_rule_file(text="groups: [{name: g, rules: [{alert: X, expr: 'x > 1', severity: warning, for: soon}]}]")
    with pytest.raises(RuleFileError, match="no such rule file"):
        load_rule_file(tmp_path / "none.yaml")
    with pytest.raises(RuleFileError, match="repeated"):
        load_rule_file(
            text="groups: [{name: g, rules: [{alert: X, expr: '1', severity: warning},"
            " {alert: X, expr: '1', severity: warning}]}]"
        )
    rf = load_rule_file()
    assert len(rf.rules()) >= 20
    assert {r.severity for r in rf.rules()} == {"warning", "critical", "emergency"}


def test_default_rules_compile_on_every_scenario() -> None:
    for name in ("small", "texas", "qingyang"):
        site, _ = load_scenario(name)
        eng = AlertEngine.with_default_rules(site, Topology.from_site(site))
        assert {r["level"] for r in eng.rule_status()} >= {"gpu", "node", "rack", "hall", "bess", "site"}


def test_default_rules_on_facility_faults(small: Any) -> None:
    site, topo = small
    f = Feed(topo)
    eng = AlertEngine.with_default_rules(site, topo)
    contract_w = site.electrical.contract_demand_kw * 1e3
    ctx = {"demand_15min_w": 0.5 * contract_w, "contract_w": contract_w, "source_age_s": 0.2, "islanded": 0.0}
    eng.evaluate(f.snap(), ctx)
    f.site["frequency_hz"] = np.array([49.3])
    f.rack["inlet_temp_c"][0] = 38.0
    f.gpu["power_w"][9] = np.nan  # a GPU that stopped answering while its node reports
    f.rack["power_w"][3] = 1.3 * eng.static["rack"]["limit_w"][3]  # PDU overload
    f.bess["soc"] = np.array([np.nan])  # the battery stops answering (fault or lost link)
    ctx.update(demand_15min_w=1.01 * contract_w, source_age_s=9.0, islanded=1.0)
    fired: set[str] = set()
    for _ in range(32):
        fired |= {t["rule"] for t in eng.evaluate(f.snap(), ctx) if t["transition"] == "firing"}
    assert {
        "GridFrequencyExcursion",
        "GridFrequencySevere",
        "CoolingHotSpot",
        "RackInletHot",
        "GpuFallenOffBus",
        "DemandOverContract",
        "SourceStale",
        "Islanded",
        "RackPduOverload",
        "BessNotReporting",
    } <= fired
    hot = next(a for a in eng.active() if a["rule"] == "RackInletHot")
    assert hot["inhibited"] and hot["labels"]["cooling_unit"] == str(int(topo.rack_cooling_unit[0]))
