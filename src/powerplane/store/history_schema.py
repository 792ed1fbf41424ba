"""The tables of the DuckDB history (:mod:`powerplane.store.history`): their columns, and the per-bucket
accumulators and conversions the writer uses."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from powerplane.telemetry.snapshot import Quality
from powerplane.topology.tree import LEVELS, Level

_OK = int(Quality.OK)

DAY_S = 86_400.0
LEVEL_TABLES: dict[Level, str] = {"node": "node_1s", "rack": "rack_1s", "row": "row_1s", "hall": "hall_1s"}
SECOND_TABLES = (*LEVEL_TABLES.values(), "site_1s", "job_1s")
TABLES = (*SECOND_TABLES, "gpu_1m")
KEY_COLUMN = {**dict.fromkeys(LEVEL_TABLES.values(), "entity"), "gpu_1m": "gpu", "job_1s": "job"}

# column, rollup metric, rollup field, statistic over the second's samples
ROLLUP_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("gpu_power_w", "gpu.power_w", "sum", "mean"),
    ("gpu_power_peak_w", "gpu.power_w", "sum", "max"),
    ("gpu_power_max_w", "gpu.power_w", "max", "max"),
    ("gpu_temp_max_c", "gpu.temp_c", "max", "max"),
    ("gpu_util_mean_pct", "gpu.util_pct", "mean", "mean"),
    ("coverage", "gpu.power_w", "coverage", "mean"),
    ("node_power_w", "node.power_w", "sum", "mean"),  # at node level: the node's own reading
    ("rack_power_w", "rack.power_w", "sum", "mean"),  # at rack level: the rack's own reading
)
ROLLUP_FIELDS = {m: sorted({c[2] for c in ROLLUP_COLUMNS if c[1] == m}) for m in {c[1] for c in ROLLUP_COLUMNS}}


def rollup_columns(level: str) -> tuple[tuple[str, str, str, str], ...]:
    """The rollup columns of ``level``'s table: those of metrics of lower levels, or of the level itself."""
    return tuple(c for c in ROLLUP_COLUMNS if LEVELS.index(c[1].split(".")[0]) <= LEVELS.index(level))


# column, GPU metric, statistic over the minute's samples
GPU_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("power_w_mean", "power_w", "mean"),
    ("power_w_max", "power_w", "max"),
    ("temp_c_mean", "temp_c", "mean"),
    ("temp_c_max", "temp_c", "max"),
    ("util_pct_mean", "util_pct", "mean"),
)
GPU_METRICS = sorted({c[1] for c in GPU_COLUMNS})
DOUBLE_COLUMN = re.compile(r"(_kwh|_wh|_j|_mj|cost)(_last)?$")  # cumulative counters keep float64
NOT_IDENT = re.compile(r"[^a-z0-9_]+")
ENTITY_FORMS = '"site", "hall:<name>", "row:<name>", "rack:<name>", "node:<hostname>", "gpu:<uuid|index>", "job:<id>"'


class Acc:
    """Sum, count and max of one array over the samples of a bucket, skipping samples that are not OK."""

    __slots__ = ("max", "n", "sum")

    def __init__(self, size: int) -> None:
        self.sum = np.zeros(size)
        self.n = np.zeros(size, dtype=np.int32)
        self.max = np.full(size, np.nan)

    def add(self, v: NDArray[np.float64], ok: NDArray[np.bool_]) -> None:
        np.add(self.sum, v, out=self.sum, where=ok)
        self.n += ok
        np.fmax(self.max, v, out=self.max, where=ok)

    def stat(self, how: str) -> NDArray[np.float64]:
        if how == "max":
            return self.max
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n > 0, self.sum / np.maximum(self.n, 1), np.nan)


def ok_mask(v: NDArray[np.float64], q: NDArray[np.uint8] | None) -> NDArray[np.bool_]:
    ok = np.isfinite(v)
    if q is not None:
        ok &= q == _OK
    return ok


def sql_type(column: str) -> str:
    return "DOUBLE" if DOUBLE_COLUMN.search(column) else "FLOAT"


def to_arrow(values: NDArray[np.float64], column: str) -> pa.Array:
    """NaN becomes NULL; FLOAT columns travel as float32."""
    v = np.asarray(values, dtype=np.float64 if sql_type(column) == "DOUBLE" else np.float32)
    return pa.array(v, mask=np.isnan(v))


def mean_by(inv: NDArray[np.intp], v: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    ok = np.isfinite(v)
    s = np.bincount(inv[ok], weights=v[ok], minlength=n)
    c = np.bincount(inv[ok], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def last_by(inv: NDArray[np.intp], v: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    out = np.full(n, np.nan)
    ok = np.flatnonzero(np.isfinite(v))
    out[inv[ok]] = v[ok]  # fancy assignment keeps the last of repeated indices
    return out
