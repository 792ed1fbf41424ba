import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from powerplane.config import load_scenario
from powerplane.config.schema import HallConfig, TopologyConfig
from powerplane.topology import Topology


def _site_with(halls: list[HallConfig]):  # type: ignore[no-untyped-def]
    site, _ = load_scenario("small")
    return site.model_copy(
        update={
            "topology": TopologyConfig(halls=halls),
            "bess": [],
            "cooling": site.cooling.model_copy(update={"failures": []}),
        }
    )


def test_small_topology_counts_and_names() -> None:
    topo = Topology.from_site(load_scenario("small")[0])
    assert (topo.n_gpus, topo.n_nodes, topo.n_racks, topo.n_rows, topo.n_halls) == (256, 32, 8, 2, 1)
    assert topo.gpu_models == ["H100", "MI300X"]
    assert topo.node_names[0] == "hall-1-r00-k00-n0"
    assert len(set(topo.gpu_uuids)) == 256
    assert topo.parent_index("gpu", "rack")[8 * 4] == 1


halls = st.lists(
    st.builds(
        HallConfig,
        name=st.uuids().map(str),
        rows=st.integers(1, 3),
        racks_per_row=st.integers(1, 4),
        nodes_per_rack=st.integers(1, 3),
        gpus_per_node=st.sampled_from([1, 4, 8]),
        busbar_limit_kw=st.just(1000.0),
        cooling_units=st.integers(1, 3),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=40, deadline=None)
@given(halls, st.integers(0, 2**31 - 1))
def test_rollups_equal_the_sum_of_children(hs: list[HallConfig], seed: int) -> None:
    topo = Topology.from_site(_site_with(hs))
    rng = np.random.default_rng(seed)
    power = rng.uniform(0, 700, size=(3, topo.n_gpus))
    for parent in ("node", "rack", "row", "hall", "site"):
        rolled = topo.rollup_sum(power, "gpu", parent)  # type: ignore[arg-type]
        idx = topo.parent_index("gpu", parent)  # type: ignore[arg-type]
        expect = np.stack([np.bincount(idx, weights=p, minlength=topo.count(parent)) for p in power])  # type: ignore[arg-type]
        np.testing.assert_allclose(np.atleast_2d(rolled.T).T.reshape(expect.shape), expect, rtol=1e-12)
        mx = topo.rollup_max(power, "gpu", parent)  # type: ignore[arg-type]
        assert np.all(np.asarray(mx).reshape(3, -1) <= expect + 1e-9)
    # Chained rollups agree with direct ones.
    np.testing.assert_allclose(
        topo.rollup_sum(topo.rollup_sum(power, "gpu", "node"), "node", "hall"),
        topo.rollup_sum(power, "gpu", "hall"),
    )
