"""Realistic dcgm-exporter scrape text for a :class:`~powerplane.topology.tree.Topology`.

Used by tests, benchmarks and demos. The text looks like what ``dcgm-exporter`` (NVIDIA, port 9400) serves:
``# HELP`` / ``# TYPE`` lines, then one family at a time with one sample per GPU, each carrying the same per-GPU
label block (``gpu``, ``UUID``, ``pci_bus_id``, ``device``, ``modelName``, ``Hostname``, ``DCGM_FI_DRIVER_VERSION``),
optionally MIG labels (``GPU_I_PROFILE``, ``GPU_I_ID``) and Kubernetes pod labels (``pod``, ``namespace``,
``container``). Values are drawn from a seeded generator so that a (topology, t_ms, seed) triple always gives the
same text.

Metric names and help strings come from dcgm-exporter's ``etc/default-counters.csv`` (shipped in
``powerplane/data``). A few of the 20 used here are commented out in that file (ECC volatile totals) or come from
DCGM's field list rather than the CSV (``DCGM_FI_DEV_POWER_MGMT_LIMIT``, ``DCGM_FI_DEV_CLOCK_THROTTLE_REASONS``);
dcgm-exporter exports them when they are enabled in a custom counters file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from powerplane.topology.tree import Topology

__all__ = [
    "DCGM_SYNTH_METRICS",
    "SynthMetric",
    "gpu_label_blocks",
    "synth_scrape",
    "synth_scrape_per_host",
]


@dataclass(frozen=True)
class SynthMetric:
    name: str
    type: str  # "gauge" | "counter"
    help: str


# Ordered by relevance to power tracking: ``metrics=N`` takes the first N.
DCGM_SYNTH_METRICS: tuple[SynthMetric, ...] = (
    SynthMetric("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    SynthMetric("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ)."),
    SynthMetric("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    SynthMetric("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C)."),
    SynthMetric("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    SynthMetric("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    SynthMetric("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    SynthMetric("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
    SynthMetric("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    SynthMetric("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries."),
    SynthMetric(
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "counter",
        "Total number of NVLink bandwidth counters for all lanes.",
    ),
    SynthMetric("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "Total number of single-bit volatile ECC errors."),
    SynthMetric("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Total number of double-bit volatile ECC errors."),
    SynthMetric("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    SynthMetric("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    SynthMetric("DCGM_FI_DEV_POWER_MGMT_LIMIT", "gauge", "Power management limit (in W)."),
    SynthMetric("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge", "Current clock throttle reasons (bitmask)."),
    SynthMetric("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Ratio of cycles the tensor (HMMA) pipe is active."),
    SynthMetric(
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "gauge",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
    ),
    SynthMetric("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active."),
)

# Per-model constants: (idle W, TDP W, framebuffer MiB, max SM clock MHz, memory clock MHz, slowdown temp C).
_MODEL_SPECS: dict[str, tuple[float, float, int, int, int, float]] = {
    "B200": (160.0, 1000.0, 183359, 1965, 3996, 87.0),
    "H200": (110.0, 700.0, 143771, 1980, 3201, 87.0),
    "H100": (90.0, 700.0, 81559, 1980, 2619, 87.0),
    "A100": (55.0, 400.0, 81920, 1410, 1593, 85.0),
}
_DEFAULT_SPEC = (80.0, 700.0, 81559, 1980, 2619, 87.0)
_MIG_LAYOUTS = {
    "B200": (("3g.90gb", 2), ("2g.45gb", 5), ("1g.23gb", 13), ("1g.23gb", 14)),
    "H200": (("3g.71gb", 2), ("2g.35gb", 5), ("1g.18gb", 13), ("1g.18gb", 14)),
}
_MIG_DEFAULT = (("3g.40gb", 2), ("2g.20gb", 5), ("1g.10gb", 13), ("1g.10gb", 14))
_DRIVER = "550.54.15"
# Which metrics differ between the MIG instances of one GPU (the others are device-level and repeat).
# (Profiling ratios are per instance; power, temperatures, clocks and counters are per device.)
_PER_INSTANCE = frozenset(
    {"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"}
)


def _model_name(model: str) -> str:
    if model.upper().startswith(("NVIDIA", "AMD")):
        return model
    return f"AMD Instinct {model}" if model.upper().startswith("MI") else f"NVIDIA {model}"


def _pci_bus_id(local: int) -> str:
    # An HGX board: eight GPUs on distinct PCIe buses.
    buses = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
    bus = buses[local % len(buses)] + 0x100 * (local // len(buses))
    return f"00000000:{bus:02X}:00.0"


def gpu_label_blocks(
    topology: Topology,
    hostname_label: str = "Hostname",
    pods: bool = False,
    seed: int = 0,
) -> list[str]:
    """The ``{...}`` label block every metric carries for each GPU (without MIG labels), in GPU index order."""
    rng = np.random.default_rng([seed, 7])
    pod_labels: list[str] = [""] * topology.n_gpus
    if pods:
        # Jobs occupy whole nodes; about one node in eight is idle (empty pod labels, as the exporter writes them).
        pod_labels = [',container="",namespace="",pod=""'] * topology.n_gpus
        n_nodes = topology.n_nodes
        busy = rng.random(n_nodes) >= 0.125
        job_of_node = np.cumsum(rng.random(n_nodes) < 0.1)
        for g in range(topology.n_gpus):
            n = int(topology.gpu_node[g])
            if busy[n]:
                job = int(job_of_node[n])
                pod_labels[g] = f',container="worker",namespace="ml",pod="train-{job}-{n % 64}"'
    blocks: list[str] = []
    node_names = topology.node_names
    models = [_model_name(m) for m in topology.gpu_models]
    for g in range(topology.n_gpus):
        local = int(topology.gpu_local_index[g])
        blocks.append(
            f'{{gpu="{local}",UUID="{topology.gpu_uuids[g]}",pci_bus_id="{_pci_bus_id(local)}",'
            f'device="nvidia{local}",modelName="{models[topology.gpu_model_idx[g]]}",'
            f'{hostname_label}="{node_names[topology.gpu_node[g]]}",DCGM_FI_DRIVER_VERSION="{_DRIVER}"'
            f"{pod_labels[g]}}}"
        )
    return blocks


def _fmt_float(values: NDArray[np.float64], decimals: int) -> list[str]:
    return [f"{v:.{decimals}f}" for v in values.tolist()]


def _fmt_int(values: NDArray[np.float64]) -> list[str]:
    return [str(v) for v in np.rint(values).astype(np.int64).tolist()]


def _values(topology: Topology, names: Sequence[str], t_ms: int, seed: int) -> dict[str, list[str]]:
    """Formatted per-GPU values of every metric (device-level; MIG instances add variation later)."""
    n = topology.n_gpus
    rng = np.random.default_rng([seed, t_ms & 0xFFFFFFFF, (t_ms >> 32) & 0xFFFFFFFF])
    spec = np.array(
        [_MODEL_SPECS.get(m.upper().removeprefix("NVIDIA ").split()[0], _DEFAULT_SPEC) for m in topology.gpu_models]
    )[topology.gpu_model_idx]
    idle, tdp, fb_total, sm_max, mem_clk, slowdown = (spec[:, k] for k in range(6))
    # Utilisation: mostly busy training nodes, some idle ones, a node-level component plus per-GPU jitter.
    node_rng = np.random.default_rng([seed, 11])
    node_busy = node_rng.random(topology.n_nodes) >= 0.12
    busy = node_busy[topology.gpu_node]
    util = np.where(busy, np.clip(rng.normal(0.9, 0.08, n), 0.0, 1.0), rng.uniform(0.0, 0.03, n))
    power = idle + (tdp - idle) * util**1.3 + rng.normal(0.0, 0.01, n) * tdp
    power = np.clip(power, idle * 0.8, tdp * 1.02)
    # Counters since boot grow with t_ms (an epoch time, say); nodes reboot weekly so that they stay in range.
    uptime_s = 86400.0 * (3.0 + 40.0 * node_rng.random(topology.n_nodes))[topology.gpu_node]
    uptime_s += (t_ms / 1000.0) % (7 * 86400.0)
    energy_mj = uptime_s * (idle + 0.6 * (tdp - idle)) * 1e3
    gpu_temp = 32.0 + util * 40.0 + rng.normal(0.0, 1.5, n)
    mem_temp = gpu_temp + 4.0 + rng.normal(0.0, 1.0, n)
    throttle = np.where(power > 0.97 * tdp, 4.0, 0.0) + np.where(gpu_temp > slowdown - 3, 8.0, 0.0)
    sm_clock = np.where(busy, sm_max - np.where(throttle > 0, 300.0, 0.0) - rng.integers(0, 60, n), 345.0)
    fb_used = np.where(busy, fb_total * rng.uniform(0.6, 0.97, n), rng.uniform(0, 600, n))
    xid = np.where(rng.random(n) < 2e-4, rng.choice([13.0, 31.0, 43.0, 48.0, 63.0, 74.0, 79.0, 94.0], n), 0.0)
    # NVLink byte counters run past 2**53 on long-lived nodes: printed as plain integers, read back as float64.
    nvlink = uptime_s * util * 4.5e11 * (0.5 + node_rng.random(topology.n_nodes)[topology.gpu_node])
    pcie_replay = np.where(rng.random(n) < 0.01, rng.integers(1, 40, n), 0).astype(np.float64)
    sbe = np.where(rng.random(n) < 0.02, rng.integers(1, 500, n), 0).astype(np.float64)
    dbe = np.where(rng.random(n) < 1e-3, 1.0, 0.0)
    tensor = np.clip(util * rng.uniform(0.35, 0.7, n), 0.0, 1.0)
    dram = np.clip(util * rng.uniform(0.2, 0.6, n), 0.0, 1.0)
    gr = np.clip(util * rng.uniform(0.85, 1.0, n), 0.0, 1.0)
    makers = {
        "DCGM_FI_DEV_POWER_USAGE": lambda: _fmt_float(power, 3),
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": lambda: _fmt_int(energy_mj),
        "DCGM_FI_DEV_GPU_TEMP": lambda: _fmt_int(gpu_temp),
        "DCGM_FI_DEV_MEMORY_TEMP": lambda: _fmt_int(mem_temp),
        "DCGM_FI_DEV_GPU_UTIL": lambda: _fmt_int(util * 100.0),
        "DCGM_FI_DEV_MEM_COPY_UTIL": lambda: _fmt_int(dram * 100.0),
        "DCGM_FI_DEV_SM_CLOCK": lambda: _fmt_int(sm_clock),
        "DCGM_FI_DEV_MEM_CLOCK": lambda: _fmt_int(mem_clk),
        "DCGM_FI_DEV_XID_ERRORS": lambda: _fmt_int(xid),
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": lambda: _fmt_int(pcie_replay),
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": lambda: _fmt_int(nvlink),
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": lambda: _fmt_int(sbe),
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": lambda: _fmt_int(dbe),
        "DCGM_FI_DEV_FB_USED": lambda: _fmt_int(fb_used),
        "DCGM_FI_DEV_FB_FREE": lambda: _fmt_int(fb_total - fb_used - 500.0),
        "DCGM_FI_DEV_POWER_MGMT_LIMIT": lambda: _fmt_float(tdp, 3),
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": lambda: _fmt_int(throttle),
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": lambda: _fmt_float(tensor, 6),
        "DCGM_FI_PROF_DRAM_ACTIVE": lambda: _fmt_float(dram, 6),
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": lambda: _fmt_float(gr, 6),
    }
    return {name: makers[name]() for name in names}


def _select(metrics: int | Sequence[str]) -> list[SynthMetric]:
    by_name = {m.name: m for m in DCGM_SYNTH_METRICS}
    if isinstance(metrics, int):
        if not 1 <= metrics <= len(DCGM_SYNTH_METRICS):
            raise ValueError(f"metrics must be in 1..{len(DCGM_SYNTH_METRICS)}, got {metrics}")
        chosen = list(DCGM_SYNTH_METRICS[:metrics])
    else:
        unknown = [m for m in metrics if m not in by_name]
        if unknown:
            raise ValueError(f"unknown synthetic metrics: {unknown}")
        chosen = [by_name[m] for m in metrics]
    # dcgm-exporter emits families in its counters-file order, not ours.
    order = {m.name: i for i, m in enumerate(DCGM_SYNTH_METRICS)}
    return sorted(chosen, key=lambda m: order[m.name])


class _Generator:
    def __init__(
        self,
        topology: Topology,
        t_ms: int | None,
        metrics: int | Sequence[str],
        hostname_label: str,
        mig: bool,
        pods: bool,
        seed: int,
    ) -> None:
        self.metrics = _select(metrics)
        t = 0 if t_ms is None else int(t_ms)
        self.suffix = "\n" if t_ms is None else f" {t}\n"
        self.values = _values(topology, [m.name for m in self.metrics], t, seed)
        self.blocks = gpu_label_blocks(topology, hostname_label, pods, seed)
        self.mig_blocks: dict[int, list[str]] = {}
        if mig:
            # Every fourth node is MIG-partitioned; each of its GPUs carries one series per instance.
            models = topology.gpu_models
            for g in range(topology.n_gpus):
                if int(topology.gpu_node[g]) % 4 != 1:
                    continue
                model = models[topology.gpu_model_idx[g]].upper().removeprefix("NVIDIA ").split()[0]
                layout = _MIG_LAYOUTS.get(model, _MIG_DEFAULT)
                # The exporter writes the instance labels after modelName.
                head, sep, rest = self.blocks[g].partition(f",{hostname_label}=")
                self.mig_blocks[g] = [f'{head},GPU_I_PROFILE="{p}",GPU_I_ID="{i}"{sep}{rest}' for p, i in layout]

    def text(self, gpus: Sequence[int]) -> str:
        parts: list[str] = []
        blocks = self.blocks
        suffix = self.suffix
        for m in self.metrics:
            parts.append(f"# HELP {m.name} {m.help}\n# TYPE {m.name} {m.type}\n")
            vals = self.values[m.name]
            name = m.name
            if not self.mig_blocks:
                parts.append("".join([f"{name}{blocks[g]} {vals[g]}{suffix}" for g in gpus]))
                continue
            per_instance = m.name in _PER_INSTANCE
            lines: list[str] = []
            for g in gpus:
                mig = self.mig_blocks.get(g)
                if mig is None:
                    lines.append(f"{name}{blocks[g]} {vals[g]}{suffix}")
                    continue
                for k, b in enumerate(mig):
                    v = vals[g]
                    if per_instance:
                        # Instance-level counters vary a little around the device figure.
                        scale = 1.0 - 0.15 * k / len(mig)
                        v = f"{float(v) * scale:.6f}"
                    lines.append(f"{name}{b} {v}{suffix}")
            parts.append("".join(lines))
        return "".join(parts)


def synth_scrape(
    topology: Topology,
    t_ms: int | None = None,
    metrics: int | Sequence[str] = 20,
    hostname_label: str = "Hostname",
    mig: bool = False,
    pods: bool = False,
    seed: int = 0,
) -> str:
    """One dcgm-exporter-style scrape covering every GPU of ``topology`` (as a federating proxy would serve it).

    ``t_ms`` (epoch milliseconds) both seeds the values and, when given, is appended to every sample as the
    exposition-format timestamp (dcgm-exporter itself emits none). ``metrics`` is a count (the first N of
    :data:`DCGM_SYNTH_METRICS`) or a list of names. ``hostname_label`` is ``"Hostname"`` (classic builds) or
    ``"hostname"`` (newer builds). ``mig`` partitions the GPUs of every fourth node into MIG instances (one series
    per instance, with ``GPU_I_PROFILE``/``GPU_I_ID``); ``pods`` adds ``container``/``namespace``/``pod`` labels
    to GPUs on busy nodes.
    """
    gen = _Generator(topology, t_ms, metrics, hostname_label, mig, pods, seed)
    return gen.text(range(topology.n_gpus))


def synth_scrape_per_host(
    topology: Topology,
    t_ms: int | None = None,
    metrics: int | Sequence[str] = 20,
    hostname_label: str = "Hostname",
    mig: bool = False,
    pods: bool = False,
    seed: int = 0,
    nodes: Sequence[int] | None = None,
) -> dict[str, str]:
    """One scrape text per node (hostname -> text), as each node's own dcgm-exporter on :9400 would serve it.

    The values are the same as :func:`synth_scrape` with the same arguments. ``nodes`` restricts the output to
    some node indices.
    """
    gen = _Generator(topology, t_ms, metrics, hostname_label, mig, pods, seed)
    starts = topology.segment_starts("gpu", "node")
    counts = np.bincount(topology.gpu_node, minlength=topology.n_nodes)
    chosen = range(topology.n_nodes) if nodes is None else nodes
    out: dict[str, str] = {}
    for n in chosen:
        s = int(starts[n])
        out[topology.node_names[n]] = gen.text(range(s, s + int(counts[n])))
    return out
