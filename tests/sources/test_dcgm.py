"""dcgm-exporter adapter: mapping to GPUs, and concurrent scrapes over real HTTP on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from powerplane.config import load_scenario
from powerplane.sources.dcgm import (
    DcgmMapper,
    DcgmScraper,
    fetch_target,
    normalize_target,
    read_targets,
    targets_for_topology,
)
from powerplane.sources.dcgm_synth import DCGM_SYNTH_METRICS, synth_scrape, synth_scrape_per_host
from powerplane.sources.prom_text import parse
from powerplane.topology.tree import Topology

POWER = "DCGM_FI_DEV_POWER_USAGE"
TENSOR = "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"


@pytest.fixture(scope="module")
def topo() -> Topology:
    return Topology.from_site(load_scenario("small")[0])


@pytest.fixture(scope="module")
def mapper(topo: Topology) -> DcgmMapper:
    return DcgmMapper(topo)


def site_power(topo: Topology, **kw: object) -> np.ndarray:
    """Per-GPU power straight from a site-wide synthetic scrape (synth writes GPUs in index order)."""
    res = parse(synth_scrape(topo, **kw))  # type: ignore[arg-type]
    m = res.metrics[POWER]
    return m.values[: topo.n_gpus]


# ---------------------------------------------------------------------------------------------- synthetic text


def test_synth_text_looks_like_dcgm_exporter(topo: Topology) -> None:
    text = synth_scrape(topo)
    res = parse(text)
    assert res.rejected == []
    assert len(res.metrics) == 20 == len(DCGM_SYNTH_METRICS)
    assert res.n_samples == 20 * topo.n_gpus
    assert res.types["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert res.types[POWER] == "gauge"
    assert res.helps[POWER] == "Power draw (in W)."
    assert len(res.labels) == topo.n_gpus
    assert set(res.labels.names) == {
        "gpu",
        "UUID",
        "pci_bus_id",
        "device",
        "modelName",
        "Hostname",
        "DCGM_FI_DRIVER_VERSION",
    }
    assert res.labels.column("UUID").tolist() == topo.gpu_uuids
    power = res.metrics[POWER].values
    assert np.all((power > 30) & (power < 1100))
    nvlink = res.metrics["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"].values
    assert nvlink.max() > 2.0**53  # integer counters past 2**53 are read as float64
    per_host = synth_scrape_per_host(topo, nodes=[0, 1])
    assert list(per_host) == topo.node_names[:2]
    assert parse(per_host[topo.node_names[1]]).n_samples == 20 * 8


# ---------------------------------------------------------------------------------------------- mapping


def test_mapping_by_uuid_puts_every_sample_on_its_gpu(topo: Topology, mapper: DcgmMapper) -> None:
    res = mapper.map([("site", parse(synth_scrape(topo, metrics=5)))])
    assert res.n_samples == res.n_mapped == 5 * topo.n_gpus
    assert res.reported.all() and not res.rejected
    np.testing.assert_array_equal(res.power_w, site_power(topo, metrics=5))
    assert res.types["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert np.all(res.energy_j > 0)
    assert np.isnan(res.value("DCGM_FI_DEV_NOT_THERE")).all()


@pytest.mark.parametrize("host_label", ["Hostname", "hostname"])
def test_mapping_by_host_and_gpu_when_uuid_unknown(topo: Topology, mapper: DcgmMapper, host_label: str) -> None:
    text = synth_scrape(topo, metrics=3, hostname_label=host_label).replace('UUID="GPU-', 'UUID="GPU-swapped-')
    res = mapper.map([("site", parse(text))])
    assert res.n_mapped == 3 * topo.n_gpus and res.reported.all()
    np.testing.assert_array_equal(res.power_w, site_power(topo, metrics=3))


def test_fully_qualified_hostnames_map_by_short_name(topo: Topology, mapper: DcgmMapper) -> None:
    text = synth_scrape(topo, metrics=1).replace('UUID="GPU-', 'UUID="X-')
    text = text.replace('",DCGM_FI_DRIVER', '.dc1.example.com",DCGM_FI_DRIVER')
    res = mapper.map([("site", parse(text))])
    assert res.reported.all()


def test_unknown_hosts_and_gpus_are_rejected_and_counted(topo: Topology, mapper: DcgmMapper) -> None:
    host0 = topo.node_names[0]
    text = (
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n"
        f'DCGM_FI_DEV_POWER_USAGE{{gpu="0",UUID="{topo.gpu_uuids[0]}",Hostname="{host0}"}} 100\n'
        f'DCGM_FI_DEV_POWER_USAGE{{gpu="1",UUID="GPU-unknown",Hostname="{host0}"}} 101\n'
        'DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-unknown2",Hostname="no-such-node"} 102\n'
        f'DCGM_FI_DEV_POWER_USAGE{{gpu="99",UUID="GPU-unknown3",Hostname="{host0}"}} 103\n'
        f'DCGM_FI_DEV_POWER_USAGE{{gpu="x",hostname="{host0}"}} 104\n'
        "DCGM_FI_DEV_POWER_USAGE{} 105\n"
        "DCGM_FI_DEV_POWER_USAGE{gpu=1} 106\n"
    )
    res = mapper.map([("t1", parse(text))])
    assert res.n_samples == 6 and res.n_mapped == 2
    assert res.rejected == {"unknown_host": 1, "unknown_gpu": 3, "bad_labels": 1}
    assert res.power_w[0] == 100 and res.power_w[1] == 101
    assert np.isnan(res.power_w[2:]).all()
    assert res.reported.sum() == 2
    reasons = {(r.reason, r.line_no) for r in res.rejected_examples}
    assert ("bad_labels", 8) in reasons and ("unknown_host", 0) in reasons
    assert any("no-such-node" in r.detail for r in res.rejected_examples)


def test_mig_instances_are_averaged_per_gpu(topo: Topology, mapper: DcgmMapper) -> None:
    mig = mapper.map([("site", parse(synth_scrape(topo, mig=True, pods=True)))])
    plain = mapper.map([("site", parse(synth_scrape(topo)))])
    mig_nodes = np.arange(topo.n_nodes) % 4 == 1
    is_mig = mig_nodes[topo.gpu_node]
    assert (mig.series_per_gpu[is_mig] == 4).all() and (mig.series_per_gpu[~is_mig] == 1).all()
    # Device-level fields repeat on every instance: the average is the device value.
    np.testing.assert_allclose(mig.power_w, plain.power_w)
    # Profiling ratios are per instance: the average lies a little below the device figure.
    t_mig, t_plain = mig.value(TENSOR), plain.value(TENSOR)
    np.testing.assert_allclose(t_mig[~is_mig], t_plain[~is_mig])
    assert np.all(t_mig[is_mig] <= t_plain[is_mig] + 1e-9)
    assert mig.reported.all()


def test_two_targets_reporting_the_same_gpus_are_averaged(topo: Topology, mapper: DcgmMapper) -> None:
    a = parse(synth_scrape(topo, metrics=1, seed=1))
    b = parse(synth_scrape(topo, metrics=1, seed=2))
    res = mapper.map([("a", a), ("b", b)])
    np.testing.assert_allclose(res.power_w, (a.metrics[POWER].values + b.metrics[POWER].values) / 2)
    assert (res.series_per_gpu == 2).all()


# ---------------------------------------------------------------------------------------------- targets


def test_normalize_and_read_targets(tmp_path: Path) -> None:
    assert normalize_target("node-1") == "http://node-1:9400/metrics"
    assert normalize_target("node-1:9500") == "http://node-1:9500/metrics"
    assert normalize_target("http://node-1:9400") == "http://node-1:9400/metrics"
    assert normalize_target("https://node-1:9400/custom") == "https://node-1:9400/custom"
    assert normalize_target("file:///tmp/x.prom") == "file:///tmp/x.prom"
    assert normalize_target("/tmp/x.prom") == "file:///tmp/x.prom"
    f = tmp_path / "targets.txt"
    f.write_text("# dcgm targets\n\nnode-1\n  node-2:9400  # rack 1\nhttp://node-3:9400/metrics\n#node-4\n")
    assert read_targets(f) == [
        "http://node-1:9400/metrics",
        "http://node-2:9400/metrics",
        "http://node-3:9400/metrics",
    ]
    assert DcgmScraper.from_file(f, timeout_s=1.0).targets == read_targets(f)


def test_targets_for_topology(topo: Topology) -> None:
    urls = targets_for_topology(topo, domain="dc1.example")
    assert len(urls) == topo.n_nodes
    assert urls[0] == f"http://{topo.node_names[0]}.dc1.example:9400/metrics"


def test_file_targets_scrape_offline(topo: Topology, tmp_path: Path) -> None:
    per_host = synth_scrape_per_host(topo, metrics=4)
    targets = []
    for i, (host, text) in enumerate(per_host.items()):
        p = tmp_path / f"{host}.prom"
        p.write_text(text)
        targets.append(f"file://{p}" if i % 2 else str(p))
    targets.append(f"file://{tmp_path}/missing.prom")
    res = DcgmScraper(targets, timeout_s=2.0, max_concurrency=4).scrape(topo)
    assert [t.status for t in res.targets].count("ok") == topo.n_nodes
    assert res.targets[-1].status == "error" and "missing" in (res.targets[-1].error or "")
    assert res.reported.all()
    np.testing.assert_array_equal(res.power_w, site_power(topo, metrics=4))


# ---------------------------------------------------------------------------------------------- real HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        srv = self.server
        parts = self.path.strip("/").split("/")
        if parts[0] == "host" and parts[1] in srv.texts:
            self._send(200, srv.texts[parts[1]])
        elif parts[0] == "fail":
            self._send(500, b"internal error\n")
        elif parts[0] == "slow":  # answers long after the scraper's deadline
            srv.stop.wait(3.0)
            self._send(200, b"")
        elif parts[0] == "trickle":  # each chunk comes in time, the whole body does not
            body = next(iter(srv.texts.values()))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for k in range(0, len(body), 200):
                if srv.stop.wait(0.05):
                    return
                try:
                    self.wfile.write(body[k : k + 200])
                    self.wfile.flush()
                except OSError:
                    return
        else:
            self._send(404, b"not found\n")

    def _send(self, code: int, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the default backlog of 5 drops concurrent connects (then a 1 s SYN retry)
    texts: dict[str, bytes]
    stop: threading.Event


@pytest.fixture(scope="module")
def server(topo: Topology) -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.texts = {h: t.encode() for h, t in synth_scrape_per_host(topo, hostname_label="hostname").items()}
    srv.stop = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_concurrent_http_scrape_with_targets_down_or_slow(topo: Topology, server: _Server) -> None:
    port = server.server_address[1]
    base = f"http://127.0.0.1:{port}"
    good = [f"{base}/host/{h}/metrics" for h in topo.node_names]
    bad = {
        f"{base}/fail/metrics": "http_error",
        f"http://127.0.0.1:{closed_port()}/metrics": "connection_refused",
        f"{base}/slow/metrics": "timeout",
        f"{base}/trickle/metrics": "timeout",
    }
    targets = good[:10] + list(bad) + good[10:]
    scraper = DcgmScraper(targets, timeout_s=0.6, max_concurrency=16)
    t0 = time.perf_counter()
    res = scraper.scrape(topo)
    wall = time.perf_counter() - t0
    assert wall < 2.5  # the slow ones are cut off at the deadline, concurrently
    status = {t.target: t for t in res.targets}
    assert [t.target for t in res.targets] == targets
    for url, expected in bad.items():
        assert status[url].status == expected, (url, status[url])
        assert not status[url].ok and status[url].error
    assert status[f"{base}/fail/metrics"].http_status == 500
    assert status[f"{base}/slow/metrics"].latency_s == pytest.approx(0.6, abs=0.4)
    for url in good:
        st = status[url]
        assert st.ok and st.http_status == 200 and st.n_samples == 160 and st.n_rejected == 0
        assert st.n_bytes > 10_000 and 0 < st.latency_s < 2.0
    assert len(res.failed_targets) == 4
    assert res.reported.all() and res.n_mapped == 20 * topo.n_gpus
    np.testing.assert_array_equal(res.power_w, site_power(topo))
    assert "1 connection_refused" in res.summary() and "2 timeout" in res.summary()


def test_fetch_target_single_and_unsupported(server: _Server, topo: Topology) -> None:
    port = server.server_address[1]
    r = fetch_target(f"http://127.0.0.1:{port}/host/{topo.node_names[3]}/metrics", timeout_s=2.0)
    assert r.status.ok and r.parsed is not None and r.parsed.n_samples == 160
    assert fetch_target(f"http://127.0.0.1:{port}/nope", timeout_s=2.0).status.status == "http_error"
    assert fetch_target("ftp://example/metrics").status.status == "error"


def test_scraper_arguments() -> None:
    with pytest.raises(ValueError):
        DcgmScraper(["x"], timeout_s=0)
    with pytest.raises(ValueError):
        DcgmScraper(["x"], max_concurrency=0)
    assert DcgmScraper([]).fetch() == []


def test_malformed_targets_fail_alone() -> None:
    assert fetch_target("http://127.0.0.1:notaport/metrics").status.status == "error"
    assert fetch_target("").status.status in ("error", "connection_refused")


def test_dcgm_source_reads_frames(topo: Topology, tmp_path: Path) -> None:
    from powerplane.core.clock import SimClock
    from powerplane.core.errors import SourceError
    from powerplane.sources.dcgm import DcgmSource

    targets = []
    for host, text in synth_scrape_per_host(topo).items():
        (tmp_path / f"{host}.prom").write_text(text)
        targets.append(f"file://{tmp_path}/{host}.prom")
    src = DcgmSource(topo, targets, clock=SimClock(1_800_000_000.0))
    base = pytest.importorskip("powerplane.sources.base")
    assert isinstance(src, base.Source)
    frame = src.read()
    assert frame.source == "dcgm" and frame.t_s == 1_800_000_000.0
    gpu = frame.levels["gpu"]
    np.testing.assert_array_equal(gpu["power_w"], site_power(topo))
    for metric in ("energy_mj", "util_pct", "temp_c", "mem_temp_c", "sm_clock_mhz", "power_cap_w"):
        assert np.isfinite(gpu[metric]).all(), metric
    assert gpu["last_xid"].dtype == np.int64
    assert src.last is not None and src.last.reported.all()
    down = DcgmSource(topo, [f"file://{tmp_path}/nope.prom"])
    with pytest.raises(SourceError):
        down.read()
    src.close()
    with pytest.raises(SourceError):
        src.read()
