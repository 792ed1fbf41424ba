"""The hall aggregation without a bus: ticks, duplicates, replays, late frames, takeover from a rollup."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powerplane.bus import codec
from powerplane.bus.hall import HallAggregator
from powerplane.config.loader import load_scenario
from powerplane.topology import Topology


@pytest.fixture(scope="module")
def topo() -> Topology:
    site, _ = load_scenario("small")
    return Topology.from_site(site)


def frames(topo: Topology, nodes: list[int], seq: int | list[int], tick: int) -> np.ndarray:
    rec = np.zeros(len(nodes), dtype=codec.node_dtype(8))
    rec["magic"], rec["version"], rec["n_gpus"] = codec.MAGIC_NODE, codec.SCHEMA_VERSION, 8
    rec["gpu_mask"], rec["node_mask"] = codec.FULL_GPU_MASK, codec.FULL_NODE_MASK
    rec["node"] = nodes
    rec["seq"] = seq
    rec["t_s"] = tick * 0.1
    rec["gpu.power_w"] = 100.0
    rec["node.power_w"] = 1000.0
    return rec


def publish_all(agg: HallAggregator, force: bool = False) -> list[codec.HallRollup]:
    out = []
    for w in agg.due(force):
        out.append(agg.rollup(w, epoch=1))
        agg.published(w)
    return out


def test_tick_closes_when_every_node_reported(topo: Topology) -> None:
    agg = HallAggregator(topo, 0)
    n = agg.n_nodes
    agg.add(frames(topo, list(range(n - 1)), 1, 100))
    assert publish_all(agg) == []
    agg.add(frames(topo, [n - 1], 1, 100))
    (r,) = publish_all(agg)
    assert r.tick == 100 and r.coverage == 1.0 and r.frames.size == n
    assert r.gpu_power_w == pytest.approx(100.0 * 8 * n)
    assert r.contig_seq.tolist() == [1] * n


def test_tick_closes_on_newer_ticks_with_partial_coverage(topo: Topology) -> None:
    agg = HallAggregator(topo, 0, close_after_ticks=3)
    agg.add(frames(topo, [0, 1], 1, 10))
    agg.add(frames(topo, [0], 2, 13))
    (r,) = publish_all(agg)
    assert r.tick == 10 and r.frames.size == 2 and r.coverage == pytest.approx(2 / agg.n_nodes)


def test_duplicates_unknown_nodes_and_replays_are_counted_not_aggregated(topo: Topology) -> None:
    agg = HallAggregator(topo, 0)
    agg.add(frames(topo, [0, 1], 1, 10))
    agg.add(frames(topo, [0], 1, 10))  # same frame again, tick still open
    agg.add(frames(topo, [1], 7, 10))  # another frame for a node and tick already filled
    agg.add(frames(topo, [topo.n_nodes + 5], 1, 10))
    publish_all(agg, force=True)
    agg.add(frames(topo, [0], 1, 10))  # replayed after publication
    assert agg.rejected == {"duplicate": 2, "replayed": 1, "unknown_node": 1}
    assert agg.accepted == 2


def test_late_frame_goes_out_as_a_further_part(topo: Topology) -> None:
    agg = HallAggregator(topo, 0)
    agg.add(frames(topo, [0], 1, 10))
    (first,) = publish_all(agg, force=True)
    agg.add(frames(topo, [1], 1, 10))  # node 1 was buffering while the bus was down
    (late,) = publish_all(agg)
    assert (first.tick, first.part, late.tick, late.part) == (10, 0, 10, 1)
    assert late.nodes.tolist() == [1]


def test_takeover_from_last_rollup_loses_nothing_and_counts_nothing_twice(topo: Topology) -> None:
    a = HallAggregator(topo, 0)
    stream = [frames(topo, list(range(a.n_nodes)), s, 100 + s) for s in range(1, 11)]
    for rec in stream[:6]:
        a.add(rec)
    rollups = publish_all(a)  # ticks 1..6 complete: all published
    assert len(rollups) == 6
    a.add(stream[6])  # tick 7 delivered but the tracker dies before publishing it
    b = HallAggregator(topo, 0)
    b.restore(rollups[-1])
    for rec in stream[4:]:  # redelivery starts before what was published (acks were not sent)
        b.add(rec)
    more = publish_all(b, force=True)
    seen = [int(s) for r in rollups + more for s in r.frames["seq"]]
    assert sorted(set(seen)) == list(range(1, 11))
    assert len(seen) == 10 * a.n_nodes  # every frame exactly once
    assert b.rejected["duplicate"] == 2 * a.n_nodes


def test_out_of_order_sequences_fill_gaps_and_state_travels(topo: Topology) -> None:
    agg = HallAggregator(topo, 0)
    agg.add(frames(topo, [0], 1, 1))
    publish_all(agg, force=True)
    agg.add(frames(topo, [0], 3, 3))  # 2 is still in flight (resent after a reconnect)
    (r3,) = publish_all(agg, force=True)
    assert r3.contig_seq[0] == 1 and r3.extra_seq.tolist() == [3]
    b = HallAggregator(topo, 0)
    b.restore(r3)
    b.add(frames(topo, [0], 3, 3))
    assert b.rejected["duplicate"] == 1
    b.add(frames(topo, [0], 2, 2))
    (r2,) = publish_all(b, force=True)
    assert r2.contig_seq[0] == 3 and r2.extra_seq.size == 0


def test_a_gap_that_never_fills_is_given_up_and_counted(topo: Topology) -> None:
    agg = HallAggregator(topo, 0, reorder_frames=4)
    agg.add(frames(topo, [0], 1, 1))
    publish_all(agg, force=True)
    for s in range(1000, 1006):  # the agent restarted with a new sequence base
        agg.add(frames(topo, [0], s, s))
        publish_all(agg, force=True)
    assert agg.gaps_skipped == 1000 - 2
    assert int(agg.contig[0]) == 1005 and not agg.extras


def test_wrong_layout_is_malformed(topo: Topology) -> None:
    agg = HallAggregator(topo, 0)
    rec = np.zeros(1, dtype=codec.node_dtype(4))
    agg.add(rec)
    assert agg.rejected["malformed"] == 1


@settings(max_examples=40, deadline=None)
@given(
    order_seed=st.integers(0, 2**32 - 1),
    crash_points=st.lists(st.integers(1, 60), max_size=3),
    dup_share=st.floats(0.0, 0.5),
)
def test_any_redelivery_order_and_takeovers_count_every_frame_once(
    topo: Topology, order_seed: int, crash_points: list[int], dup_share: float
) -> None:
    """Frames of 4 nodes over 15 ticks, delivered in rack-ish order with duplicates; the tracker is replaced at
    random points (its open ticks lost, the next one restoring from the last rollup and getting everything not
    yet acknowledged again). Every frame must come out in exactly one rollup."""
    rng = np.random.default_rng(order_seed)
    msgs = [frames(topo, [n], s, 100 + s) for s in range(1, 16) for n in range(4)]
    agg = HallAggregator(topo, 0, close_after_ticks=2)
    out: list[codec.HallRollup] = []
    acked = 0  # messages acknowledged, in order: what a replacement does not get again
    i = 0
    pending: list[int] = []
    crashes = sorted(set(crash_points))
    step = 0
    while i < len(msgs):
        step += 1
        if crashes and step == crashes[0]:
            crashes.pop(0)
            agg = HallAggregator(topo, 0, close_after_ticks=2)
            if out:
                agg.restore(out[-1])
            i = acked  # redelivery from the first unacknowledged message
            pending = []
            continue
        agg.add(msgs[i])
        pending.append(i)
        if rng.random() < dup_share:  # a redelivery of something recent
            agg.add(msgs[int(rng.integers(max(0, i - 6), i + 1))])
        i += 1
        out += publish_all(agg)
        low = agg.open_low_tick()
        while pending and 100 + (pending[0] // 4) + 1 < low:
            acked = pending.pop(0) + 1
    out += publish_all(agg, force=True)
    pairs = sorted((int(n), int(s)) for r in out for n, s in zip(r.frames["node"], r.frames["seq"], strict=True))
    assert pairs == sorted((n, s) for s in range(1, 16) for n in range(4))


def test_a_node_first_met_mid_run_owes_nothing_below_but_loses_nothing_out_of_order(topo: Topology) -> None:
    agg = HallAggregator(topo, 0)
    base = 1_796_000_000_000
    agg.add(frames(topo, [0], base + 7, 7))  # redelivery order after a takeover: newer first
    publish_all(agg, force=True)
    agg.add(frames(topo, [0], base + 5, 5))
    agg.add(frames(topo, [0], base + 6, 6))
    out = publish_all(agg, force=True)
    assert sorted(int(s) - base for r in out for s in r.frames["seq"]) == [5, 6]
    assert agg.rejected["duplicate"] == 0


def test_first_flag_starts_a_node_sequence(topo: Topology) -> None:
    agg = HallAggregator(topo, 0)
    rec = frames(topo, [0], 1_000, 1)
    rec["flags"] = codec.FLAG_FIRST
    agg.add(rec)
    (r,) = publish_all(agg, force=True)
    assert int(r.contig_seq[0]) == 1_000 and r.extra_seq.size == 0
    agg.add(frames(topo, [0], 999, 2))  # older than the agent run's first frame: a replay
    assert agg.rejected["duplicate"] == 1
