"""GPU pool arrays, request checks and placement: tiny pools with exact answers."""

import numpy as np
import pytest

from powerplane.config import load_scenario
from powerplane.control.scheduler.policy import fits_on_nodes, fragmentation_milli, place
from powerplane.control.scheduler.pool import GpuPool
from powerplane.control.scheduler.request import DEFAULT_CLASSES, JobRequest, Shape, check_request
from powerplane.topology import Topology

NAMES = tuple(c.name for c in DEFAULT_CLASSES)


def _pool() -> GpuPool:
    """Two 4-GPU H100 nodes (rack 0) and one 2-GPU MI300X node (rack 1)."""
    return GpuPool.build([4, 4, 2], ["H100", "H100", "MI300X"], nodes_per_rack=2)


def _at(pool: GpuPool, shape: Shape, policy: str = "binpack") -> list[int] | None:
    gpus = place(pool, shape, policy)  # type: ignore[arg-type]
    return None if gpus is None else gpus.tolist()


def _take(pool: GpuPool, gpus: list[int], milli: int) -> None:
    g = np.array(gpus, dtype=np.int64)
    pool.allocate(g, milli, pool.proportional_mem_mib(milli)[g])


def test_build_structure_and_models() -> None:
    pool = _pool()
    assert pool.n_gpus == 10 and pool.n_nodes == 3 and pool.n_racks == 2
    assert pool.models == ["H100", "MI300X"] and pool.vendors == ["NVIDIA", "AMD"]
    assert pool.node_first_gpu.tolist() == [0, 4, 8]
    assert pool.gpu_node.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert pool.mem_mib_capacity[0] == 80 * 1024 and pool.mem_mib_capacity[9] == 192 * 1024
    assert pool.draw_w[0] == 590.0 and pool.draw_w[9] == 640.0
    assert pool.node_whole_free.tolist() == [4, 4, 2]
    assert pool.nodes_gpus(np.array([2, 0])).tolist() == [8, 9, 0, 1, 2, 3]


def test_from_topology_matches_site_order() -> None:
    site, _ = load_scenario("small")
    topo = Topology.from_site(site)
    pool = GpuPool.from_topology(topo)
    assert pool.n_gpus == topo.n_gpus and pool.n_nodes == topo.n_nodes
    assert np.array_equal(pool.gpu_node, topo.gpu_node)
    assert np.array_equal(pool.node_rack, topo.node_rack)


def test_node_list_scale_keeps_the_mix() -> None:
    import pandas as pd

    df = pd.DataFrame(
        {"sn": [f"n{i}" for i in range(30)], "gpu": [8] * 20 + [2] * 10, "model": ["A"] * 20 + ["B"] * 10}
    )
    pool = GpuPool.from_node_list(df, scale=0.1)
    assert pool.node_names == ["n0", "n10", "n20"]  # 2 of 20 A/8-GPU nodes, 1 of 10 B/2-GPU nodes
    assert pool.node_n_gpus.tolist() == [8, 8, 2]


def test_allocate_release_and_refusals() -> None:
    pool = _pool()
    _take(pool, [0, 1], 600)
    assert pool.free_milli[:3].tolist() == [400, 400, 1000]
    assert pool.allocated_milli == 1200
    assert pool.node_whole_free.tolist() == [2, 4, 2]
    with pytest.raises(ValueError, match="over-allocation"):
        _take(pool, [0], 500)
    pool.release(np.array([0, 1]), 600, pool.proportional_mem_mib(600)[[0, 1]])
    assert pool.free_milli[:2].tolist() == [1000, 1000] and pool.allocated_milli == 0
    assert pool.node_whole_free.tolist() == [4, 4, 2]
    with pytest.raises(ValueError, match="never allocated"):
        pool.release(np.array([0]), 1, np.array([0]))


def test_node_down_hides_capacity() -> None:
    pool = _pool()
    pool.set_node_up(1, False)
    assert pool.free_milli[4:8].tolist() == [0, 0, 0, 0] and pool.node_whole_free[1] == 0
    assert place(pool, Shape(4, 1000, 0, None)) is not None  # node 0
    pool.set_node_up(1, True)
    assert pool.free_milli[4:8].tolist() == [1000] * 4 and pool.node_whole_free[1] == 4


def test_fraction_binpack_spread_firstfit() -> None:
    pool = _pool()
    _take(pool, [1], 500)  # GPU 1 has 500 free
    quarter = Shape(1, 250, 0, None)
    assert _at(pool, quarter, "binpack") == [1]  # best fit: the partly used GPU
    assert _at(pool, quarter, "firstfit") == [0]  # the first GPU with room
    assert _at(pool, quarter, "spread") == [4]  # most free, on the node with most whole GPUs
    big = Shape(1, 600, 0, None)  # does not fit on GPU 1: binpack takes a whole GPU on the fullest node
    assert _at(pool, big, "binpack") == [8]


