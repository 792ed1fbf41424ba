"""Binary, versioned frames on the bus.

A **node frame** is one node's readings of one instant: a fixed 44-byte little-endian header (magic ``PPNF``,
schema version, flags, global node index, sequence number, ``t_s``, ``sent_s``, GPU count, GPU and node metric
masks) followed by one array per metric present in the masks (float32, the energy counter float64). Its layout
is a NumPy structured dtype, so an agent encodes all of its nodes in one vectorized pass and a tracker decodes a
message of several frames (one rack) with one ``np.frombuffer``. A message is one or more frames back to back.

A **hall rollup** (magic ``PPHR``) is what a tracker publishes per hall and tick: a header, the hall's sums, the
node frames it accepted for that tick (verbatim), and the tracker's accept state (per node the highest sequence
below which every frame was accepted, plus accepted sequences above it), so a tracker that takes over resumes
exactly where the last published rollup left off.

>>> import numpy as np
>>> dt = node_dtype(2)
>>> rec = np.zeros(1, dtype=dt)
>>> rec["magic"], rec["version"], rec["node"], rec["seq"], rec["n_gpus"] = MAGIC_NODE, SCHEMA_VERSION, 7, 1, 2
>>> rec["gpu_mask"], rec["node_mask"] = FULL_GPU_MASK, FULL_NODE_MASK
>>> rec["gpu.power_w"] = [300.0, 310.0]
>>> out = decode_frames(rec.tobytes())
>>> int(out["node"][0]), out["gpu.power_w"][0].tolist()
(7, [300.0, 310.0])
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.core.errors import PowerPlaneError

SCHEMA_VERSION = 1
MAGIC_NODE = b"PPNF"
MAGIC_ROLLUP = b"PPHR"
MAGIC_PLANT = b"PPPL"

# (metric, dtype) in mask-bit order. The energy counter [mJ] needs float64; everything else fits float32.
GPU_METRICS: tuple[tuple[str, str], ...] = (
    ("power_w", "<f4"),
    ("energy_mj", "<f8"),
    ("util_pct", "<f4"),
    ("mem_util_pct", "<f4"),
    ("sm_clock_mhz", "<f4"),
    ("temp_c", "<f4"),
    ("mem_temp_c", "<f4"),
    ("power_cap_w", "<f4"),
    ("throttle_reasons", "<f4"),
    ("last_xid", "<f4"),
)
NODE_METRICS: tuple[str, ...] = ("power_w", "pdu_voltage_v", "pdu_current_a")
FLAG_FIRST = 0x1  # header flag: the first frame an agent run sends for this node (its sequence starts here)
FULL_GPU_MASK = (1 << len(GPU_METRICS)) - 1
FULL_NODE_MASK = (1 << len(NODE_METRICS)) - 1

HEADER_FIELDS: list[tuple[str, str]] = [
    ("magic", "S4"),
    ("version", "<u2"),
    ("flags", "<u2"),
    ("node", "<u4"),
    ("seq", "<u8"),
    ("t_s", "<f8"),
    ("sent_s", "<f8"),
    ("n_gpus", "<u2"),
    ("gpu_mask", "<u2"),
    ("node_mask", "<u2"),
    ("reserved", "<u2"),
]
HEADER_DTYPE = np.dtype(HEADER_FIELDS)
HEADER_SIZE = HEADER_DTYPE.itemsize  # 44


class FrameError(PowerPlaneError):
    """A message that is not a valid frame; ``reason`` is the counter key (``schema_version``, ``malformed``)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@lru_cache(maxsize=64)
def node_dtype(n_gpus: int, gpu_mask: int = FULL_GPU_MASK, node_mask: int = FULL_NODE_MASK) -> np.dtype[np.void]:
    """The structured dtype of one node frame with ``n_gpus`` GPUs and the metrics in the masks."""
    fields: list[tuple[str, str] | tuple[str, str, tuple[int]]] = list(HEADER_FIELDS)
    for bit, (name, dtype) in enumerate(GPU_METRICS):
        if gpu_mask >> bit & 1:
            fields.append((f"gpu.{name}", dtype, (n_gpus,)))
    for bit, name in enumerate(NODE_METRICS):
        if node_mask >> bit & 1:
            fields.append((f"node.{name}", "<f4"))
    return np.dtype(fields)


