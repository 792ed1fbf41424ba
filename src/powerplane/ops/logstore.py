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
thread: DuckDB releases the GIL while it inserts, so mining the next lines and storing the last ones run on two
cores; the writer indexes tokens whenever it has nothing to write (``log_meta.indexed_upto`` says how far; an
index left behind at close is caught up after the next open). Search is exact whatever the index's progress: the
events not indexed yet are scanned. :meth:`LogStore.flush` waits for the writer; every read flushes first, so a
search always sees every event added before it; :meth:`LogStore.wait_indexed` waits for the index too. Without the
thread, events and tokens go in one transaction. A failed insert is counted, its error kept (``errors``), and the
store goes on.
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
ALTER TABLE log_events ADD COLUMN IF NOT EXISTS text_offset INTEGER DEFAULT 0;
CREATE TABLE IF NOT EXISTS log_terms (h UBIGINT, id BIGINT);
CREATE TABLE IF NOT EXISTS log_meta (k VARCHAR PRIMARY KEY, v BIGINT);
"""
_COLUMNS = ("id", "t_s", "host", "gpu", "job", "pci_bus_id", "template_id", "template", "severity",
            "anomaly_score", "reasons", "xid", "action", "line")  # fmt: skip
_QUERY_TERM = re.compile(r'(\w+):("[^"]*"|\S+)|"([^"]*)"|(\S+)')
_TOKEN = re.compile(r"[a-z0-9_]+")
_FIELDS = {"host": "host", "gpu": "gpu", "job": "job", "xid": "xid", "action": "action", "template": "template_id"}
_WORD = "[a-z0-9_]*[a-z_][a-z0-9_]*"  # an indexed token has a letter (or _); numbers are found by a scan
_TERMS_SQL = (
    "INSERT INTO log_terms SELECT unnest(list_transform(regexp_extract_all(lower(substr(line, text_offset + 1)),"
    f" '{_WORD}'), lambda x: hash(x))) AS h, id FROM log_events WHERE id BETWEEN ? AND ?"
)
_META_SQL = "INSERT OR REPLACE INTO log_meta VALUES ('indexed_upto', ?)"
_INDEXED = object()  # placeholder for the indexed-up-to id, filled in under the lock
INDEX_CHUNK = 50_000  # events indexed per transaction by the writer thread when it is idle


class LogStore:
    """Log events in an embedded DuckDB file, with a hashed token index for search."""

    def __init__(
        self, path: str | Path = ":memory:", background: bool = True, max_queued: int = 8, threads: int = 1
    ) -> None:
        import duckdb

        self.path = str(path)
        self.con = duckdb.connect(self.path)
        # One DuckDB thread: the other core mines the next lines (measured faster than DuckDB's own parallelism on
        # 20k-line batches). Checkpoints stay at DuckDB's 16 MB of WAL: they then run in the writer thread, not all
        # at close.
        self.con.execute(f"SET threads = {int(threads)}")
        self.con.execute(_SCHEMA)
        self._next_id = int(self.con.execute("SELECT coalesce(max(id) + 1, 0) FROM log_events").fetchall()[0][0])
        self._written_upto = self._next_id - 1  # last id stored
        meta = self.con.execute("SELECT v FROM log_meta WHERE k = 'indexed_upto'").fetchall()
        self._indexed_upto = int(meta[0][0]) if meta else -1  # last id whose tokens are in log_terms
        self._indexed = threading.Condition()
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
        """Insert one batch; without a writer thread its tokens are indexed in the same transaction."""
        lo, hi = int(batch.column("id")[0].as_py()), int(batch.column("id")[-1].as_py())
        sync = self._queue is None
        with self._lock:
            con = self.con
            con.register("_log_batch", batch)
            try:
                con.execute("BEGIN")
                con.execute(
                    f"INSERT INTO log_events ({', '.join(_COLUMNS)}, text_offset) "
                    f"SELECT {', '.join(_COLUMNS)}, _off FROM _log_batch"
                )
                if sync and self._indexed_upto == lo - 1:
                    con.execute(_TERMS_SQL, [lo, hi])
                    con.execute(_META_SQL, [hi])
                con.execute("COMMIT")
            except Exception as e:
                con.execute("ROLLBACK")
                self.failed_events += n
                self.errors.append(f"{type(e).__name__}: {e}")
                if sync:
                    raise
                return
            finally:
                con.unregister("_log_batch")
            self._written_upto = hi
            if sync and self._indexed_upto == lo - 1:
                self._indexed_upto = hi

    def _index_some(self) -> bool:
        """Index the tokens of the next stored events (at most :data:`INDEX_CHUNK`); False when none are left."""
        lo = self._indexed_upto + 1
        hi = min(self._written_upto, lo + INDEX_CHUNK - 1)
        if hi < lo:
            return False
        with self._lock:
            try:
                self.con.execute("BEGIN")
                self.con.execute(_TERMS_SQL, [lo, hi])
                self.con.execute(_META_SQL, [hi])
                self.con.execute("COMMIT")
            except Exception as e:
                self.con.execute("ROLLBACK")
                self.errors.append(f"index: {type(e).__name__}: {e}")
                return False
        with self._indexed:
            self._indexed_upto = hi
            self._indexed.notify_all()
        return True

    def _run(self) -> None:
        """Write batches as they come; index tokens whenever there is nothing to write."""
        assert self._queue is not None
        q = self._queue
        while True:
            try:
                item = q.get(timeout=0.02)
            except queue.Empty:
                self._index_some()
                continue
            try:
                if item is None:
                    return
                self._write(*item)
            finally:
                q.task_done()

    def wait_indexed(self, timeout_s: float = 60.0) -> bool:
        """Wait until every stored event is in the token index (search is exact either way: it scans the rest)."""
        self.flush()
        if self._queue is None:
            return self._indexed_upto >= self._written_upto
        with self._indexed:
            return self._indexed.wait_for(lambda: self._indexed_upto >= self._written_upto, timeout_s)

    @property
    def unindexed(self) -> int:
        """Stored events whose tokens are not indexed yet."""
        return max(self._written_upto - self._indexed_upto, 0)

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
                    # The hash narrows the indexed events to candidates (events not indexed yet are all candidates);
                    # the token check then rules out hash collisions. It reads the text the index reads (past the
                    # header), so an event gives the same answer before and after the indexer reaches it.
                    where.append("(id > ? OR id IN (SELECT id FROM log_terms WHERE h = hash(?::VARCHAR)))")
                    where.append(
                        "list_contains(regexp_extract_all(lower(substr(line, text_offset + 1)), '[a-z0-9_]+'), ?)"
                    )
                    params += [_INDEXED, tok, tok]
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM log_events WHERE {' AND '.join(where)} "
            "ORDER BY t_s DESC NULLS LAST, id DESC LIMIT ?"
        )
        self.flush()
        with self._lock:
            upto = self._indexed_upto
            params = [upto if p is _INDEXED else p for p in params]
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
