"""End-to-end: `powerplane track` as a user runs it."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from powerplane.cli import app
from powerplane.runtime.simulate import SimulateOptions, simulate

runner = CliRunner()


def _json(*args: str) -> dict:  # type: ignore[type-arg]
    res = runner.invoke(app, ["track", *args, "--once", "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_once_json_on_the_twin() -> None:
    doc = _json("--source", "twin", "--scenario", "small")
    assert doc["gpus"] == 256 and doc["source"] == "twin"
    assert {"site", "halls", "racks", "jobs", "coverage", "rejected"} <= set(doc)
    assert len(doc["racks"]) == 8 and doc["coverage"]["site"] == 1.0
    assert doc["site"]["gpu_power_w_sum"] > 0 and doc["site"]["facility_power_w"] > doc["site"]["it_power_w"]
    assert sum(r["gpu_power_w_sum"] for r in doc["racks"]) == pytest.approx(doc["site"]["gpu_power_w_sum"])
    assert doc["jobs"] and all(j["power_w"] > 0 for j in doc["jobs"])


def test_once_json_on_fake_nvml_and_replay(tmp_path: Path) -> None:
    doc = _json("--source", "nvml", "--fake-nvml")
    assert doc["gpus"] == 8 and doc["site"]["gpu_power_w_sum"] > 0
    run = tmp_path / "run"
    simulate(SimulateOptions("small", 0.05, out=run, gpu_detail=True))
    doc = _json("--source", "replay", str(run), "--speed", "0")
    assert doc["source"] == "replay" and doc["rejected"].get("missing", 0) > 0  # no GPU interval has ended yet


def test_bad_source_arguments_fail_clearly(tmp_path: Path) -> None:
    res = runner.invoke(app, ["track", "--source", "replay", "--once"])
    assert res.exit_code == 2 and "directory" in res.output
    res = runner.invoke(app, ["track", "--source", "replay", str(tmp_path), "--once"])
    assert res.exit_code == 2 and "summary.json" in res.output
    res = runner.invoke(app, ["track", "--source", "carrier-pigeon", "--once"])
    assert res.exit_code == 2 and "valid" in res.output


@pytest.mark.slow
def test_live_tracking_serves_metrics_over_http(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "powerplane.cli", "track", "--source", "twin", "--scenario", "small", "--interval",
         "200ms", "--port", "0", "--duration", "20"],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = re.search(r"http://\S+/metrics", line)
        assert url, line
        deadline = time.time() + 15
        seqs = []
        while time.time() < deadline and len(seqs) < 2:
            try:
                body = urllib.request.urlopen(url.group(0), timeout=5).read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            fams = {f.name: f for f in text_string_to_metric_families(body)}
            seqs.append(fams["powerplane_snapshots"].samples[0].value)
            assert len(fams["powerplane_gpu_power_watts"].samples) == 256
            time.sleep(0.5)
        assert len(seqs) == 2 and seqs[1] > seqs[0]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