def gpu_fields(dtype: np.dtype[np.void]) -> list[str]:
    """GPU metric names present in a node-frame dtype."""
    return [n[4:] for n in dtype.names or () if n.startswith("gpu.")]


def node_fields(dtype: np.dtype[np.void]) -> list[str]:
    return [n[5:] for n in dtype.names or () if n.startswith("node.")]


def _check_header(h: np.ndarray, offset: int) -> None:
    if h["magic"] != MAGIC_NODE:
        raise FrameError("malformed", f"not a node frame at byte {offset} (magic {bytes(h['magic'])!r})")
    if int(h["version"]) != SCHEMA_VERSION:
        raise FrameError(
            "schema_version", f"node frame schema version {int(h['version'])}, this build reads {SCHEMA_VERSION}"
        )


@lru_cache(maxsize=64)
def _probe_dtype(itemsize: int) -> np.dtype[np.void]:
    """Two words of a frame header: magic+version+flags (bytes 0-8) and n_gpus+masks+reserved (36-44)."""
    return np.dtype({"names": ["a", "b"], "formats": ["<u8", "<u8"], "offsets": [0, 36], "itemsize": itemsize})


def decode_frames(data: bytes | memoryview) -> NDArray[np.void]:
    """All node frames of one message as one structured array (they must share a layout, as an agent sends them).

    Raises :class:`FrameError` for a wrong magic, schema version, truncated or mixed-layout message.
    """
    buf = memoryview(data)
    if len(buf) < HEADER_SIZE:
        raise FrameError("malformed", f"message of {len(buf)} bytes is shorter than a frame header")
    h = np.frombuffer(buf, dtype=HEADER_DTYPE, count=1)[0]
    _check_header(h, 0)
    dt = node_dtype(int(h["n_gpus"]), int(h["gpu_mask"]), int(h["node_mask"]))
    if len(buf) % dt.itemsize:
        raise FrameError("malformed", f"message of {len(buf)} bytes is not a whole number of {dt.itemsize}-byte frames")
    recs = np.frombuffer(buf, dtype=dt)
    if recs.size > 1:
        # Every header of the batch must repeat the first one's magic, version, flags, sizes and masks: two
        # 8-byte words per frame, compared at once.
        probe = np.frombuffer(buf, dtype=_probe_dtype(dt.itemsize))
        same = (probe["a"] == probe["a"][0]) & (probe["b"] == probe["b"][0])
        if not same.all():
            bad = int(np.argmin(same))
            _check_header(recs[bad], bad * dt.itemsize)
            raise FrameError("malformed", f"frame {bad} of the message has a different layout")
    return recs


# ---------------------------------------------------------------------------------------------- hall rollups

_ROLLUP_HEAD = struct.Struct("<4sHHIIqdIIIddd")  # magic ver part hall epoch tick t_s n_hall n_inc n_extra sums


