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
