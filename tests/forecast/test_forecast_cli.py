"""`powerplane forecast backtest` end to end on a real (short) twin run, and the Azure trace backtest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from powerplane.cli import app
from powerplane.forecast.registry import Registry
from powerplane.forecast.traces import DATA_DIR, backtest_traces


@pytest.mark.slow
def test_backtest_cli_writes_metrics_plots_and_registers(tmp_path: Path) -> None:
    out, reg = tmp_path / "bt", tmp_path / "registry.duckdb"
    args = [
        "forecast",
        "backtest",
        "--scenario",
        "small",
        "--days",
        "2",
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
        "--no-traces",
        "--register",
        "--registry",
        str(reg),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "backtest.json").read_text())
    run = doc["runs"][0]
    for model in ("job-aware", "persistence", "autoets", "lightgbm"):
        cell = run["metrics"][model]["15min"]
        assert cell["n"] > 50
        assert {"mae_w", "mape_pct", "mase", "pinball_w", "coverage_p10_p90"} <= set(cell)
    # a two-day run is too short for the 24-hour horizon, for seasonal naive and MSTL: not scored, not faked
    assert run["metrics"]["seasonal-naive"]["15min"]["n"] == 0
    assert run["metrics"]["job-aware"]["24h"] == {"n": 0}
    assert "mstl" not in run["metrics"]
    assert run["metrics"]["job-aware"]["15min"]["mae_w"] < run["metrics"]["persistence"]["15min"]["mae_w"]
    assert list(out.glob("bands_*.png"))
    assert doc["registered"] == "v1.0.0" and Registry(reg).alias("champion") == "v1.0.0"
    meta = Registry(reg).show("champion").metadata
    assert {"training_window", "features", "hyperparameters", "data_hash", "backtest"} <= set(meta)
    # the cached twin run is reused; an existing output is refused without --force
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "exists" in res.output


@pytest.mark.skipif(not DATA_DIR.exists(), reason="shared data not present")
def test_azure_trace_backtest() -> None:
    res = backtest_traces()
    for name, r in res.items():
        assert "metrics" in r, (name, r)
        cell = r["metrics"]["persistence"]["10s"]
        assert cell["n"] > 100 and cell["mae_tokens_per_s"] > 0 and 0.0 <= cell["coverage_p10_p90"] <= 1.0


def _run_doc(name: str, ja: float, ets: float, cov: float, ev: float) -> dict[str, object]:
    def cell(mase: float, c: float) -> dict[str, float]:
        return {"n": 10, "mae_w": 1e3 * mase, "mape_pct": 1.0, "mase": mase, "pinball_w": 1.0, "coverage_p10_p90": c}

    horizons = ("1min", "15min", "1h", "24h")
    return {
        "run": name,
        "metrics": {
            "job-aware": {h: cell(ja, cov) for h in horizons},
            "autoets": {h: cell(ets, 0.9) for h in horizons},
        },
        "events_1min": {"n": 5, "reduction_pct": ev},
    }


def test_backtests_run_apart_merge_into_one_summary(tmp_path: Path) -> None:
    for k, (ja, ets, cov, ev) in enumerate(((0.4, 1.0, 0.8, 60.0), (0.2, 0.5, 0.76, 40.0))):
        d = tmp_path / f"part{k}"
        d.mkdir()
        doc = {"runs": [_run_doc(f"r{k}", ja, ets, cov, ev)], "run_dirs": [f"runs/r{k}"]}
        (d / "backtest.json").write_text(json.dumps(doc))
        (d / f"bands_r{k}.png").write_bytes(b"png")
    out = tmp_path / "all"
    args = ["forecast", "backtest", "--seeds", "0", "--no-traces", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--merge", str(tmp_path / "part0"), "--merge", str(tmp_path / "part1")])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "backtest.json").read_text())
    assert doc["run_dirs"] == ["runs/r0", "runs/r1"] and [r["run"] for r in doc["runs"]] == ["r0", "r1"]
    tg = doc["targets"]
    assert tg["mase_15min"] == pytest.approx(0.3) and tg["best_statsforecast_mase_15min"] == pytest.approx(0.75)
    assert tg["reduction_vs_best_statsforecast_pct"] == pytest.approx(60.0)
    assert tg["coverage_15min"] == pytest.approx(0.78) and tg["coverage_in_75_85"] is True
    assert tg["events_1min_reduction_vs_persistence_pct"] == pytest.approx(50.0)
    assert sorted(p.name for p in out.glob("bands_*.png")) == ["bands_r0.png", "bands_r1.png"]
    res = CliRunner().invoke(app, [*args, "--force", "--merge", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no backtest.json" in res.output