def test_whole_gpus_best_fit_node_and_model() -> None:
    pool = _pool()
    _take(pool, [0], 100)  # node 0: 3 whole GPUs left
    two = Shape(2, 1000, 0, None)
    assert _at(pool, two, "binpack") == [8, 9]  # the 2-GPU node fits exactly
    assert _at(pool, two, "spread") == [4, 5]
    assert _at(pool, two, "firstfit") == [1, 2]
    h100 = Shape(2, 1000, 0, (0,))
    assert _at(pool, h100, "binpack") == [1, 2]  # 3 whole left on node 0 beats 4 on node 1
    assert place(pool, Shape(3, 1000, 0, (1,))) is None  # MI300X nodes hold 2


def test_fraction_on_several_gpus_of_one_node() -> None:
    pool = _pool()
    _take(pool, [0, 1, 2], 600)
    half2 = Shape(2, 500, 0, None)
    # Node 0 has only one GPU with 500 free; binpack picks the node with least free that fits: node 2 (2000).
    assert _at(pool, half2, "binpack") == [8, 9]
    assert _at(pool, half2, "firstfit") == [4, 5]  # one node: GPU 3 alone is not enough


def test_gang_packs_a_rack_then_spans_the_fewest() -> None:
    pool = GpuPool.build([4] * 8, ["H100"] * 8, nodes_per_rack=2)  # 4 racks of 2 nodes
    _take(pool, [0, 8], 1000)  # one GPU busy on node 0 (rack 0) and on node 2 (rack 1)
    assert _at(pool, Shape(8, 1000, 0, None)) == list(range(16, 24))  # whole rack 2
    # 6 GPUs: the best-fitting rack is rack 0 (7 free): node 1 whole, then 2 on node 0.
    assert _at(pool, Shape(6, 1000, 0, None)) == [1, 2, 4, 5, 6, 7]
    # 12 GPUs: no rack holds them; racks 2 and 3 (8 free each) do, fully free nodes first.
    assert _at(pool, Shape(12, 1000, 0, None)) == list(range(16, 28))
    assert _at(pool, Shape(12, 1000, 0, None), "firstfit") == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13]
    assert place(pool, Shape(31, 1000, 0, None)) is None


def test_explicit_memory_is_a_second_dimension() -> None:
    pool = GpuPool.build([2], ["H100"])
    pool.allocate(np.array([0]), 100, np.array([70_000]), explicit_mem=True)
    assert not pool.mem_follows_compute
    # GPU 0 has 900 milli but only ~11.9 GiB left: a proportional half (40 GiB) goes to GPU 1.
    assert _at(pool, Shape(1, 500, 0, None)) == [1]
    assert _at(pool, Shape(1, 100, 10_000, None)) == [0]
    assert fits_on_nodes(pool, Shape(1, 100, 20_000, None), np.array([0]), pool.free_milli, pool.free_mem_mib)


def test_check_request_reasons() -> None:
    pool = _pool()

    def reason(**kw: object) -> str:
        shape, why = check_request(JobRequest("j", **kw), pool, NAMES)  # type: ignore[arg-type]
        assert shape is None
        return why

    assert reason(gpus=11) == "needs 11 GPUs, the pool has 10"
    assert reason(gpus=3, model="MI300X") == "needs 3 GPUs, the pool has 2 of model MI300X"
    assert "unknown GPU model 'B200'" in reason(model="B200")
    assert "unknown GPU vendor 'intel'" in reason(model="vendor:Intel")
    assert reason(fraction=0.3) == "fraction 0.3 not allowed; allowed: 1/8, 1/4, 1/2, 1"
    assert "one node: at most 4 GPUs" in reason(gpus=5, fraction=0.5)
    assert reason(compute_pct=0) == "compute_pct must be 1-100 %, got 0"
    assert "largest GPU of model H100 has 81920 MiB" in reason(compute_pct=50, mem_mib=100_000, model="H100")
    assert "unknown priority class 'urgent'" in reason(priority="urgent")
    assert reason(gpus=0) == "gpus must be at least 1, got 0"
    shape, why = check_request(JobRequest("j", gpus=2, model="vendor:AMD"), pool, NAMES)
    assert shape == Shape(2, 1000, 0, (1,)) and why == ""
    shape, _ = check_request(JobRequest("j", compute_pct=46, mem_mib=8192), pool, NAMES)
    assert shape == Shape(1, 460, 8192, None)


def test_fragmentation_exact() -> None:
    pool = GpuPool.build([2, 2], ["H100", "H100"])
    _take(pool, [0], 700)  # node 0: 300 + 1000 free; node 1: 2000 free
    shapes = [Shape(1, 500, 0, None), Shape(2, 1000, 0, None)]
    # Half-GPU task: only GPU 0's 300 is unusable. Two-GPU task: node 0 cannot host it -> its 1300 is fragment.
    assert fragmentation_milli(pool, shapes, [1.0, 0.0]) == 300.0
    assert fragmentation_milli(pool, shapes, [0.0, 1.0]) == 1300.0
    assert fragmentation_milli(pool, shapes, [0.5, 0.5]) == 800.0
