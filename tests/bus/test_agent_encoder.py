"""The agent's vectorized encoder: one pass per tick, messages per row, rack or node, every frame its own header."""

from __future__ import annotations

import numpy as np
import pytest

from powerplane.bus import codec
from powerplane.bus.agent import NodeEncoder
from powerplane.config.loader import load_scenario
from powerplane.twin.twin import Twin


@pytest.fixture(scope="module")
def twin() -> Twin:
    site, path = load_scenario("small")
    return Twin(site, path, dt_s=0.1)


@pytest.mark.parametrize(("batch", "n_msgs", "tail"), [("row", 2, "row"), ("rack", 8, "rack"), ("node", 32, "n3")])
def test_messages_follow_the_topology_and_carry_every_node(twin: Twin, batch: str, n_msgs: int, tail: str) -> None:
    topo = twin.topo
    nodes = np.arange(topo.n_nodes)
    enc = NodeEncoder(topo, topo, nodes, nodes, batch)
    frame = twin.read()
    msgs = enc.encode(frame, seq=42, sent_s=1.0)
    assert len(msgs) == n_msgs and msgs[-1][0].startswith("pp.tel.small.hall-1.") and msgs[-1][0].endswith(tail)
    recs = np.concatenate([codec.decode_frames(payload) for _, payload, _ in msgs])
    assert recs["node"].tolist() == nodes.tolist() and (recs["seq"] == 42).all()
    np.testing.assert_allclose(recs["gpu.power_w"].reshape(-1), frame.levels["gpu"]["power_w"], rtol=1e-6)
    np.testing.assert_array_equal(recs["gpu.energy_mj"].reshape(-1), frame.levels["gpu"]["energy_mj"])
    assert sum(n for _, _, n in msgs) == topo.n_nodes


def test_unknown_batch_is_refused(twin: Twin) -> None:
    nodes = np.arange(twin.topo.n_nodes)
    with pytest.raises(ValueError, match="batch must be"):
        NodeEncoder(twin.topo, twin.topo, nodes, nodes, "hall")
