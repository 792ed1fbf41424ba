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
        [
            sys.executable,
            "-m",
            "powerplane.cli",
            "track",
            "--source",
            "twin",
            "--scenario",
            "small",
            "--interval",
            "200ms",
            "--port",
            "0",
            "--duration",
            "20",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        url = None
        seen = []
        for _ in range(50):  # other libraries may warn on stderr first
            line = proc.stderr.readline()
            seen.append(line)
            url = re.search(r"http://\S+/metrics", line)
            if url or not line:
                break
        assert url, seen
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


def test_dcgm_endpoints_over_http_with_one_down(tmp_path: Path) -> None:
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from powerplane.config import load_scenario
    from powerplane.sources.dcgm_synth import synth_scrape_per_host
    from powerplane.topology import Topology

    topo = Topology.from_site(load_scenario("small")[0])
    texts = synth_scrape_per_host(topo)
    hosts = list(texts)[:4]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = self.path.strip("/").split("/")[0]
            body = texts[host].encode() if isinstance(texts[host], str) else texts[host]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    try:
        listing = tmp_path / "targets.txt"
        urls = [f"http://127.0.0.1:{srv.server_address[1]}/{h}/metrics" for h in hosts[:3]]
        urls.append(f"http://127.0.0.1:{closed_port}/metrics  # this exporter is down")
        listing.write_text("# dcgm-exporter endpoints\n" + "\n".join(urls) + "\n")
        doc = _json("--source", "dcgm", "--targets", str(listing), "--scenario", "small", "--timeout", "2")
    finally:
        srv.shutdown()
    assert len(doc["failed_targets"]) == 1 and str(closed_port) in doc["failed_targets"][0]
    assert doc["coverage"]["site"] == pytest.approx(3 * 8 / 256)
    assert doc["rejected"]["missing"] == 256 - 24
    assert doc["site"]["gpu_power_w_sum"] > 0


def test_dcgm_pod_labels_attribute_power_to_jobs(tmp_path: Path) -> None:
    from powerplane.config import load_scenario
    from powerplane.sources.dcgm_synth import synth_scrape
    from powerplane.topology import Topology

    topo = Topology.from_site(load_scenario("small")[0])
    scrape = tmp_path / "scrape.txt"
    scrape.write_text(synth_scrape(topo, pods=True))
    doc = _json("--source", "dcgm", "--targets", str(scrape), "--scenario", "small")
    assert doc["jobs"], "pods become jobs"
    assert set(doc["job_names"]) == {str(j["job"]) for j in doc["jobs"]}
    assert sum(j["power_w"] for j in doc["jobs"]) <= doc["site"]["gpu_power_w_sum"] + 1e-6


def test_history_is_kept_in_duckdb(tmp_path: Path) -> None:
    from powerplane.config import load_scenario
    from powerplane.store.history import HistoryStore
    from powerplane.topology import Topology

    db = tmp_path / "history.duckdb"
    for _ in range(3):
        doc = _json("--source", "twin", "--scenario", "small", "--history", str(db))
    topo = Topology.from_site(load_scenario("small")[0])
    with HistoryStore(db, topo) as h:
        df = h.series("site", "gpu_power_w", 0.0, 4e9, 1.0)
    assert len(df) >= 1 and df["value"].iloc[-1] == pytest.approx(doc["site"]["gpu_power_w_sum"], rel=1e-3)
