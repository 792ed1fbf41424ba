"""Prometheus text exposition of the latest snapshot, computed at scrape time by one collector.

In the manner of prometheus_client's custom ``Collector``: nothing is kept per series between scrapes; the text
is rendered from the snapshot's arrays when ``/metrics`` is asked for. Label strings per entity are built once.
Values that failed validation are left out (Prometheus has no quality flag); coverage says how much is missing.
Names carry base units (watts, celsius, joules, hertz, ratio) as Prometheus conventions ask.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from numpy.typing import NDArray

from powerplane.telemetry.snapshot import Quality, Snapshot
from powerplane.topology import Topology

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (level, metric in the snapshot, exposed name, scale, help)
ENTITY_METRICS: tuple[tuple[str, str, str, float, str], ...] = (
    ("gpu", "power_w", "powerplane_gpu_power_watts", 1.0, "GPU board power."),
    ("gpu", "temp_c", "powerplane_gpu_temperature_celsius", 1.0, "GPU die temperature."),
    ("gpu", "mem_temp_c", "powerplane_gpu_memory_temperature_celsius", 1.0, "GPU memory temperature."),
    ("gpu", "util_pct", "powerplane_gpu_utilization_ratio", 0.01, "GPU utilization."),
    ("gpu", "sm_clock_mhz", "powerplane_gpu_sm_clock_hertz", 1e6, "GPU SM clock."),
    ("gpu", "power_cap_w", "powerplane_gpu_power_limit_watts", 1.0, "GPU enforced power limit."),
    ("node", "power_w", "powerplane_node_power_watts", 1.0, "Node power at the PDU."),
    ("rack", "inlet_temp_c", "powerplane_rack_inlet_temperature_celsius", 1.0, "Rack inlet air temperature."),
)
# (parent level, rollup key, statistic, exposed name, help)
ROLLUP_METRICS: tuple[tuple[str, str, str, str, str], ...] = (
    ("rack", "node.power_w", "sum", "powerplane_rack_power_watts", "Rack power: sum of its nodes that report."),
    ("rack", "gpu.power_w", "sum", "powerplane_rack_gpu_power_watts", "Sum of the rack's GPU power."),
    ("rack", "gpu.temp_c", "max", "powerplane_rack_gpu_temperature_max_celsius", "Hottest GPU of the rack."),
    ("rack", "gpu.power_w", "coverage", "powerplane_rack_gpu_coverage_ratio", "Share of the rack's GPUs reporting."),
    ("row", "node.power_w", "sum", "powerplane_row_power_watts", "Row power: sum of its nodes that report."),
    ("hall", "node.power_w", "sum", "powerplane_hall_power_watts", "Hall power: sum of its nodes that report."),
    ("hall", "gpu.power_w", "sum", "powerplane_hall_gpu_power_watts", "Sum of the hall's GPU power."),
    ("hall", "gpu.power_w", "coverage", "powerplane_hall_gpu_coverage_ratio", "Share of the hall's GPUs reporting."),
    ("site", "gpu.power_w", "sum", "powerplane_site_gpu_power_watts", "Sum of all GPU power."),
    ("site", "gpu.power_w", "coverage", "powerplane_site_gpu_coverage_ratio", "Share of all GPUs reporting."),
)
SITE_METRICS: tuple[tuple[str, str, float, str], ...] = (
    ("facility_power_w", "powerplane_site_facility_power_watts", 1.0, "Facility power (IT + cooling + losses)."),
    ("it_power_w", "powerplane_site_it_power_watts", 1.0, "IT power."),
    (
        "meter_power_w",
        "powerplane_site_grid_power_watts",
        1.0,
        "Grid power at the point of interconnection (import +).",
    ),
    ("renewable_power_w", "powerplane_site_renewable_power_watts", 1.0, "Renewable power used on site."),
    ("frequency_hz", "powerplane_site_grid_frequency_hertz", 1.0, "Grid frequency."),
    ("pue", "powerplane_site_pue_ratio", 1.0, "Power usage effectiveness."),
    ("outdoor_temp_c", "powerplane_site_outdoor_temperature_celsius", 1.0, "Outdoor air temperature."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class SnapshotCollector:
    """Renders a snapshot as Prometheus text. Build once per topology; call :meth:`render` at each scrape."""

    def __init__(self, topology: Topology, site_name: str | None = None) -> None:
        t = topology
        self.topo = t
        node_rack = t.node_rack
        rack_hall = t.parent_index("rack", "hall")
        self._labels: dict[str, list[str]] = {
            "gpu": [
                f'{{gpu="{int(li)}",uuid="{_escape(u)}",node="{_escape(t.node_names[n])}",'
                f'rack="{_escape(t.rack_names[node_rack[n]])}",hall="{_escape(t.hall_names[rack_hall[node_rack[n]]])}"}}'
                for u, n, li in zip(t.gpu_uuids, t.gpu_node, t.gpu_local_index, strict=True)
            ],
            "node": [
                f'{{node="{_escape(name)}",rack="{_escape(t.rack_names[r])}",hall="{_escape(t.hall_names[rack_hall[r]])}"}}'
                for name, r in zip(t.node_names, node_rack, strict=True)
            ],
            "rack": [
                f'{{rack="{_escape(name)}",hall="{_escape(t.hall_names[h])}"}}'
                for name, h in zip(t.rack_names, rack_hall, strict=True)
            ],
            "row": [f'{{row="{_escape(name)}"}}' for name in t.row_names],
            "hall": [f'{{hall="{_escape(name)}"}}' for name in t.hall_names],
            "site": [f'{{site="{_escape(site_name or t.site_name)}"}}'],
        }

    def _family(
        self,
        out: list[str],
        name: str,
        kind: str,
        help_text: str,
        labels: list[str],
        values: NDArray[np.float64],
        keep: NDArray[np.bool_] | None = None,
    ) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        vals = values.tolist()
        if keep is None:
            keep = np.isfinite(values)
        if keep.all():
            out.extend(f"{name}{lab} {v!r}" for lab, v in zip(labels, vals, strict=True))
        else:
            idx = np.flatnonzero(keep).tolist()
            out.extend(f"{name}{labels[i]} {vals[i]!r}" for i in idx)

    def render(self, snap: Snapshot, currency: str = "") -> str:
        out: list[str] = []
        for level, metric, name, scale, help_text in ENTITY_METRICS:
            ld = snap.levels.get(level)
            if ld is None or metric not in ld.values:
                continue
            ok = ld.quality[metric] == Quality.OK
            self._family(out, name, "gauge", help_text, self._labels[level], ld.values[metric] * scale, ok)
        if snap.gpu_energy_kwh.size == self.topo.n_gpus:
            self._family(
                out,
                "powerplane_gpu_energy_joules_total",
                "counter",
                "GPU energy since tracking began.",
                self._labels["gpu"],
                snap.gpu_energy_kwh * 3.6e6,
            )
        for parent, key, stat, name, help_text in ROLLUP_METRICS:
            roll = snap.rollups.get(parent, {}).get(key)
            if roll is None:
                continue
            self._family(out, name, "gauge", help_text, self._labels[parent], np.asarray(getattr(roll, stat), float))
        site = snap.levels.get("site")
        if site is not None:
            for metric, name, scale, help_text in SITE_METRICS:
                if metric in site.values:
                    ok = site.quality[metric] == Quality.OK
                    self._family(out, name, "gauge", help_text, self._labels["site"], site.values[metric] * scale, ok)
        if snap.job_ids.size:
            jl = [f'{{job="{int(j)}"}}' for j in snap.job_ids]
            self._family(out, "powerplane_job_power_watts", "gauge", "Power of a job's GPUs.", jl, snap.job_power_w)
            self._family(
                out,
                "powerplane_job_gpu_coverage_ratio",
                "gauge",
                "Share of a job's GPUs reporting.",
                jl,
                snap.job_coverage,
            )
            self._family(
                out,
                "powerplane_job_energy_joules_total",
                "counter",
                "Energy of a job since tracking began.",
                jl,
                snap.job_energy_kwh * 3.6e6,
            )
            cl = [f'{{job="{int(j)}",currency="{_escape(currency)}"}}' for j in snap.job_ids]
            self._family(
                out,
                "powerplane_job_cost_total",
                "counter",
                "Energy cost of a job under the site tariff.",
                cl,
                snap.job_cost,
            )
        reasons = sorted(snap.rejected_total)
        out.append("# HELP powerplane_rejected_values_total Values flagged by validation, by reason.")
        out.append("# TYPE powerplane_rejected_values_total counter")
        out.extend(
            f'powerplane_rejected_values_total{{reason="{_escape(r)}"}} {snap.rejected_total[r]}' for r in reasons
        )
        out.append("# HELP powerplane_snapshot_timestamp_seconds Time of the latest snapshot.")
        out.append("# TYPE powerplane_snapshot_timestamp_seconds gauge")
        out.append(f"powerplane_snapshot_timestamp_seconds {snap.t_s!r}")
        out.append("# HELP powerplane_snapshots_total Snapshots taken since start.")
        out.append("# TYPE powerplane_snapshots_total counter")
        out.append(f"powerplane_snapshots_total {snap.seq}")
        return "\n".join(out) + "\n"


class MetricsServer:
    """Serves ``/metrics`` from a callable returning the text (rendered at scrape time) on a background thread."""

    def __init__(self, render: Callable[[], str], host: str = "127.0.0.1", port: int = 9464) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                try:
                    body = outer.render().encode()
                except LookupError as exc:  # no snapshot yet
                    self.send_error(503, str(exc))
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.render = render
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
