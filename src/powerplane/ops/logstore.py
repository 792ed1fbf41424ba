"""The log store: events in an embedded DuckDB file with a token index for full-text search, written by a thread.

DuckDB's ``fts`` extension must be downloaded (not possible offline) and its index is rebuilt from scratch after
inserts, which does not suit a stream. Here every line's tokens (``[a-z0-9_]+`` of the lowercased line) go to a
``log_terms`` table as 64-bit hashes, extracted by DuckDB itself, vectorized, in the same transaction as the
events. What is indexed: the tokens with a letter of the program tag and message (not the header's time and host,
which are the ``t_s`` and ``host`` columns; not bare numbers). That is ~40 % of a syslog line's tokens, and hashes
are 8 bytes against a string each: the index costs a quarter of a full string token table to write. A word search
matches the hash, then checks the line (so a hash collision never returns a wrong line); numbers, ``word*``
prefixes and ``"phrases"`` scan the lines; ``host:`` filters the host column.

With ``background=True`` (the default) :meth:`LogStore.add` builds the Arrow batch and hands it to a writer
thread: DuckDB releases the GIL while it inserts and indexes, so mining the next lines and storing the last ones
run on two cores. :meth:`LogStore.flush` waits for the writer; every read flushes first, so a search always sees
every event added before it. A failed insert is counted, its error kept (``errors``), and the store goes on.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from powerplane.ops.logs import LogEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_events (
    id BIGINT, t_s DOUBLE, host VARCHAR, gpu INTEGER, job BIGINT, pci_bus_id VARCHAR,
    template_id INTEGER, template VARCHAR, severity TINYINT, anomaly_score REAL, reasons VARCHAR,
    xid INTEGER, action VARCHAR, line VARCHAR
);
CREATE TABLE IF NOT EXISTS log_terms (h UBIGINT, id BIGINT);
"""
_COLUMNS = ("id", "t_s", "host", "gpu", "job", "pci_bus_id", "template_id", "template", "severity",
            "anomaly_score", "reasons", "xid", "action", "line")  # fmt: skip
_QUERY_TERM = re.compile(r'(\w+):("[^"]*"|\S+)|"([^"]*)"|(\S+)')
_TOKEN = re.compile(r"[a-z0-9_]+")
_FIELDS = {"host": "host", "gpu": "gpu", "job": "job", "xid": "xid", "action": "action", "template": "template_id"}
_WORD = "[a-z0-9_]*[a-z_][a-z0-9_]*"  # an indexed token has a letter (or _); numbers are found by a scan
_TERMS_SQL = (
    f"INSERT INTO log_terms SELECT unnest(list_transform(regexp_extract_all(lower(substr(line, _off + 1)), '{_WORD}'),"
    " lambda x: hash(x))) AS h, id FROM _log_batch"
)


