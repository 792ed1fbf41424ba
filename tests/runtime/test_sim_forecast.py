"""simulate --policy mpc --forecast: the job-aware forecaster fed from the twin's blocks plans the IT load."""

import json
from pathlib import Path

import pytest

from powerplane.forecast.live import REGISTRY_FILE, prior_model
from powerplane.forecast.registry import Registry
from powerplane.runtime.sim_forecast import choose
from powerplane.runtime.simulate import SimulateOptions, simulate


def _registry(tmp_path: Path) -> tuple[Path, str]:
    reg = Registry(tmp_path / REGISTRY_FILE)
    model = prior_model(1e6)
    v = reg.register("job-aware", model.to_bytes(), model.meta, t_s=0.0)
    reg.promote(v, t_s=0.0)
    return tmp_path, v


def test_choose_the_planners_forecast(tmp_path: Path) -> None:
    assert choose("persistence", tmp_path) == ("persistence", None)
    assert choose("auto", tmp_path) == ("persistence", None)  # no registry: persistence, as before the forecaster
    assert choose("auto", None) == ("persistence", None)
    assert choose("champion", tmp_path) == ("champion", None)  # no registry: the untrained prior
    with pytest.raises(ValueError, match="unknown --forecast"):
        choose("crystal-ball", tmp_path)
    models, _ = _registry(tmp_path / "m")
    assert choose("auto", models) == ("champion", models / REGISTRY_FILE)
    assert choose("champion", models / REGISTRY_FILE) == ("champion", models / REGISTRY_FILE)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        choose("champion", tmp_path / "file.txt")


def test_mpc_plans_on_the_champion_fed_from_the_run(tmp_path: Path) -> None:
    models, version = _registry(tmp_path / "models")
    s = simulate(SimulateOptions("small", 1.5, out=tmp_path / "run", policy="mpc", forecast="auto", models=models))
    fc = s["controller"]["it_forecast"]  # type: ignore[index]
    assert fc["mode"] == "champion" and version in fc["model"]
    assert fc["minutes_observed"] >= 85 and not fc["rejected"]  # every block's means reached it
    # Every plan after the first closed minute stood on the forecast (the first waits for one).
    assert fc["plans"] >= 6 and fc["plans_on_forecast"] >= fc["plans"] - 1
    plain = simulate(SimulateOptions("small", 1.5, out=tmp_path / "plain", policy="mpc"))
    assert plain["controller"]["it_forecast"]["plans_on_forecast"] == 0  # type: ignore[index]
    assert plain["controller"]["it_forecast"]["mode"] == "persistence"  # type: ignore[index]


def _cli(out: Path, hours: str, *extra: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from powerplane.cli import app

    args = ["simulate", "--scenario", "small", "--hours", hours, "--policy", "mpc", "--out", str(out), *extra]
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output


def test_cli_forecast_option_is_checked_before_simulating(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = _cli(out, "0.1", "--forecast", "oracle")
    assert code != 0 and "unknown --forecast 'oracle'" in text
    assert not out.exists()  # nothing simulated, nothing written
    models, version = _registry(tmp_path / "models")
    code, text = _cli(out, "0.2", "--models", str(models), "--json")
    assert code == 0, text
    assert version in json.loads(text)["controller"]["it_forecast"]["model"]  # auto: the registry's champion