@dataclass
class HallRollup:
    """One hall, one tick: its sums, the node frames accepted for it and the tracker's accept state.

    ``nodes`` are hall-local node indices of ``frames``; ``contig_seq[i]`` is the sequence up to which every frame
    of hall node ``i`` has been accepted; ``extra_node``/``extra_seq`` list accepted sequences above it.
    """

    hall: int
    tick: int
    t_s: float
    part: int
    epoch: int
    n_hall_nodes: int
    frames: NDArray[np.void]
    nodes: NDArray[np.uint32]
    contig_seq: NDArray[np.uint64]
    extra_node: NDArray[np.uint32]
    extra_seq: NDArray[np.uint64]
    gpu_power_w: float
    node_power_w: float
    coverage: float

    def encode(self) -> bytes:
        head = _ROLLUP_HEAD.pack(
            MAGIC_ROLLUP,
            SCHEMA_VERSION,
            self.part,
            self.hall,
            self.epoch,
            self.tick,
            self.t_s,
            self.n_hall_nodes,
            int(self.nodes.size),
            int(self.extra_node.size),
            self.gpu_power_w,
            self.node_power_w,
            self.coverage,
        )
        itemsize = self.frames.dtype.itemsize if self.frames.size else 0
        return b"".join(
            (
                head,
                struct.pack("<I", itemsize),
                self.nodes.astype("<u4").tobytes(),
                self.contig_seq.astype("<u8").tobytes(),
                self.extra_node.astype("<u4").tobytes(),
                self.extra_seq.astype("<u8").tobytes(),
                self.frames.tobytes(),
            )
        )

    @classmethod
    def decode(cls, data: bytes | memoryview) -> HallRollup:
        buf = memoryview(data)
        if len(buf) < _ROLLUP_HEAD.size + 4:
            raise FrameError("malformed", "hall rollup shorter than its header")
        magic, ver, part, hall, epoch, tick, t_s, n_hall, n_inc, n_extra, gp, npw, cov = _ROLLUP_HEAD.unpack_from(buf)
        if magic != MAGIC_ROLLUP:
            raise FrameError("malformed", f"not a hall rollup (magic {magic!r})")
        if ver != SCHEMA_VERSION:
            raise FrameError("schema_version", f"hall rollup schema version {ver}, this build reads {SCHEMA_VERSION}")
        off = _ROLLUP_HEAD.size
        (itemsize,) = struct.unpack_from("<I", buf, off)
        off += 4

        def take(n: int, dtype: str) -> NDArray[Any]:
            nonlocal off
            arr = np.frombuffer(buf, dtype=dtype, count=n, offset=off)
            off += arr.itemsize * n
            return arr

        try:
            nodes = take(n_inc, "<u4")
            contig = take(n_hall, "<u8")
            extra_node = take(n_extra, "<u4")
            extra_seq = take(n_extra, "<u8")
        except ValueError as exc:
            raise FrameError("malformed", f"truncated hall rollup: {exc}") from exc
        frames = decode_frames(buf[off:]) if n_inc else np.zeros(0, dtype=node_dtype(1))
        if frames.size != n_inc or (itemsize and frames.dtype.itemsize != itemsize):
            raise FrameError("malformed", f"hall rollup says {n_inc} frames, holds {frames.size}")
        return cls(hall, tick, t_s, part, epoch, n_hall, frames, nodes, contig, extra_node, extra_seq, gp, npw, cov)


# ---------------------------------------------------------------------------------------------- plant frames

_PLANT_HEAD = struct.Struct("<4sHHQdd")  # magic, version, n_arrays, seq, t_s, sent_s


def encode_plant(seq: int, t_s: float, sent_s: float, levels: dict[str, dict[str, NDArray[np.generic]]]) -> bytes:
    """Site-level readings (meters, racks, halls, batteries) as named float64 arrays: ``level.metric``."""
    parts: list[bytes] = []
    n = 0
    for level, metrics in levels.items():
        for name, arr in metrics.items():
            key = f"{level}.{name}".encode()
            a = np.ascontiguousarray(arr, dtype="<f8")
            parts += [struct.pack("<HI", len(key), a.size), key, a.tobytes()]
            n += 1
    return _PLANT_HEAD.pack(MAGIC_PLANT, SCHEMA_VERSION, n, seq, t_s, sent_s) + b"".join(parts)


def decode_plant(data: bytes | memoryview) -> tuple[int, float, float, dict[str, dict[str, NDArray[np.float64]]]]:
    """``(seq, t_s, sent_s, levels)`` of a plant frame."""
    buf = memoryview(data)
    if len(buf) < _PLANT_HEAD.size:
        raise FrameError("malformed", "plant frame shorter than its header")
    magic, ver, n, seq, t_s, sent_s = _PLANT_HEAD.unpack_from(buf)
    if magic != MAGIC_PLANT:
        raise FrameError("malformed", f"not a plant frame (magic {magic!r})")
    if ver != SCHEMA_VERSION:
        raise FrameError("schema_version", f"plant frame schema version {ver}, this build reads {SCHEMA_VERSION}")
    off = _PLANT_HEAD.size
    levels: dict[str, dict[str, NDArray[np.float64]]] = {}
    try:
        for _ in range(n):
            klen, size = struct.unpack_from("<HI", buf, off)
            off += 6
            level, _, name = bytes(buf[off : off + klen]).decode().partition(".")
            off += klen
            levels.setdefault(level, {})[name] = np.frombuffer(buf, dtype="<f8", count=size, offset=off).copy()
            off += 8 * size
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise FrameError("malformed", f"truncated plant frame: {exc}") from exc
    return seq, t_s, sent_s, levels
