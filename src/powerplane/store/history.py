"""History of snapshots in an embedded DuckDB file: 1 s rollups from node level up, 1 min aggregates per GPU.

Writes never block the cycle: :meth:`HistoryStore.submit` puts the snapshot on a bounded queue and returns at
once (a full queue counts a drop). A writer thread folds snapshots into whole-second buckets (node, rack, row,
hall, site, job) and whole-minute buckets (GPU) and inserts finished buckets in batches, one transaction per
batch. Only OK, finite readings enter a mean or a max; a bucket with none is stored as NULL.

Tables (``t_s`` is the bucket's start in seconds since the epoch; entities are topology indices, named in
``entities``)::

    node_1s, rack_1s, row_1s, hall_1s   t_s, entity, gpu_power_w, gpu_power_peak_w, gpu_power_max_w,
                                        gpu_temp_max_c, gpu_util_mean_pct, coverage, node_power_w,
                                        rack_power_w (rack and up), <own metrics>
    site_1s                             the same without entity, plus the site's metrics (facility_power_w, ...)
    gpu_1m                              t_s, gpu, power_w_mean, power_w_max, temp_c_mean, temp_c_max,
                                        util_pct_mean, energy_kwh_last, coverage
    job_1s                              t_s, job, power_w, coverage, energy_kwh, cost
    entities                            level, entity, name

``gpu_power_w`` is the second's mean of the entity's summed GPU power, ``gpu_power_peak_w`` its highest
sub-second value, ``gpu_power_max_w`` the highest single-GPU power in the entity during the second; ``coverage``
the mean share of GPUs reporting (in ``gpu_1m``: the share of the minute's samples that were OK).
``node_power_w``/``rack_power_w`` are the entity's own meter at its level and the sum of those meters above it.
A level's other readings (``levels[level].values``, e.g. the site's meters, a hall's ``it_power_w``) become
columns named after the metric when first seen.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray

from powerplane.core.clock import perf_counter_s
from powerplane.store.history_query import HistoryQueries
from powerplane.store.history_schema import (
    DAY_S,
    GPU_COLUMNS,
    GPU_METRICS,
    KEY_COLUMN,
    LEVEL_TABLES,
    NOT_IDENT,
    ROLLUP_FIELDS,
    SECOND_TABLES,
    TABLES,
    Acc,
    last_by,
    mean_by,
    ok_mask,
    rollup_columns,
    sql_type,
    to_arrow,
)
from powerplane.telemetry.snapshot import Quality, Snapshot
from powerplane.topology.tree import LEVELS, Topology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    """How long each table keeps rows, in seconds before the newest second written."""

    node_1s: float = 2 * DAY_S
    rack_1s: float = 30 * DAY_S
    row_1s: float = 30 * DAY_S
    hall_1s: float = 30 * DAY_S
    site_1s: float = 30 * DAY_S
    job_1s: float = 30 * DAY_S
    gpu_1m: float = 30 * DAY_S


@dataclass
class HistoryStats:
    """Counters of a :class:`HistoryStore`; ``last_write_s`` is the newest bucket written (snapshot time)."""

    submitted: int = 0
    written_snapshots: int = 0  # accepted into buckets as of the last write
    dropped: int = 0  # refused by submit(): queue full or store closed
    rejected: int = 0  # shapes that do not match the topology, or a non-finite time
    out_of_order: int = 0  # older than a second already open or written
    errors: int = 0  # batches lost to a database error
    rows_written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    rows_deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    batches: int = 0
    last_write_s: float = math.nan
    busy_s: float = 0.0  # writer time spent folding and inserting, not waiting
    max_write_s: float = 0.0  # the longest batch insert (DuckDB may checkpoint inside one)
    queue_depth: int = 0
    max_queue_depth: int = 0
    last_error: str = ""


class SnapshotShapeError(ValueError):
    """A snapshot whose arrays do not match the store's topology."""


class _Request:
    """Work for the writer thread, run after everything queued before it."""

    def __init__(self, action: Callable[[], Any] | None) -> None:
        self.action = action
        self.result: Any = None
        self.error: Exception | None = None
        self.done = threading.Event()


