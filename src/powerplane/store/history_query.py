"""Reading the DuckDB history back: :class:`HistoryQueries`, mixed into
:class:`~powerplane.store.history.HistoryStore`, gives series of any entity and metric at any step and Parquet
export of whole tables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from powerplane.store.history_schema import ENTITY_FORMS, KEY_COLUMN, LEVEL_TABLES, TABLES
from powerplane.topology.tree import Level, Topology


class HistoryQueries:
    """Reads, each on a cursor of its own, so that reads and the writer never wait on each other."""

    topology: Topology
    _con: duckdb.DuckDBPyConnection
    _sizes: dict[str, int]
    _name_index: dict[str, dict[str, int]]

    @staticmethod
    def _describe(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
        rows = con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return [r[0] for r in rows]

    @contextmanager
    def _reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection of its own for one read, so that reads and the writer never wait on each other."""
        cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def _index(self, level: Level, name: str) -> int:
        if level not in self._name_index:
            self._name_index[level] = {n: i for i, n in enumerate(self.topology.names(level))}
        index = self._name_index[level]
        if name in index:
            return index[name]
        if level == "gpu" and name.isdigit() and int(name) < self._sizes["gpu"]:
            return int(name)
        names = list(index)
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
        raise ValueError(f"unknown {level} {name!r}; valid: {shown}")

    def _resolve(self, entity: str) -> tuple[str, int | None]:
        """The table and key of an entity address such as ``rack:hall-1/r00/k01``."""
        kind, _, name = entity.partition(":")
        if entity == "site":
            return "site_1s", None
        if kind in LEVEL_TABLES and name:
            return LEVEL_TABLES[kind], self._index(kind, name)
        if kind == "gpu" and name:
            return "gpu_1m", self._index("gpu", name)
        if kind == "job" and name.lstrip("-").isdigit():
            return "job_1s", int(name)
        raise ValueError(f"unknown entity {entity!r}; valid forms: {ENTITY_FORMS}")

    def series(self, entity: str, metric: str, start_s: float, end_s: float, step_s: float) -> pd.DataFrame:
        """``metric`` of ``entity`` over ``[start_s, end_s)``: one row per ``step_s`` bucket that holds data.

        Buckets start at multiples of ``step_s``. Readings are averaged; ``*max*``/``*peak*`` columns take the
        maximum and cumulative counters (energy, cost) the last value. Columns: ``t_s`` (bucket start), ``value``.
        """
        if not (step_s > 0 and end_s > start_s):
            raise ValueError(f"need step_s > 0 and end_s > start_s; got step_s={step_s}, [{start_s}, {end_s})")
        table, key = self._resolve(entity)
        with self._reader() as con:
            valid = [c for c in self._describe(con, table) if c != "t_s" and c != KEY_COLUMN.get(table)]
            if metric not in valid:
                raise ValueError(f"unknown metric {metric!r} for {entity!r} (table {table}); valid: {', '.join(valid)}")
            col = f'"{metric}"'
            if "max" in metric or "peak" in metric:
                agg = f"max({col})"
            elif "energy" in metric or "cost" in metric:
                agg = f"arg_max({col}, t_s)"
            else:
                agg = f"avg({col})"
            where = "" if key is None else f"{KEY_COLUMN[table]} = $key AND "
            args: dict[str, Any] = {"step": float(step_s), "start": float(start_s), "end": float(end_s)}
            if key is not None:
                args["key"] = key
            sql = (
                f"SELECT floor(t_s / $step) * $step AS t_s, CAST({agg} AS DOUBLE) AS value FROM {table} "
                f"WHERE {where}t_s >= $start AND t_s < $end GROUP BY 1 ORDER BY 1"
            )
            return con.execute(sql, args).df()

    def export_parquet(
        self, table: str, out: str | Path, start_s: float | None = None, end_s: float | None = None
    ) -> int:
        """Write the rows of ``table`` in ``[start_s, end_s)`` to the Parquet file ``out``; returns the row count.

        The file appears only once complete (written beside ``out``, then renamed).
        """
        if table not in (*TABLES, "entities"):
            raise ValueError(f"unknown table {table!r}; valid: {', '.join((*TABLES, 'entities'))}")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
        bounds = [f"t_s >= {float(start_s)!r}"] if start_s is not None else []
        bounds += [f"t_s < {float(end_s)!r}"] if end_s is not None else []
        where = f" WHERE {' AND '.join(bounds)}" if bounds else ""
        order = "level, entity" if table == "entities" else ", ".join(filter(None, ("t_s", KEY_COLUMN.get(table))))
        target = str(tmp).replace("'", "''")
        try:
            with self._reader() as con:
                query = f"SELECT * FROM {table}{where} ORDER BY {order}"
                rows = con.execute(f"COPY ({query}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)").fetchall()
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return int(rows[0][0])
