from __future__ import annotations

import numpy as np
import pytest

from powerplane.bus import codec


def _frames(n: int, k: int = 8, seq: int = 5) -> np.ndarray:
    rec = np.zeros(n, dtype=codec.node_dtype(k))
    rec["magic"], rec["version"], rec["n_gpus"] = codec.MAGIC_NODE, codec.SCHEMA_VERSION, k
    rec["gpu_mask"], rec["node_mask"] = codec.FULL_GPU_MASK, codec.FULL_NODE_MASK
    rec["node"] = np.arange(n) + 10
    rec["seq"] = seq
    rec["t_s"] = 1.7e9
    rec["gpu.power_w"] = np.arange(n * k, dtype=np.float32).reshape(n, k)
    rec["gpu.energy_mj"] = 1.234567890123e12
    rec["node.power_w"] = 5000.0
    return rec


def test_header_is_compact_and_versioned() -> None:
    assert codec.HEADER_SIZE == 44
    dt = codec.node_dtype(8)
    # 9 float32 GPU metrics + the float64 energy counter per GPU, 3 float32 node metrics
    assert dt.itemsize == 44 + 8 * (9 * 4 + 8) + 3 * 4


def test_batch_round_trip_keeps_values_and_energy_precision() -> None:
    rec = _frames(4)
    out = codec.decode_frames(rec.tobytes())
    assert out.size == 4
    assert out["node"].tolist() == [10, 11, 12, 13]
    np.testing.assert_array_equal(out["gpu.power_w"], rec["gpu.power_w"])
    assert out["gpu.energy_mj"][0, 0] == 1.234567890123e12  # float64: a mJ counter keeps its last digits


def test_wrong_schema_version_is_rejected_with_its_reason() -> None:
    rec = _frames(1)
    rec["version"] = 2
    with pytest.raises(codec.FrameError) as exc:
        codec.decode_frames(rec.tobytes())
    assert exc.value.reason == "schema_version"
    batch = _frames(3)
    batch["version"][2] = 9
    with pytest.raises(codec.FrameError) as exc:
        codec.decode_frames(batch.tobytes())
    assert exc.value.reason == "schema_version"


@pytest.mark.parametrize("data", [b"", b"PPNF", b"XXXX" + bytes(100)])
def test_garbage_is_malformed(data: bytes) -> None:
    with pytest.raises(codec.FrameError) as exc:
        codec.decode_frames(data)
    assert exc.value.reason == "malformed"


def test_truncated_batch_is_malformed() -> None:
    with pytest.raises(codec.FrameError) as exc:
        codec.decode_frames(_frames(2).tobytes()[:-3])
    assert exc.value.reason == "malformed"


def test_rollup_round_trip() -> None:
    frames = _frames(3)
    r = codec.HallRollup(
        hall=1,
        tick=17_000_000_000,
        t_s=1.7e9,
        part=2,
        epoch=9,
        n_hall_nodes=5,
        frames=frames,
        nodes=np.array([0, 1, 2], dtype=np.uint32),
        contig_seq=np.array([5, 5, 5, 0, 0], dtype=np.uint64),
        extra_node=np.array([3], dtype=np.uint32),
        extra_seq=np.array([2**40], dtype=np.uint64),
        gpu_power_w=1.0,
        node_power_w=2.0,
        coverage=0.6,
    )
    back = codec.HallRollup.decode(r.encode())
    assert (back.hall, back.tick, back.part, back.epoch, back.n_hall_nodes) == (1, 17_000_000_000, 2, 9, 5)
    assert back.contig_seq.tolist() == [5, 5, 5, 0, 0] and back.extra_seq.tolist() == [2**40]
    np.testing.assert_array_equal(back.frames["gpu.power_w"], frames["gpu.power_w"])
    with pytest.raises(codec.FrameError):
        codec.HallRollup.decode(r.encode()[:30])


def test_plant_round_trip_and_version() -> None:
    data = codec.encode_plant(3, 10.0, 11.0, {"bess": {"soc": np.array([0.5, 0.6])}, "site": {"x": np.ones(1)}})
    seq, t_s, sent_s, levels = codec.decode_plant(data)
    assert (seq, t_s, sent_s) == (3, 10.0, 11.0)
    assert levels["bess"]["soc"].tolist() == [0.5, 0.6]
    bad = bytearray(data)
    bad[4] = 7
    with pytest.raises(codec.FrameError) as exc:
        codec.decode_plant(bytes(bad))
    assert exc.value.reason == "schema_version"