_STOP = object()
_OK = int(Quality.OK)


class HistoryStore(HistoryQueries):
    """Snapshot history in the DuckDB file at ``path``: created if missing, reopened with its history if not.

    ``submit`` never blocks; ``flush`` waits until everything submitted is written, the open second and minute
    included (written provisionally, replaced once they complete); ``series`` and ``export_parquet`` read on a
    connection of their own. Snapshots must not be mutated after they are submitted. A store reopened inside a
    minute already written holds two partial ``gpu_1m`` rows for that minute.

    ``queue_max`` bounds the snapshots waiting for the writer (memory: that many snapshots); ``batch_s`` is how
    often finished buckets are inserted; ``poll_s`` how often an idle writer looks for work (``submit`` wakes
    no one); ``memory_limit`` and ``threads`` are DuckDB's; ``autostart=False`` leaves the writer stopped until
    :meth:`start`.
    """

    def __init__(
        self,
        path: str | Path,
        topology: Topology,
        retention: Retention | None = None,
        queue_max: int = 128,
        batch_s: float = 2.0,
        poll_s: float = 0.05,
        retention_every_s: float = 60.0,
        memory_limit: str = "64MB",
        threads: int = 1,
        autostart: bool = True,
    ) -> None:
        self.path = Path(path)
        self.topology = topology
        self.retention = retention or Retention()
        self.batch_s = batch_s
        self.retention_every_s = retention_every_s
        self._sizes: dict[str, int] = {lvl: topology.count(lvl) for lvl in LEVELS}
        self._stats = HistoryStats()
        self.queue_max = queue_max
        self.poll_s = poll_s
        self._inbox: deque[object] = deque()  # snapshots and requests, in order
        self._wake = threading.Event()
        self._closed = False
        self._con = duckdb.connect(str(self.path), config={"threads": threads, "memory_limit": memory_limit})
        self._columns: dict[str, list[str]] = {}
        try:
            self._create_schema()
        except BaseException:
            self._con.close()
            raise
        self._wcon = self._con.cursor()
        # fetchall, never fetchone: an unfinished result keeps its transaction open, and DuckDB then refuses to
        # checkpoint (after an ALTER TABLE) and lets the write-ahead log grow without bound.
        (newest,) = self._con.execute("SELECT max(t_s) FROM site_1s").fetchall()[0]
        self._watermark = -math.inf if newest is None else float(newest)
        self._name_index: dict[str, dict[str, int]] = {}
        # Open buckets and pending rows, owned by the writer thread.
        self._sec: int | None = None
        self._min: int | None = None
        self._sec_acc: dict[tuple[str, str], Acc] = {}
        self._sec_jobs: list[tuple[NDArray[Any], ...]] = []
        self._min_acc: dict[str, Acc] = {}
        self._min_energy = np.full(self._sizes["gpu"], np.nan)
        self._min_samples = 0
        self._partial: dict[str, float] = {}  # buckets in the file written by a flush, to replace when rewritten
        self._next_partial: dict[str, float] = {}
        self._pending: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
        self._pending_snaps = 0
        self._last_write = self._last_retention = perf_counter_s()
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        if autostart:
            self.start()

    # ------------------------------------------------------------------ schema

    def _create_schema(self) -> None:
        con = self._con
        for lvl, table in (*LEVEL_TABLES.items(), ("site", "site_1s")):
            key = "" if lvl == "site" else "entity INTEGER NOT NULL, "
            value = ", ".join(f"{c} {sql_type(c)}" for c, *_ in rollup_columns(lvl))
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} (t_s DOUBLE NOT NULL, {key}{value})")
        gpu = ", ".join(f"{c} FLOAT" for c, *_ in GPU_COLUMNS)
        con.execute(
            f"CREATE TABLE IF NOT EXISTS gpu_1m (t_s DOUBLE NOT NULL, gpu INTEGER NOT NULL, {gpu}, "
            "energy_kwh_last DOUBLE, coverage FLOAT)"
        )
        con.execute(
            "CREATE TABLE IF NOT EXISTS job_1s (t_s DOUBLE NOT NULL, job BIGINT NOT NULL, power_w FLOAT, "
            "coverage FLOAT, energy_kwh DOUBLE, cost DOUBLE)"
        )
        con.execute("CREATE TABLE IF NOT EXISTS entities (level VARCHAR, entity INTEGER, name VARCHAR)")
        for table in TABLES:
            self._columns[table] = self._describe(con, table)
        stored = con.execute("SELECT level, name FROM entities ORDER BY level, entity").df()
        if stored.empty:
            frame = pd.concat(
                [
                    pd.DataFrame(
                        {
                            "level": lvl,
                            "entity": np.arange(self._sizes[lvl], dtype=np.int32),
                            "name": self.topology.names(lvl),
                        }
                    )
                    for lvl in LEVELS
                ],
                ignore_index=True,
            )
            con.register("_entities", frame)
            con.execute("INSERT INTO entities SELECT * FROM _entities")
            con.unregister("_entities")
            return
        for lvl in LEVELS:
            names = stored.loc[stored["level"] == lvl, "name"].tolist()
            if names != self.topology.names(lvl):
                raise ValueError(
                    f"{self.path}: this history was written for another topology ({len(names)} {lvl} entities "
                    f"stored, {self._sizes[lvl]} in the topology given); open it with the topology it was written for"
                )

    # ------------------------------------------------------------------ the cycle's side

    def start(self) -> None:
        """Start the writer thread (the constructor does, unless ``autostart=False``)."""
        if not self._thread.is_alive() and not self._closed:
            self._thread.start()

    def submit(self, snapshot: Snapshot) -> bool:
        """Queue ``snapshot`` without waiting; False, counted as dropped, if the queue is full or the store closed."""
        self._stats.submitted += 1
        if self._closed:
            self._stats.dropped += 1
            return False
        if len(self._inbox) >= self.queue_max:
            self._stats.dropped += 1
            return False
        self._inbox.append(snapshot)  # atomic; the writer polls, so there is no lock to take and no one to wake
        if (depth := len(self._inbox)) > self._stats.max_queue_depth:
            self._stats.max_queue_depth = depth
        return True

    @property
    def stats(self) -> HistoryStats:
        """A copy of the counters, with the current queue depth."""
        s = self._stats
        return replace(
            s, rows_written=dict(s.rows_written), rows_deleted=dict(s.rows_deleted), queue_depth=len(self._inbox)
        )

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every snapshot submitted so far is written; False if that takes longer than ``timeout``."""
        return self._call(None, timeout)[0]

    def apply_retention(self, timeout: float | None = 60.0) -> dict[str, int]:
        """Write what is pending, then delete what each table no longer keeps; returns rows deleted per table."""
        done, deleted = self._call(self._retain, timeout)
        if not done:
            raise TimeoutError(f"{self.path}: retention did not finish within {timeout} s")
        return dict(deleted)

    def close(self, timeout: float | None = 60.0) -> None:
        """Write everything, stop the writer and close the file."""
        if self._closed:
            return
        self._closed = True
        self._call(None, timeout)
        if self._thread.is_alive():
            self._inbox.append(_STOP)
            self._wake.set()
            self._thread.join(timeout)
        self._wcon.close()
        self._con.execute("CHECKPOINT")
        self._con.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _call(self, action: Callable[[], Any] | None, timeout: float | None) -> tuple[bool, Any]:
        """Run ``action`` after everything already queued has been written, and wait for it."""
        req = _Request(action)
        if self._thread.is_alive():
            self._inbox.append(req)
            self._wake.set()
            if not req.done.wait(timeout):
                return False, None
        else:  # not started (or stopped): do the writer's work here
            while self._inbox:
                self._handle(self._inbox.popleft())
            self._handle(req)
        if req.error is not None:
            raise req.error
        return True, req.result

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while True:
            if not self._inbox:
                self._wake.wait(self.poll_s)
                self._wake.clear()
            t0 = perf_counter_s()
            while self._inbox:
                item = self._inbox.popleft()
                if item is _STOP:
                    return
                self._handle(item)
                if self._pending_snaps and perf_counter_s() - self._last_write >= self.batch_s:
                    self._write()
            if self._pending_snaps and t0 - self._last_write >= self.batch_s:
                self._write()
            if t0 - self._last_retention >= self.retention_every_s:
                try:
                    self._retain()
                except duckdb.Error as exc:
                    self._error(f"retention: {exc}")
            self._stats.busy_s += perf_counter_s() - t0

    def _handle(self, item: object) -> None:
        if isinstance(item, Snapshot):
            try:
                self._fold(item)
            except SnapshotShapeError as exc:
                self._stats.rejected += 1
                self._stats.last_error = str(exc)
                log.warning("history: snapshot rejected: %s", exc)
            except Exception as exc:  # a bad snapshot must not stop the writer
                self._stats.rejected += 1
                self._error(f"snapshot seq {item.seq} t={item.t_s}: {type(exc).__name__}: {exc}")
        elif isinstance(item, _Request):
            try:
                self._close_buckets(provisional=True)
                self._write()
                item.result = item.action() if item.action is not None else None
            except Exception as exc:  # handed to the caller
                item.error = exc
            item.done.set()

    def _error(self, message: str) -> None:
        self._stats.errors += 1
        self._stats.last_error = message
        log.error("history: %s", message)

    def _check(self, snap: Snapshot) -> None:
        """Raise :class:`SnapshotShapeError` unless every array has one entry per entity (or job)."""
        if not math.isfinite(snap.t_s):
            raise SnapshotShapeError(f"snapshot seq {snap.seq}: time {snap.t_s} is not finite")

        def expect(shape: tuple[int, ...], n: int, name: Callable[[], str]) -> None:
            if shape != (n,):
                raise SnapshotShapeError(
                    f"snapshot seq {snap.seq} t={snap.t_s}: {name()} has shape {shape}, expected ({n},)"
                )

        for lvl, data in snap.levels.items():
            if (n := self._sizes.get(lvl)) is not None:
                for kind, arrays in (("values", data.values), ("quality", data.quality)):
                    for m, a in arrays.items():
                        expect(a.shape, n, lambda: f"levels[{lvl!r}].{kind}[{m!r}]")  # noqa: B023
        for lvl, rollups in snap.rollups.items():
            if (n := self._sizes.get(lvl)) is not None:
                for m in ROLLUP_FIELDS:
                    if (r := rollups.get(m)) is not None:
                        for f in ("sum", "mean", "max", "coverage"):
                            expect(getattr(r, f).shape, n, lambda: f"rollups[{lvl!r}][{m!r}].{f}")  # noqa: B023
        if snap.gpu_energy_kwh.size:
            expect(snap.gpu_energy_kwh.shape, self._sizes["gpu"], lambda: "gpu_energy_kwh")
        for name in ("job_power_w", "job_coverage", "job_energy_kwh", "job_cost"):
            if getattr(snap, name).size:
                expect(getattr(snap, name).shape, snap.job_ids.size, lambda: f"{name} (one per job id)")  # noqa: B023

    def _fold(self, snap: Snapshot) -> None:
        self._check(snap)
        sec = math.floor(snap.t_s)
        if sec <= self._watermark or (self._sec is not None and sec < self._sec):
            self._stats.out_of_order += 1
            return
        if self._sec is not None and sec != self._sec:
            self._close_buckets(provisional=False, next_sec=sec)
        self._sec, self._min = sec, sec - sec % 60
        for lvl in (*LEVEL_TABLES, "site"):
            n = self._sizes[lvl]
            rollups = snap.rollups.get(lvl, {})
            for metric, fields in ROLLUP_FIELDS.items():
                if (rollup := rollups.get(metric)) is not None:  # only these: a rollup may be built on access
                    for fld in fields:
                        v = getattr(rollup, fld)
                        self._acc(self._sec_acc, (lvl, f"{metric}.{fld}"), n).add(v, np.isfinite(v))
            data = snap.levels.get(lvl)
            for metric, v in data.values.items() if data is not None else ():
                self._acc(self._sec_acc, (lvl, metric), n).add(v, ok_mask(v, data.quality.get(metric)))  # type: ignore[union-attr]
        if nj := snap.job_ids.size:
            cols = (snap.job_power_w, snap.job_coverage, snap.job_energy_kwh, snap.job_cost)
            self._sec_jobs.append((snap.job_ids, *(c if c.size else np.full(nj, np.nan) for c in cols)))
        gpu = snap.levels.get("gpu")
        for metric in GPU_METRICS if gpu is not None else ():
            v = gpu.values.get(metric)  # type: ignore[union-attr]
            if v is not None:
                self._acc(self._min_acc, metric, v.size).add(v, ok_mask(v, gpu.quality.get(metric)))  # type: ignore[union-attr]
        if snap.gpu_energy_kwh.size:
            np.copyto(self._min_energy, snap.gpu_energy_kwh, where=np.isfinite(snap.gpu_energy_kwh))
        self._min_samples += 1
        self._pending_snaps += 1

    @staticmethod
    def _acc(store: dict[Any, Acc], key: Any, size: int) -> Acc:
        acc = store.get(key)
        if acc is None:
            acc = store[key] = Acc(size)
        return acc

    def _close_buckets(self, provisional: bool, next_sec: int | None = None) -> None:
        """Turn the open second, and the open minute if it ends, into pending rows.

        Provisional buckets (a flush) stay open and are replaced in the file when written again.
        """
        if self._sec is None:
            return
        self._emit_second(float(self._sec))
        next_min = None if next_sec is None else next_sec - next_sec % 60
        if provisional or next_min != self._min:
            self._emit_minute(float(self._min))  # type: ignore[arg-type]
        if provisional:
            self._next_partial = {**dict.fromkeys(SECOND_TABLES, float(self._sec)), "gpu_1m": float(self._min)}  # type: ignore[arg-type]
            return
        self._sec_acc, self._sec_jobs = {}, []
        if next_min != self._min:
            self._min_acc, self._min_samples = {}, 0
            self._min_energy = np.full(self._sizes["gpu"], np.nan)

    def _level_columns(self, lvl: str) -> dict[str, NDArray[np.float64]]:
        cols: dict[str, NDArray[np.float64]] = {}
        own_power = f"{lvl}_power_w"
        for col, metric, fld, how in rollup_columns(lvl):
            key = (lvl, "power_w") if col == own_power else (lvl, f"{metric}.{fld}")
            if (acc := self._sec_acc.get(key)) is not None:
                cols[col] = acc.stat(how)
        for (level, metric), acc in self._sec_acc.items():
            if level == lvl and "." not in metric and metric != "power_w":
                name = NOT_IDENT.sub("_", metric.lower())
                cols[f"{lvl}_{name}" if name in cols or name in KEY_COLUMN.values() else name] = acc.stat("mean")
        if own_power not in cols and (acc := self._sec_acc.get((lvl, "power_w"))) is not None:
            cols[own_power] = acc.stat("mean")  # a hall's or the site's own power_w
        return cols

    def _emit_second(self, t_s: float) -> None:
        for lvl, table in (*LEVEL_TABLES.items(), ("site", "site_1s")):
            n = self._sizes[lvl]
            cols: dict[str, pa.Array] = {"t_s": pa.array(np.full(n, t_s))}
            if lvl != "site":
                cols["entity"] = pa.array(np.arange(n, dtype=np.int32))
            cols.update((name, to_arrow(v, name)) for name, v in self._level_columns(lvl).items())
            self._pending[table].append(pa.table(cols))
        if self._sec_jobs:
            ids, power, cover, energy, cost = (np.concatenate(c) for c in zip(*self._sec_jobs, strict=True))
            jobs, inv = np.unique(ids, return_inverse=True)
            n = jobs.size
            job = {
                "t_s": pa.array(np.full(n, t_s)),
                "job": pa.array(jobs.astype(np.int64)),
                "power_w": to_arrow(mean_by(inv, power, n), "power_w"),
                "coverage": to_arrow(mean_by(inv, cover, n), "coverage"),
                "energy_kwh": to_arrow(last_by(inv, energy, n), "energy_kwh"),
                "cost": to_arrow(last_by(inv, cost, n), "cost"),
            }
            self._pending["job_1s"].append(pa.table(job))

    def _emit_minute(self, t_s: float) -> None:
        n = self._sizes["gpu"]
        cols: dict[str, pa.Array] = {"t_s": pa.array(np.full(n, t_s)), "gpu": pa.array(np.arange(n, dtype=np.int32))}
        for col, metric, how in GPU_COLUMNS:
            if (acc := self._min_acc.get(metric)) is not None:
                cols[col] = to_arrow(acc.stat(how), col)
        cols["energy_kwh_last"] = to_arrow(self._min_energy, "energy_kwh_last")
        if (power := self._min_acc.get("power_w")) is not None and self._min_samples:
            cols["coverage"] = to_arrow(power.n / self._min_samples, "coverage")
        self._pending["gpu_1m"].append(pa.table(cols))

    def _write(self) -> None:
        """Insert the pending rows in one transaction; a batch that fails is counted and dropped."""
        pending, self._pending = self._pending, {t: [] for t in TABLES}
        snaps, self._pending_snaps = self._pending_snaps, 0
        next_partial, self._next_partial = self._next_partial, {}
        self._last_write = t0 = perf_counter_s()
        if not any(pending.values()):
            self._stats.written_snapshots += snaps
            return
        con = self._wcon
        written: dict[str, int] = {}
        newest = -math.inf
        try:
            con.execute("BEGIN TRANSACTION")
            for table, t_s in self._partial.items():
                if pending[table]:  # the bucket written by a flush is in this batch again, now more complete
                    con.execute(f"DELETE FROM {table} WHERE t_s = ?", [t_s])
            for table, parts in pending.items():
                if not parts:
                    continue
                batch = pa.concat_tables(parts, promote_options="default")
                for name in batch.column_names:
                    if name not in self._columns[table]:
                        con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {sql_type(name)}')
                        self._columns[table].append(name)
                names = ", ".join(f'"{c}"' for c in batch.column_names)
                con.register("_history_batch", batch)
                con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _history_batch")
                con.unregister("_history_batch")
                written[table] = batch.num_rows
                newest = max(newest, float(np.max(batch.column("t_s").to_numpy())))
            con.execute("COMMIT")
        except duckdb.Error as exc:  # keep the writer alive; the loss is counted
            with suppress(duckdb.Error):
                con.execute("ROLLBACK")
            self._columns = {t: self._describe(con, t) for t in TABLES}
            self._error(f"a batch of {snaps} snapshots was lost: {exc}")
            return
        self._partial = {t: t_s for t, t_s in self._partial.items() if not pending[t]} | next_partial
        for table, rows in written.items():
            self._stats.rows_written[table] += rows
        self._stats.batches += 1
        self._stats.max_write_s = max(self._stats.max_write_s, perf_counter_s() - t0)
        self._stats.written_snapshots += snaps
        last = self._stats.last_write_s
        self._stats.last_write_s = newest if math.isnan(last) else max(last, newest)

    def _retain(self) -> dict[str, int]:
        self._last_retention = perf_counter_s()
        newest = max(self._watermark, self._stats.last_write_s if self._stats.batches else -math.inf)
        deleted = dict.fromkeys(TABLES, 0)
        if not math.isfinite(newest):
            return deleted
        for table in TABLES:
            cutoff = newest - float(getattr(self.retention, table))
            deleted[table] = int(self._wcon.execute(f"DELETE FROM {table} WHERE t_s < ?", [cutoff]).fetchall()[0][0])
            self._stats.rows_deleted[table] += deleted[table]
        return deleted
