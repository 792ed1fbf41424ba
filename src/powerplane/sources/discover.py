"""Build a topology from what dcgm-exporter endpoints report, for sites without a site file.

dcgm-exporter tells which host holds which GPU (``Hostname``/``hostname``, ``gpu``, ``UUID``, ``modelName``) but not
the physical layout, so discovered hosts are laid out flat: one hall, one row, one rack per host. Rollups above the
node level are then only as meaningful as that; give ``--scenario`` with a site file for a real layout.
"""

from __future__ import annotations

import numpy as np

from powerplane.core.errors import SourceError
from powerplane.sources.dcgm import DcgmScraper
from powerplane.sources.nvml import gpu_model
from powerplane.topology import Topology

HOST_LABELS = ("Hostname", "hostname")


def discover_topology(scraper: DcgmScraper, site_name: str = "discovered") -> Topology:
    """Fetch every target once and lay out the hosts and GPUs they report."""
    hosts: dict[str, dict[int, tuple[str, str]]] = {}
    for fetched in scraper.fetch():
        parsed = fetched.parsed
        if parsed is None:
            continue
        labels = parsed.labels
        host_col = next((labels.column(h) for h in HOST_LABELS if h in labels), None)
        gpu_col = labels.column("gpu") if "gpu" in labels else None
        if host_col is None or gpu_col is None:
            continue
        uuid_col = labels.column("UUID") if "UUID" in labels else np.full(len(labels), None, dtype=object)
        model_col = labels.column("modelName") if "modelName" in labels else np.full(len(labels), None, dtype=object)
        for host, gpu, uuid, model in zip(host_col, gpu_col, uuid_col, model_col, strict=True):
            if host is None or gpu is None or not str(gpu).isdigit():
                continue
            hosts.setdefault(str(host), {})[int(gpu)] = (str(uuid or f"{host}/gpu{gpu}"), str(model or "unknown"))
    if not hosts:
        raise SourceError("no target reported any GPU with Hostname/hostname and gpu labels; nothing to track")
    node_names = sorted(hosts)
    gpu_node, local, uuids, models = [], [], [], []
    for n, host in enumerate(node_names):
        for idx in sorted(hosts[host]):
            uuid, model = hosts[host][idx]
            gpu_node.append(n)
            local.append(idx)
            uuids.append(uuid)
            models.append(gpu_model(model)[0])
    distinct = list(dict.fromkeys(models))
    n_nodes = len(node_names)
    return Topology(
        site_name=site_name,
        hall_names=[site_name],
        row_names=[f"{site_name}/r00"],
        rack_names=[f"{site_name}/r00/{h}" for h in node_names],
        node_names=node_names,
        gpu_uuids=uuids,
        gpu_models=distinct,
        gpu_node=np.array(gpu_node, dtype=np.int64),
        node_rack=np.arange(n_nodes, dtype=np.int64),
        rack_row=np.zeros(n_nodes, dtype=np.int64),
        row_hall=np.zeros(1, dtype=np.int64),
        gpu_model_idx=np.array([distinct.index(m) for m in models], dtype=np.int64),
        gpu_local_index=np.array(local, dtype=np.int64),
        rack_cooling_unit=np.zeros(n_nodes, dtype=np.int64),
        cooling_unit_hall=np.zeros(1, dtype=np.int64),
        hall_busbar_limit_w=np.array([np.inf]),
    )