class LogStore:
    """Log events in an embedded DuckDB file, with a hashed token index for search."""

    def __init__(
        self, path: str | Path = ":memory:", background: bool = True, max_queued: int = 8, threads: int = 1
    ) -> None:
        import duckdb

        self.path = str(path)
        self.con = duckdb.connect(self.path)
        # One DuckDB thread: the other core mines the next lines (measured faster than DuckDB's own parallelism on
        # 20k-line batches); checkpoints every 256 MB of WAL rather than 16 MB (each one rewrites row groups).
        self.con.execute(f"SET threads = {int(threads)}")
        self.con.execute("SET checkpoint_threshold = '256MB'")
        self.con.execute(_SCHEMA)
        self._next_id = int(self.con.execute("SELECT coalesce(max(id) + 1, 0) FROM log_events").fetchall()[0][0])
        self.errors: list[str] = []
        self.failed_events = 0
        self._lock = threading.Lock()  # one DuckDB connection: the writer and readers take turns
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=max_queued)  # bounded: a slow disk slows the producer, never OOMs
            self._thread = threading.Thread(target=self._run, name="log-store-writer", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------------------------------- writing

    def add(self, events: Sequence[LogEvent]) -> int:
        """Store events (one columnar insert; tokens indexed by DuckDB in the same transaction)."""
        if not events:
            return 0
        batch = self._batch(events)
        n = len(events)
        if self._queue is None:
            self._write(batch, n)
        else:
            self._queue.put((batch, n))
        return n

    def _batch(self, events: Sequence[LogEvent]) -> Any:
        """The events as one Arrow table (one comprehension per column: the fastest way from Python objects)."""
        import numpy as np
        import pyarrow as pa

        n, i0 = len(events), self._next_id
        self._next_id += n
        xids = [e.xid for e in events]
        cols: dict[str, Any] = {
            "id": pa.array(np.arange(i0, i0 + n, dtype=np.int64)),
            "t_s": pa.array([e.t_s for e in events], pa.float64()),
            "host": pa.array([e.host for e in events], pa.string()),
            "gpu": pa.array([e.gpu for e in events], pa.int32()),
            "job": pa.array([e.job for e in events], pa.int64()),
            "pci_bus_id": pa.array([e.pci_bus_id for e in events], pa.string()),
            "template_id": pa.array([e.template_id for e in events], pa.int32()),
            "template": pa.array([e.template for e in events], pa.string()),
            "severity": pa.array([e.severity for e in events], pa.int8()),
            "anomaly_score": pa.array([e.anomaly_score for e in events], pa.float32()),
            "reasons": pa.array([e.reasons for e in events], pa.string()),
            "xid": pa.array([None if x is None else x.xid for x in xids], pa.int32()),
            "action": pa.array([None if x is None else x.action.value for x in xids], pa.string()),
            "line": pa.array([e.line for e in events], pa.string()),
            "_off": pa.array([e.text_offset for e in events], pa.int32()),
        }
        return pa.table(cols)

    def _write(self, batch: Any, n: int) -> None:
        with self._lock:
            con = self.con
            con.register("_log_batch", batch)
            try:
                con.execute("BEGIN")
                con.execute(f"INSERT INTO log_events SELECT {', '.join(_COLUMNS)} FROM _log_batch")
                con.execute(_TERMS_SQL)
                con.execute("COMMIT")
            except Exception as e:
                con.execute("ROLLBACK")
                self.failed_events += n
                self.errors.append(f"{type(e).__name__}: {e}")
                if self._queue is None:
                    raise
            finally:
                con.unregister("_log_batch")

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every added event is written."""
        if self._queue is not None:
            self._queue.join()

    # ------------------------------------------------------------------------------------------- reading

    def count(self) -> int:
        self.flush()
        with self._lock:
            return int(self.con.execute("SELECT count(*) FROM log_events").fetchall()[0][0])

    def search(self, query: str, limit: int = 50, min_score: float = 0.0) -> list[dict[str, Any]]:
        """Events matching every term of ``query``, newest first. Terms: words (token match, ``word*`` for a
        prefix), ``"a phrase"`` (substring, case-insensitive), and ``host:``, ``gpu:``, ``job:``, ``xid:``,
        ``action:``, ``template:`` filters."""
        where: list[str] = ["anomaly_score >= ?"]
        params: list[Any] = [min_score]
        for field, value, phrase, word in _QUERY_TERM.findall(query):
            if field and field.lower() in _FIELDS:
                col = _FIELDS[field.lower()]
                v = value.strip('"')
                if col in ("host", "action"):
                    where.append(f"lower({col}) = lower(?)")
                    params.append(v)
                else:
                    where.append(f"{col} = ?")
                    params.append(int(v))
                continue
            if phrase or (field and value):
                text = phrase or f"{field}:{value}"
                where.append("line ILIKE ?")
                params.append("%" + text.replace("%", r"\%").replace("_", r"\_") + "%")
                continue
            prefix = word.endswith("*")
            toks = _TOKEN.findall(word.lower())
            for k, tok in enumerate(toks):
                if prefix and k == len(toks) - 1:
                    where.append("regexp_matches(lower(line), ?)")
                    params.append(f"(^|[^a-z0-9_]){tok}")
                elif tok.isdigit():
                    where.append("regexp_matches(lower(line), ?)")
                    params.append(f"(^|[^a-z0-9_]){tok}([^a-z0-9_]|$)")
                else:
                    # The hash narrows to candidate lines; the token check on the line rules out collisions.
                    where.append("id IN (SELECT id FROM log_terms WHERE h = hash(?::VARCHAR))")
                    where.append("list_contains(regexp_extract_all(lower(line), '[a-z0-9_]+'), ?)")
                    params += [tok, tok]
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM log_events WHERE {' AND '.join(where)} "
            "ORDER BY t_s DESC NULLS LAST, id DESC LIMIT ?"
        )
        self.flush()
        with self._lock:
            rows = self.con.execute(sql, [*params, int(limit)]).fetchall()
        return [dict(zip(_COLUMNS, r, strict=True)) for r in rows]

    def close(self) -> None:
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None
        with self._lock:
            self.con.close()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
