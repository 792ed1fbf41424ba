"""Benchmark log ingest with template mining, side by side with raw Drain3 on the same lines in the same run.

Lines: a synthetic mix of kernel and system log lines from the `texas` site's 1,280 hosts (sshd, systemd, cron,
kernel NIC/PCIe/EDAC/OOM, Slurm, NVIDIA Xid in all its forms, nvidia-persistenced, dcgm, containerd...), with
random numbers, addresses, users and PCI ids; about 1 % Xid lines. Cases:
  drain3 raw          ``TemplateMiner.add_log_message(line)`` on every whole line (what a naive pipeline does)
  LogMiner            header parse, masking, template cache + Drain3 on each new shape, anomaly scoring,
                      correlation to node/GPU/job through the topology                      [target >= 50,000/s]
  LogMiner + store    the same, then every event inserted into a DuckDB file with its token index
Each case gets a fresh miner. Rates are lines / wall seconds of one pass (median of --repeats).

Usage: python benchmarks/bench_logs.py [--lines 200000] [--repeats 3] [--record] [--note TEXT]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from machine_info import add_table_row, median_s
from machine_info import machine as machine_info

HERE = Path(__file__).resolve().parent
HEADING = "## Operations: log ingest"


def synthetic_lines(n: int, hosts: list[str], seed: int = 0) -> list[str]:
    """A realistic mix of syslog lines (RFC 3164 file form, some dmesg and RFC 5424), ~1 % of them Xid."""
    rng = random.Random(seed)
    users = ["root", "alice", "bob", "slurm", "svc-train", "carol", "dave"]
    procs = ["python3", "python", "torchrun", "nvidia-smi", "pt_main_thread"]
    pcis = ["0000:18:00", "0000:2a:00", "0000:3a:00", "0000:5d:00", "0000:9a:00", "0000:ab:00", "0000:ba:00"]
    ifs = ["eth0", "eth1", "ib0", "ib1", "ibp12s0", "enp65s0f0"]
    xids = [(13, "Graphics SM Warp Exception on (GPC {a}, TPC {b}, SM 0): Out Of Range Address"),
            (31, "MMU Fault: ENGINE GRAPHICS GPC{a} GPCCLIENT_T1_{b} faulted @ 0x7f{h}_{h}. Fault is of type "
                 "FAULT_PDE ACCESS_TYPE_VIRT_READ"),
            (79, "GPU has fallen off the bus."),
            (48, "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at "
                 "partition {a}, subpartition {b}."),
            (94, "Contained: SM (0x{h}). RST: No, D-RST: No"),
            (74, "NVLink: fatal error detected on link {a}(0x{h}, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0)"),
            (119, "Timeout after 6s of waiting for RPC response from GPU{a} GSP! Expected function {b} "
                  "(GSP_RM_CONTROL)."),
            (63, "Row Remapper: New row (0x{h}) marked for remapping, reset gpu to activate.")]  # fmt: skip

    def ip() -> str:
        return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    def hx() -> str:
        return f"{rng.getrandbits(32):08x}"

    gens: list[tuple[float, Callable[[], str]]] = [
        (
            12,
            lambda: (
                f"sshd[{rng.randrange(1000, 65000)}]: Accepted publickey for {rng.choice(users)} from {ip()} "
                f"port {rng.randrange(1024, 65535)} ssh2: ED25519 SHA256:{hx()}{hx()}"
            ),
        ),
        (
            8,
            lambda: (
                f"sshd[{rng.randrange(1000, 65000)}]: pam_unix(sshd:session): session opened for user "
                f"{rng.choice(users)}(uid={rng.randrange(0, 5000)}) by (uid=0)"
            ),
        ),
        (
            8,
            lambda: (
                f"sshd[{rng.randrange(1000, 65000)}]: Disconnected from user {rng.choice(users)} {ip()} "
                f"port {rng.randrange(1024, 65535)}"
            ),
        ),
        (10, lambda: f"systemd[1]: Started Session {rng.randrange(1, 99999)} of User {rng.choice(users)}."),
        (6, lambda: f"systemd[1]: session-{rng.randrange(1, 99999)}.scope: Deactivated successfully."),
        (6, lambda: f"CRON[{rng.randrange(1000, 65000)}]: (root) CMD (/usr/lib/sa/sa1 1 1)"),
        (
            5,
            lambda: (
                f"kernel: [{rng.uniform(1, 9e5):.6f}] mlx5_core 0000:{rng.randrange(256):02x}:00.0 "
                f"{rng.choice(ifs)}: Link up"
            ),
        ),
        (
            3,
            lambda: (
                f"kernel: [{rng.uniform(1, 9e5):.6f}] pcieport 0000:{rng.randrange(256):02x}:01.0: AER: "
                f"Corrected error received: 0000:{rng.randrange(256):02x}:00.0"
            ),
        ),
        (
            2,
            lambda: (
                f"kernel: [{rng.uniform(1, 9e5):.6f}] EDAC MC{rng.randrange(4)}: 1 CE memory read error on "
                f"CPU_SrcID#{rng.randrange(2)}_MC#{rng.randrange(4)}_Chan#{rng.randrange(8)}_DIMM#0 "
                f"(channel:{rng.randrange(8)} slot:0 page:0x{hx()} offset:0x0 grain:32 syndrome:0x0)"
            ),
        ),
        (
            1,
            lambda: (
                f"kernel: [{rng.uniform(1, 9e5):.6f}] Out of memory: Killed process {rng.randrange(1000, 65000)} "
                f"({rng.choice(procs)}) total-vm:{rng.randrange(10**6, 10**8)}kB, anon-rss:"
                f"{rng.randrange(10**6, 10**8)}kB, file-rss:0kB, shmem-rss:0kB, UID:{rng.randrange(5000)}"
            ),
        ),
        (
            8,
            lambda: (
                f"slurmd[{rng.randrange(1000, 9000)}]: launch task StepId={rng.randrange(10**5, 10**7)}."
                f"{rng.randrange(4)} request from UID:{rng.randrange(5000)} GID:{rng.randrange(5000)} "
                f"HOST:{ip()} PORT:{rng.randrange(1024, 65535)}"
            ),
        ),
        (5, lambda: f"slurmstepd[{rng.randrange(1000, 65000)}]: done with job {rng.randrange(10**5, 10**7)}"),
        (
            4,
            lambda: (
                f"nvidia-persistenced[{rng.randrange(1000, 9000)}]: device 0000:{rng.choice(pcis)[5:]}.0 - "
                f"persistence mode enabled."
            ),
        ),
        (
            5,
            lambda: (
                f"nv-hostengine[{rng.randrange(1000, 9000)}]: DCGM field {rng.randrange(100, 1200)} watch "
                f"updated, frequency {rng.choice([1, 5, 10, 30])} s for GPU {rng.randrange(8)}"
            ),
        ),
        (
            6,
            lambda: (
                f'containerd[{rng.randrange(1000, 9000)}]: time="2024-11-23T19:{rng.randrange(60):02d}:'
                f'{rng.randrange(60):02d}.{rng.randrange(10**9):09d}Z" level=info msg="shim disconnected" '
                f"id={hx()}{hx()}{hx()}{hx()} namespace=k8s.io"
            ),
        ),
        (
            4,
            lambda: (
                f"kubelet[{rng.randrange(1000, 9000)}]: I1123 19:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
                f".{rng.randrange(10**6):06d} {rng.randrange(1000, 9000)} kubelet.go:{rng.randrange(100, 3000)}] "
                f'"SyncLoop UPDATE" source="api" pods=["train/job-{rng.randrange(10**5)}-worker-'
                f'{rng.randrange(64)}"]'
            ),
        ),
        (2, lambda: f"chronyd[{rng.randrange(500, 900)}]: Selected source {ip()} (ntp{rng.randrange(4)}.site.local)"),
        (
            1,
            lambda: (
                f"kernel: [{rng.uniform(1, 9e5):.6f}] nvidia-peermem nv_get_p2p_free_callback:127 ERROR "
                f"detected invalid context, skipping further processing"
            ),
        ),
        (
            1,
            lambda: (
                f"kernel: [{rng.uniform(1, 9e5):.6f}] ib0: Port {rng.randrange(1, 3)} link state changed to "
                f"{rng.choice(['ACTIVE', 'DOWN', 'INIT'])}"
            ),
        ),
    ]
    weights = [w for w, _ in gens]
    fns = [f for _, f in gens]
    t0 = 1_732_390_200
    out = []
    for i in range(n):
        host = rng.choice(hosts)
        t = t0 + i // 400  # ~400 lines/s over the site
        stamp = time.strftime("%b %d %H:%M:%S", time.gmtime(t))
        if rng.random() < 0.01:
            code, text = rng.choice(xids)
            msg = text.format(a=rng.randrange(8), b=rng.randrange(8), h=hx())
            pid = rng.choice([str(rng.randrange(1000, 65000)), "'<unknown>'", "N/A"])
            gi = f" GPU-I:{rng.randrange(1, 14):02d}" if rng.random() < 0.1 else ""
            body = f"kernel: NVRM: Xid (PCI:{rng.choice(pcis)}{gi}): {code}, pid={pid}, name={rng.choice(procs)}, {msg}"
            out.append(f"{stamp} {host} {body}")
        else:
            out.append(f"{stamp} {host} {rng.choices(fns, weights)[0]()}")
    return out


def run(n: int, repeats: int) -> dict[str, float]:
    import numpy as np
    from drain3 import TemplateMiner
    from drain3.template_miner_config import TemplateMinerConfig

    from powerplane.config import load_scenario
    from powerplane.ops.logs import Correlator, LogMiner, LogStore, twin_pci_map
    from powerplane.topology.tree import Topology

    topo = Topology.from_site(load_scenario("texas")[0])
    lines = synthetic_lines(n, topo.node_names)
    gpu_job = (np.arange(topo.n_gpus) // 64).astype(np.int64)
    corr = Correlator(topo, twin_pci_map(topo), gpu_job)
    r: dict[str, float] = {"lines": n, "mb": sum(map(len, lines)) / 1e6}

    def raw() -> None:
        cfg = TemplateMinerConfig()
        cfg.profiling_enabled = False
        tm = TemplateMiner(config=cfg)
        for line in lines:
            tm.add_log_message(line)
        r["raw_templates"] = len(tm.drain.clusters)

    def ours() -> None:
        m = LogMiner(corr, year=2024)
        events = m.process_lines(lines)
        r["templates"] = len(m.templates)
        r["drain_calls"] = m.drain_calls
        r["xid"] = sum(e.xid is not None for e in events)
        r["gpu_resolved"] = sum(e.gpu >= 0 for e in events)
        r["anomalous"] = sum(e.anomaly_score >= 0.5 for e in events)

    index_s: list[float] = []

    def ours_store() -> None:
        m = LogMiner(corr, year=2024)
        with tempfile.TemporaryDirectory() as d, LogStore(os.path.join(d, "logs.duckdb")) as store:
            batch = 20_000
            for i in range(0, n, batch):
                store.add(m.process_lines(lines[i : i + batch]))
            r["stored"] = store.count()
            t0 = time.perf_counter()
            store.wait_indexed(600.0)  # the token index catches up (the writer indexes when it is idle)
            index_s.append(time.perf_counter() - t0)

    r["raw_s"] = median_s(raw, repeats)
    r["ours_s"] = median_s(ours, repeats)
    r["store_s"] = median_s(ours_store, repeats)
    r["index_s"] = sorted(index_s)[len(index_s) // 2]  # median catch-up after the last line (not in store_s)
    return r


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{platform.system()} {platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; load average {load} when started"
    )


def table(r: dict[str, float]) -> list[str]:
    n = r["lines"]
    return [
        "| case | lines | s | lines/s | templates | Drain3 calls |",
        "|---|---|---|---|---|---|",
        f"| drain3 raw `add_log_message` | {n:,.0f} | {r['raw_s']:.2f} | {n / r['raw_s']:,.0f} "
        f"| {r['raw_templates']:,.0f} | {n:,.0f} |",
        f"| LogMiner (mine + score + correlate) | {n:,.0f} | {r['ours_s']:.2f} | {n / r['ours_s']:,.0f} "
        f"| {r['templates']:,.0f} | {r['drain_calls']:,.0f} |",
        f"| LogMiner + DuckDB store (index built when the writer is idle) | {n:,.0f} | {r['store_s']:.2f} "
        f"| {n / r['store_s']:,.0f} | {r['templates']:,.0f} | {r['drain_calls']:,.0f} |",
        f"| ... + waiting for the token index to catch up | {n:,.0f} | {r['store_s'] + r['index_s']:.2f} "
        f"| {n / (r['store_s'] + r['index_s']):,.0f} | {r['templates']:,.0f} | {r['drain_calls']:,.0f} |",
    ]


RATE_HEADING = "## Operations: log ingest rates"
RATE_HEADER = [
    "| date | machine | lines | drain3 raw lines/s | LogMiner lines/s | LogMiner + store lines/s "
    "| + index caught up lines/s | target | note |",
    "|---|---|---|---|---|---|---|---|---|",
]
RATE_NOTE = (
    "`python benchmarks/bench_logs.py --record`: the synthetic syslog mix of 1,280 `texas` hosts (see the section "
    "above); raw Drain3 on every line is the baseline, in the same run. The store (ops/logstore.py) writes from a "
    "thread and indexes tokens (hashed words of the program tag and message) when idle; search scans what is not "
    "indexed yet. Target: >= 50,000 lines/s with template mining and the store."
)


def record(r: dict[str, float], note: str) -> Path:
    day = time.strftime("%Y-%m-%d", time.gmtime())
    n = r["lines"]
    row = (
        f"| {day} | {machine_info()} | {n:,.0f} | {n / r['raw_s']:,.0f} | {n / r['ours_s']:,.0f} "
        f"| {n / r['store_s']:,.0f} | {n / (r['store_s'] + r['index_s']):,.0f} | >= 50,000 | {note} |"
    )
    return add_table_row(HERE / "BENCHMARKS.md", RATE_HEADING, RATE_NOTE, RATE_HEADER, row)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record", action="store_true", help="add a row to benchmarks/BENCHMARKS.md")
    ap.add_argument("--note", default="", help="note for the recorded row")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    r = run(args.lines, args.repeats)
    print(machine())
    print("\n".join(table(r)))
    if args.record:
        note = args.note or f"load {load:.1f} at start; shared machine, other jobs running"
        print(f"recorded in {record(r, note)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
