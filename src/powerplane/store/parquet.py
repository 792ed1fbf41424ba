"""Streaming Parquet tables and all-or-nothing output directories."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from powerplane.core.errors import OutputExistsError


class TableWriter:
    """Append columnar batches to one Parquet file, flushing a row group every ``row_group_rows`` rows."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int = 1 << 20) -> None:
        self.path = path
        self.schema = schema
        self.row_group_rows = row_group_rows
        self._writer = pq.ParquetWriter(str(path), schema, compression="zstd")
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0

    def append(self, columns: dict[str, NDArray[np.generic] | pa.Array]) -> None:
        batch = pa.RecordBatch.from_pydict(columns, schema=self.schema)
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= self.row_group_rows:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_batches(self._pending, schema=self.schema))
            self._pending = []
            self._pending_rows = 0

    def close(self) -> None:
        self.flush()
        self._writer.close()


@contextmanager
def atomic_output_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary directory next to ``out`` that becomes ``out`` only if the block finishes.

    An existing ``out`` is refused unless ``force``; on any error or interrupt the temporary directory is removed,
    so a failed or interrupted run leaves no partial output behind (and an old ``out`` untouched).
    """
    out = out.resolve()
    if out.exists() and not force:
        raise OutputExistsError(f"output directory {out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
