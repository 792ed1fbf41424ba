"""End-to-end: `powerplane simulate` as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from powerplane.cli import app
from powerplane.config import load_scenario

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output


def test_simulate_small_writes_every_table(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = _run("simulate", "--scenario", "small", "--hours", "0.25", "--out", str(out), "--gpu-detail")
    assert code == 0, text
    files = {p.name for p in out.iterdir()}
    assert files >= {
        "site.parquet",
        "halls.parquet",
        "bess.parquet",
        "racks.parquet",
        "jobs.parquet",
        "job_power.parquet",
        "gpus.parquet",
        "xid_events.parquet",
        "summary.json",
        "site_power.png",
    }
    site = pq.read_table(out / "site.parquet").to_pandas()
    for col in (
        "t_s",
        "it_power_w",
        "cooling_power_w",
        "facility_power_w",
        "renewable_power_w",
        "bess_power_w",
        "grid_power_w",
        "pue",
    ):
        assert col in site.columns
    assert len(site) == 900 and np.all(np.diff(site.t_s) == 1.0)
    bal = (
        site.facility_power_w
        - site.bess_power_w
        - site.renewable_power_w
        - site.generator_power_w
        - site.ups_power_w
        - site.unserved_power_w
    )
    np.testing.assert_allclose(bal, site.grid_power_w, rtol=1e-9, atol=1e-6)
    gpus = pq.read_table(out / "gpus.parquet")
    assert gpus.num_rows == 15 * 256
    racks = pq.read_table(out / "racks.parquet")
    assert racks.num_rows == 15 * 8
    halls = pq.read_table(out / "halls.parquet").to_pandas()
    np.testing.assert_allclose(halls.groupby("t_s").it_power_w.sum().to_numpy(), site.it_power_w.to_numpy())
    jobs = pq.read_table(out / "jobs.parquet").to_pandas()
    assert {"kind", "priority", "energy_kwh", "cost", "failures", "throughput_lost_gpu_hours"} <= set(jobs.columns)
    s = json.loads((out / "summary.json").read_text())
    assert s["energy_balance_error"] < 1e-3
    for key in ("energy_mwh", "power_mw", "pue", "largest_1s_swing_mw", "spectral_share", "cost"):
        assert key in s
    # Job energy adds up to GPU energy: everything on a GPU is attributed to its job or to idle.
    gpu_last = gpus.to_pandas().groupby("gpu").energy_mj.max().sum() / 3.6e9
    assert jobs.energy_kwh.sum() <= gpu_last + 1e-6


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    sums = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        code, text = _run(
            "simulate", "--scenario", "small", "--hours", "0.1", "--seed", str(seed), "--out", str(tmp_path / name)
        )
        assert code == 0, text
        sums.append(pq.read_table(tmp_path / name / "site.parquet").column("facility_power_w").to_numpy())
    np.testing.assert_array_equal(sums[0], sums[1])
    assert not np.array_equal(sums[0], sums[2])


def test_existing_output_is_refused_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, text = _run("simulate", "--scenario", "small", "--hours", "0.05", "--out", str(out))
    assert code == 2 and "--force" in text
    assert (out / "keep.txt").exists()
    code, text = _run("simulate", "--scenario", "small", "--hours", "0.05", "--out", str(out), "--force")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "site.parquet").exists()


def test_bad_input_fails_before_simulating(tmp_path: Path) -> None:
    code, text = _run("simulate", "--scenario", "atlantis", "--out", str(tmp_path / "x"))
    assert code == 2 and "texas" in text and "qingyang" in text
    _, src = load_scenario("small")
    raw = yaml.safe_load(src.read_text())
    raw["electrical"]["contract_demand_kw"] = -5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    code, text = _run("simulate", "--scenario", str(bad), "--out", str(tmp_path / "y"))
    assert code == 2 and "bad.yaml" in text and "electrical.contract_demand_kw" in text
    assert not (tmp_path / "y").exists()
    code, text = _run("simulate", "--hours", "1", "--days", "1", "--out", str(tmp_path / "z"))
    assert code == 2 and "not both" in text
    code, text = _run("simulate", "--step", "fast", "--out", str(tmp_path / "z"))
    assert code == 2 and "not a duration" in text
    assert not list(tmp_path.glob(".*partial*"))


def test_interrupted_run_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "powerplane.cli",
            "simulate",
            "--scenario",
            "small",
            "--hours",
            "480",
            "--out",
            str(out),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # A shell without job control starts background jobs with SIGINT ignored, and Python keeps it ignored:
        # give the child the default so that the test means the same wherever it runs.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".run.partial*/site.parquet")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr  # (a 20-day run: it cannot finish before the signal)
    assert b"interrupted" in stderr
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_help_for_every_command() -> None:
    for cmd in ([], ["simulate"], ["scenarios"], ["version"], ["track"], ["schedule"], ["logs"]):
        code, text = _run(*cmd, "--help")
        assert code == 0 and "Usage" in text
    code, text = _run("scenarios")
    assert code == 0 and "10,240" in text


@pytest.mark.parametrize("step", ["100ms"])
def test_sub_second_steps(tmp_path: Path, step: str) -> None:
    code, text = _run(
        "simulate", "--scenario", "small", "--hours", "0.02", "--step", step, "--out", str(tmp_path / "r")
    )
    assert code == 0, text
    site = pq.read_table(tmp_path / "r" / "site.parquet").column("t_s").to_numpy()
    assert site.size == 720 and np.allclose(np.diff(site), 0.1)


def test_jobs_table_says_what_work_the_warm_start_had_done(tmp_path: Path) -> None:
    from powerplane.runtime.simulate import SimulateOptions, simulate

    simulate(SimulateOptions("small", 0.05, out=tmp_path / "r"))
    jobs = pq.read_table(tmp_path / "r" / "jobs.parquet").to_pydict()
    done0 = np.asarray(jobs["work_done_at_start_hours"])
    work = np.asarray(jobs["work_hours"])
    start = np.asarray(jobs["start_s"])
    t0 = float(np.nanmin(start))
    warm = np.isfinite(work) & (start == t0) & (done0 > 0)
    assert warm.any()  # training and batch jobs already running at the start, part done
    assert np.all(done0[warm] < work[warm]) and np.all(done0[start > t0] == 0)
