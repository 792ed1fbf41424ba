"""The online log pipeline: mining, scoring, correlation, sources, store and the ``logs`` commands."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from powerplane.config import load_scenario
from powerplane.ops.cli import app
from powerplane.ops.logs import (
    Correlator,
    FileTailer,
    LogMiner,
    LogStore,
    SyslogUdpListener,
    mask,
    pump,
    render_twin_xids,
    twin_pci_map,
)
from powerplane.topology import Topology
from powerplane.twin.workload import XidEvent

T0 = 1_732_390_200.0  # 2024-11-23 19:30:00 UTC


@pytest.fixture(scope="module")
def topo() -> Topology:
    return Topology.from_site(load_scenario("small")[0])


def _stamp(t: float) -> str:
    return time.strftime("%b %d %H:%M:%S", time.gmtime(t))


def _normal(i: int) -> str:
    """Background lines: three shapes with varying numbers, users, hosts."""
    t = T0 + i // 20
    host = f"hall-1-r00-k00-n{i % 8}"
    kind = i % 3
    if kind == 0:
        return (
            f"{_stamp(t)} {host} sshd[{1000 + i}]: Accepted publickey for user{i % 7} from 10.0.{i % 250}.{i % 200} "
            f"port {20000 + i} ssh2"
        )
    if kind == 1:
        return f"{_stamp(t)} {host} systemd[1]: Started Session {i} of User root."
    return f"{_stamp(t)} {host} kernel: [{i * 0.37:.6f}] mlx5_core 0000:{i % 256:02x}:00.0 eth{i % 4}: Link up"


def test_mask() -> None:
    assert mask("eth0 up at 1000 Mbps, pci 0000:3b:00.0, id 0x1f") == "eth<*> up at <*> Mbps, pci <*>, id <*>"


def test_drain3_groups_variants_into_templates() -> None:
    m = LogMiner(year=2024, warmup_lines=0)
    events = m.process_lines(_normal(i) for i in range(300))
    assert len(m.templates) == 3
    assert {e.template_id for e in events[0::3]} == {events[0].template_id}
    assert m.drain_calls < 40  # the shape cache: Drain3 sees each distinct masked shape once
    # Different words in one slot: Drain3 generalizes the template.
    m.process("Nov 23 19:31:00 h1 sshd[9]: Accepted publickey for alice from 10.1.1.1 port 5 ssh2")
    ev = m.process("Nov 23 19:31:00 h1 sshd[9]: Accepted publickey for bob from 10.1.1.1 port 5 ssh2")
    assert ev.template_id == events[0].template_id
    assert "<*>" in ev.template and "Accepted publickey for" in ev.template
    table = m.template_table()
    assert sum(r["count"] for r in table) == 302
    assert table[0]["count"] >= table[-1]["count"]


def test_new_template_after_warmup_is_anomalous() -> None:
    m = LogMiner(year=2024, warmup_lines=100, rare_fraction=0.01)
    events = m.process_lines(_normal(i) for i in range(600))
    assert max(e.anomaly_score for e in events) < 0.5
    ev = m.process(f"{_stamp(T0 + 40)} hall-1-r00-k00-n3 kernel: EXT4-fs error (device nvme0n1p2): bad block bitmap")
    assert ev.anomaly_score == 1.0 and "new" in ev.reasons
    assert ev.severity == 3
    again = m.process(f"{_stamp(T0 + 41)} hall-1-r00-k00-n3 kernel: EXT4-fs error (device nvme0n1p3): bad block bitmap")
    assert again.template_id == ev.template_id and "new" not in again.reasons and "rare" in again.reasons


def test_burst_is_flagged() -> None:
    m = LogMiner(year=2024, warmup_lines=50, window_s=10.0, burst_factor=5.0, burst_min=20)
    lines = []
    for s in range(300):  # 300 s of one "link flap" line every 10 s on top of steady background traffic
        lines.append(f"{_stamp(T0 + s)} hall-1-r00-k00-n{s % 8} systemd[1]: Started Session {s} of User root.")
        if s % 10 == 0:
            lines.append(f"{_stamp(T0 + s)} hall-1-r00-k00-n1 kernel: ib0: Port 1 link state changed to DOWN")
    base = m.process_lines(lines)
    assert not any("burst" in e.reasons for e in base)
    storm = [
        m.process(f"{_stamp(T0 + 300 + k // 40)} hall-1-r00-k00-n1 kernel: ib0: Port 1 link state changed to DOWN")
        for k in range(80)
    ]
    flagged = [e for e in storm if "burst" in e.reasons]
    assert flagged and flagged[-1].anomaly_score >= 0.5
    assert not any("burst" in e.reasons for e in storm[:19])  # burst_min lines first


def test_correlation_to_node_gpu_and_job(topo: Topology) -> None:
    gpu_job = np.full(topo.n_gpus, -1, dtype=np.int64)
    gpu_job[8:16] = 7
    corr = Correlator(topo, twin_pci_map(topo), gpu_job)
    m = LogMiner(corr, year=2024)
    x = m.process(
        "Nov 23 19:30:00 hall-1-r00-k00-n1 kernel: NVRM: Xid (PCI:0000:3a:00): 79, pid=1, name=python3, "
        "GPU has fallen off the bus."
    )
    assert (x.host, x.gpu, x.job, x.action, x.pci_bus_id) == ("hall-1-r00-k00-n1", 10, 7, "RESTART_BM", "0000:3a:00")
    assert x.severity == 2 and x.anomaly_score >= 0.6
    g = m.process("Nov 23 19:30:01 hall-1-r00-k00-n1 nv-hostengine[5]: GPU 3 thermal slowdown active")
    assert (g.gpu, g.job) == (11, 7)
    u = m.process(f"Nov 23 19:30:02 hall-1-r00-k00-n9 nvidia-smi[5]: {topo.gpu_uuids[20]} reset done")
    assert (u.gpu, u.job) == (20, -1)  # a GPU UUID resolves on its own
    u2 = m.process(f"dcgm health: {topo.gpu_uuids[20]} failed PCIe check on hall-1-r00-k00-n2")
    assert (u2.host, u2.gpu) == ("hall-1-r00-k00-n2", 20)
    unknown = m.process("Nov 23 19:30:03 not-a-node kernel: NVRM: Xid (PCI:0000:3a:00): 13, pid=1, name=p, x")
    assert (unknown.gpu, unknown.job, unknown.host) == (-1, -1, "not-a-node")


def test_twin_xid_events(topo: Topology) -> None:
    events = [XidEvent(T0 + 5, 3, 17, 48), XidEvent(T0 + 6, -1, 0, 79)]
    lines = render_twin_xids(events, topo)
    assert lines[0].startswith("Nov 23 19:30:05 hall-1-r00-k00-n2 kernel: NVRM: Xid (PCI:0000:2a:00): 48, pid=10003")
    m = LogMiner(Correlator(topo, twin_pci_map(topo)), year=2024)
    out = m.process_xid_events(events, topo)
    assert [(e.gpu, e.job, e.xid.xid if e.xid else None, e.action) for e in out] == [
        (17, 3, 48, "WORKFLOW_XID_48"), (0, -1, 79, "RESTART_BM")
    ]  # fmt: skip
    # The rendered lines also resolve through the PCI map alone.
    again = LogMiner(Correlator(topo, twin_pci_map(topo)), year=2024).process_lines(lines)
    assert [e.gpu for e in again] == [17, 0]


def test_udp_syslog_received_and_stored(tmp_path: Path) -> None:
    with SyslogUdpListener(port=0) as listener, LogStore(tmp_path / "logs.duckdb") as store:
        assert listener.address[0] == "127.0.0.1" and listener.port > 0
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.sendto(b"<13>Nov 23 19:30:00 hall-1-r00-k00-n4 slurmd[77]: launch task StepId=12.0", listener.address)
        tx.sendto(
            b"<3>1 2024-11-23T19:30:01Z hall-1-r00-k00-n5 kernel - - - NVRM: Xid (PCI:0000:18:00): 95, pid=9, "
            b"name=python3, Uncontained: FBHUB. RST: Yes, D-RST: No",
            listener.address,
        )
        tx.close()
        got: list[tuple[float, str]] = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += listener.poll()
            time.sleep(0.02)
        assert len(got) == 2
        events = pump(got, LogMiner(year=2024), store)
        assert store.count() == 2
        assert events[1].xid is not None and events[1].action == "RESET_GPU" and events[1].severity == 3
        assert events[0].host == "hall-1-r00-k00-n4" and events[0].severity == 5
        rows = store.search("uncontained")
        assert len(rows) == 1 and rows[0]["xid"] == 95 and rows[0]["host"] == "hall-1-r00-k00-n5"
    with pytest.raises(ValueError, match="loopback"):
        SyslogUdpListener("0.0.0.0")


def test_file_tail_follows_appends_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text("one\ntwo\n")
    tail = FileTailer(log)
    assert tail.poll() == ["one", "two"]
    assert tail.poll() == []
    with log.open("a") as f:
        f.write("three\nfour (partial")
    assert tail.poll() == ["three"]
    with log.open("a") as f:
        f.write(" done)\nfive\n")
    assert tail.poll() == ["four (partial done)", "five"]
    # Rotation: the old file gets a last line, is renamed, a new file appears.
    with log.open("a") as f:
        f.write("six\n")
    log.rename(tmp_path / "kern.log.1")
    assert tail.poll() == ["six"]
    log.write_text("new-1\nnew-2\n")
    assert tail.poll() == ["new-1", "new-2"]
    # Truncation in place (copytruncate).
    log.write_text("")
    assert tail.poll() == []
    log.write_text("after-truncate\n")
    assert tail.poll() == ["after-truncate"]
    tail.close()
    # Starting at the end skips what is there.
    late = FileTailer(log, from_start=False)
    assert late.poll() == []
    with log.open("a") as f:
        f.write("fresh\n")
    assert late.poll() == ["fresh"]
    late.close()


def test_store_search(tmp_path: Path) -> None:
    db = tmp_path / "logs.duckdb"
    m = LogMiner(year=2024)
    lines = [_normal(i) for i in range(200)]
    lines.append(
        "Nov 23 19:40:00 hall-1-r00-k00-n6 kernel: NVRM: Xid (PCI:0000:9a:00): 79, pid=1, name=python3, "
        "GPU has fallen off the bus."
    )
    with LogStore(db) as store:
        store.add(m.process_lines(lines[:100]))
        store.add(m.process_lines(lines[100:]))
        assert store.count() == 201
    with LogStore(db) as store:  # reopened: ids continue, data persisted
        assert store.count() == 201
        assert len(store.search("fallen bus")) == 1
        assert store.search("xid:79")[0]["action"] == "RESTART_BM"
        assert store.search('"fallen off the bus" host:hall-1-r00-k00-n6')[0]["gpu"] == -1
        assert store.search("host:hall-1-r00-k00-n9") == []  # no such host in the lines
        sessions = store.search("session root", limit=500)
        assert len(sessions) == 67
        assert all("Session" in r["line"] for r in sessions)
        assert len(store.search("publick*", limit=500)) == 67
        assert store.search("nosuchword") == []
        store.add(m.process_lines(["Nov 23 19:41:00 hall-1-r00-k00-n0 kernel: something else"]))
        ids = [r["id"] for r in store.search("something")]
        assert ids == [201]


def test_analyze_json_end_to_end(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    lines = [_normal(i) for i in range(3000)]
    lines.insert(2500, f"{_stamp(T0 + 125)} hall-1-r00-k00-n1 kernel: NVRM: Xid (PCI:0000:3a:00): 79, pid=1234, "
                       "name=python3, GPU has fallen off the bus.")  # fmt: skip
    lines.insert(2600, f"{_stamp(T0 + 130)} hall-1-r00-k00-n1 kernel: [ 9.5] NVRM: Xid (0000:3a:00): 13, "
                       "Graphics Exception: ESR 0x405840=0x1")  # fmt: skip
    log.write_text("\n".join(lines) + "\n")
    db = tmp_path / "a.duckdb"
    res = CliRunner().invoke(app, ["analyze", str(log), "--json", "--scenario", "small", "--db", str(db)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["lines"] == 3002
    assert out["n_templates"] == 5
    assert [x["xid"] for x in out["xid_events"]] == [79, 13]
    assert out["xid_events"][0]["gpu"] == 10 and out["xid_events"][0]["action"] == "RESTART_BM"
    assert {a["line"] for a in out["anomalies"]} >= {2501, 2601}
    host = out["hosts"]["hall-1-r00-k00-n1"]
    assert host["xid"] == {"13": 1, "79": 1} and host["worst_action"] == "RESTART_BM"
    assert out["gpus"] == [
        {"host": "hall-1-r00-k00-n1", "pci_bus_id": "0000:3a:00", "gpu": 10, "xid": {"13": 1, "79": 1},
         "worst_action": "RESTART_BM"}
    ]  # fmt: skip
    s = CliRunner().invoke(app, ["search", "fallen", "--db", str(db), "--json"])
    assert s.exit_code == 0, s.output
    assert [r["xid"] for r in json.loads(s.stdout)] == [79]
    bad = CliRunner().invoke(app, ["analyze", str(tmp_path / "missing.log")])
    assert bad.exit_code == 2


def test_analyze_reports_label_agreement(tmp_path: Path) -> None:
    log = tmp_path / "bgl.log"
    rows = []
    for i in range(2500):
        t = 1117838570 + i
        rows.append(
            f"- {t} 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.{i:06d} R02-M1-N0-C:J12-U11 RAS KERNEL INFO "
            f"generating core.{i}"
        )
    rows.append(
        "KERNDTLB 1117841070 2005.06.03 R30-M0-N9-C:J16-U01 2005-06-03-16.24.30.000000 R30-M0-N9-C:J16-U01 "
        "RAS KERNEL FATAL data TLB error interrupt"
    )
    log.write_text("\n".join(rows) + "\n")
    res = CliRunner().invoke(app, ["analyze", str(log), "--json"])
    assert res.exit_code == 0, res.output
    labels = json.loads(res.stdout)["labels"]
    assert (labels["tp"], labels["fn"], labels["fp"]) == (1, 0, 0)
    assert labels["f1"] == 1.0
