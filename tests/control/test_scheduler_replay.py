"""Trace replay: a tiny trace with exact answers, the `schedule replay` command, and the real openb trace."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from powerplane.control.scheduler.cli import app
from powerplane.control.scheduler.replay import load_openb, offered_load, replay

REPO = Path(__file__).resolve().parents[2]
OPENB = REPO / "src" / "powerplane" / "data" / "alibaba_openb_pod_list_default.csv"

POD_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"
)
PODS = [
    "p0,1000,1024,1,1000,,LS,Running,0,100,0",  # whole GPU, 100 s
    "p1,1000,1024,2,1000,,BE,Running,10,60,10",  # both GPUs, 50 s: blocks a FIFO queue
    "p2,1000,1024,1,500,,LS,Running,20,50,20",  # half a GPU, 30 s
    "p4,1000,1024,4,1000,,LS,Pending,30,40,",  # 4 GPUs on a 2-GPU pool: rejected
    "p5,1000,1024,0,0,,BE,Running,30,90,30",  # CPU only: not a GPU pod
    "p3,1000,1024,1,100,,BE,Running,40,50,40",  # a tenth of a GPU, 10 s
]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "alibaba_openb_node_list_gpu_node.csv").write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,2,T4\n")
    trace = tmp_path / "pods.csv"
    trace.write_text("\n".join([POD_HEADER, *PODS]) + "\n")
    return trace


def _tiny_report(trace: Path) -> dict:
    return replay(trace, speedup=1.0, pool_scale=1.0, start_quantile=0.0, bin_s=20.0, frag_samples=5)


def test_tiny_trace_exact(tiny: Path) -> None:
    r = _tiny_report(tiny)
    assert r["gpu_pods"] == 5 and r["cpu_only_pods_skipped"] == 1
    assert r["pool"] == {"nodes": 1, "gpus": 2, "gpus_by_model": {"T4": 2}}
    ours, fifo = r["runs"]["ours"], r["runs"]["fifo_first_fit"]
    # FIFO: p1 (2 GPUs) waits for p0 until 100 and holds p2 and p3 behind it; ours starts p2 at 20 and p3 at 40.
    assert fifo["alloc_rate_series"] == [0.5, 0.5] and fifo["alloc_rate_avg"] == 0.5
    assert ours["alloc_rate_series"] == [0.5, 0.75] and ours["alloc_rate_avg"] == 0.625
    assert r["comparison"]["alloc_rate_points"] == pytest.approx(12.5)
    assert ours["queue_delay_s"]["core"]["mean"] == 0.0 and fifo["queue_delay_s"]["core"]["mean"] == 65.0
    assert ours["queue_delay_s"]["low"]["mean"] == 45.0 and fifo["queue_delay_s"]["low"]["mean"] == 100.0
    for run in (ours, fifo):
        assert run["completed"] == 4 and run["rejected"] == 1
        assert run["rejected_reasons"] == {"needs 4 GPUs, the pool has 2": 1}
        assert run["preemptions"] == 0
    assert ours["makespan_s"] == 150.0 and fifo["makespan_s"] == 180.0  # FIFO: p2 runs 150-180


def test_load_knobs() -> None:
    real = load_openb(OPENB)
    fast = load_openb(OPENB, speedup=300.0, start_quantile=0.01)
    assert len(real) == len(fast) == 7064 and real.n_cpu_only == 1088
    assert (real.runtime_s == fast.runtime_s).all()  # lifetimes are kept
    span_real = real.arrival_s.max() - real.arrival_s.min()
    assert fast.arrival_s.max() - fast.arrival_s.min() < span_real / 300.0
    assert offered_load(real, 6212 * 1000) < 0.01  # the trace as recorded barely loads its own cluster


def test_cli_replay_json(tiny: Path) -> None:
    runner = CliRunner()
    args = ["replay", str(tiny), "--speedup", "1", "--pool-scale", "1", "--start-quantile", "0", "--bin", "20s"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert set(doc["runs"]) == {"ours", "fifo_first_fit"}
    assert doc["comparison"]["alloc_rate_points"] == pytest.approx(12.5)
    for key in ("alloc_rate_series", "alloc_rate_avg", "fragmentation_avg", "queue_delay_s", "preemptions"):
        assert key in doc["runs"]["fifo_first_fit"]
    table = runner.invoke(app, [*args, "--policy", "spread"])
    assert table.exit_code == 0 and "fifo_first_fit" in table.output and "points vs FIFO" in table.output


def test_cli_errors(tiny: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["replay", str(tiny.parent / "missing.csv")])
    assert res.exit_code == 2 and "no such trace file" in res.output
    res = runner.invoke(app, ["replay", str(tiny), "--policy", "random"])
    assert res.exit_code == 2 and "unknown policy 'random'" in res.output
    res = runner.invoke(app, ["replay", str(tiny), "--qos-map", "LS"])
    assert res.exit_code == 2 and "not QOS=class" in res.output


@pytest.mark.slow
def test_openb_replay_beats_fifo_first_fit() -> None:
    r = replay(OPENB)
    ours, fifo = r["runs"]["ours"], r["runs"]["fifo_first_fit"]
    assert r["gpu_pods"] == 7064 and r["offered_load"] > 1.0
    for run in (ours, fifo):
        assert run["completed"] == 7064 and run["rejected"] == 0
        assert all(0.0 <= x <= 1.0 for x in run["alloc_rate_series"])
    assert r["comparison"]["alloc_rate_points"] >= 10.0
    assert ours["queue_delay_s"]["core"]["mean"] < fifo["queue_delay_s"]["core"]["mean"]
    assert ours["queue_delay_s"]["core"]["p95"] < fifo["queue_delay_s"]["core"]["p95"]
    assert ours["fragmentation_avg"] < fifo["fragmentation_avg"]
    assert fifo["preemptions"] == 0 and ours["preemptions"] > 0
