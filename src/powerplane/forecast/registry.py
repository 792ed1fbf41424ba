"""The model registry: versioned models with metadata, aliases and an audit history of every alias move.

One DuckDB file (the embedded history's database format, default ``runs/registry.duckdb``) holds three tables:

- ``models``: ``version`` (vMAJOR.MINOR.PATCH), ``name``, ``created_s``, ``metadata`` (JSON: training window,
  features, hyperparameters, data hash, backtest metrics) and ``blob`` (the serialized model);
- ``aliases``: ``alias`` (``champion``, ``challenger``) -> ``version``;
- ``alias_history``: every move: ``seq``, ``t_s``, ``alias``, ``from_version``, ``to_version``, ``action``
  (promote/rollback), ``actor`` (shown as ``by``), ``reason``. A rollback restores the alias's previous
  holder and says what it rolled back from.

Times come from the caller (an injected clock), never from the wall clock here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from powerplane.core.errors import PowerPlaneError

DEFAULT_PATH = Path("runs/registry.duckdb")
LOCK_WAIT_S = 10.0  # how long a call waits for another process to let go of the file
ALIASES = ("champion", "challenger")
_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    version VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, created_s DOUBLE NOT NULL,
    metadata VARCHAR NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (alias VARCHAR PRIMARY KEY, version VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS alias_history (
    seq BIGINT PRIMARY KEY, t_s DOUBLE NOT NULL, alias VARCHAR NOT NULL, from_version VARCHAR,
    to_version VARCHAR, action VARCHAR NOT NULL, actor VARCHAR NOT NULL, reason VARCHAR NOT NULL);
"""


class RegistryError(PowerPlaneError):
    """A registry operation that cannot be done (unknown version or alias, nothing to roll back to)."""


def parse_version(v: str) -> tuple[int, int, int]:
    """``"v1.2.3"`` -> ``(1, 2, 3)``.

    >>> parse_version("v1.10.0")
    (1, 10, 0)
    """
    m = _VERSION.match(v)
    if not m:
        raise RegistryError(f"not a version vMAJOR.MINOR.PATCH: {v!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass(frozen=True)
class ModelRecord:
    version: str
    name: str
    created_s: float
    metadata: dict[str, Any]
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "created_s": self.created_s,
            "aliases": list(self.aliases),
            "metadata": self.metadata,
        }


class Registry:
    """A registry in one DuckDB file; each call opens and closes its own connection (safe across processes)."""

    def __init__(self, path: Path | str = DEFAULT_PATH) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open the file, waiting while another process has it open (DuckDB locks a file to one process at a time:
        a simulation loading the champion while ``serve`` or a backtest touches the registry); after
        ``LOCK_WAIT_S`` the lock error goes to the caller."""
        deadline_s = time.monotonic() + LOCK_WAIT_S
        delay_s = 0.02
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() + delay_s > deadline_s:
                    raise
                time.sleep(delay_s)
                delay_s = min(delay_s * 2.0, 0.5)

    # ------------------------------------------------------------------ models

    def next_version(self, bump: str = "minor") -> str:
        """The version after the highest one: ``bump`` is major, minor or patch (v1.0.0 when empty)."""
        with self._db() as db:
            rows = db.execute("SELECT version FROM models").fetchall()
        if not rows:
            return "v1.0.0"
        a, b, c = max(parse_version(r[0]) for r in rows)
        if bump == "major":
            return f"v{a + 1}.0.0"
        if bump == "patch":
            return f"v{a}.{b}.{c + 1}"
        if bump != "minor":
            raise RegistryError(f"bump must be major, minor or patch, got {bump!r}")
        return f"v{a}.{b + 1}.0"

    def register(
        self,
        name: str,
        blob: bytes,
        metadata: dict[str, Any],
        t_s: float,
        version: str | None = None,
        bump: str = "minor",
    ) -> str:
        """Store a model; returns its version."""
        v = version or self.next_version(bump)
        parse_version(v)
        with self._db() as db:
            if db.execute("SELECT 1 FROM models WHERE version = ?", [v]).fetchone():
                raise RegistryError(f"version {v} already exists")
            db.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?)",
                [v, name, float(t_s), json.dumps(metadata, default=float), blob],
            )
        return v

    def _aliases_of(self, db: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for alias, version in db.execute("SELECT alias, version FROM aliases ORDER BY alias").fetchall():
            out.setdefault(version, []).append(alias)
        return out

    def models(self) -> list[ModelRecord]:
        with self._db() as db:
            rows = db.execute("SELECT version, name, created_s, metadata FROM models").fetchall()
            al = self._aliases_of(db)
        recs = [ModelRecord(r[0], r[1], r[2], json.loads(r[3]), tuple(al.get(r[0], ()))) for r in rows]
        return sorted(recs, key=lambda r: parse_version(r.version))

    def show(self, version_or_alias: str) -> ModelRecord:
        v = self.resolve(version_or_alias)
        with self._db() as db:
            r = db.execute("SELECT version, name, created_s, metadata FROM models WHERE version = ?", [v]).fetchone()
            al = self._aliases_of(db)
        assert r is not None
        return ModelRecord(r[0], r[1], r[2], json.loads(r[3]), tuple(al.get(v, ())))

    def load(self, version_or_alias: str) -> tuple[ModelRecord, bytes]:
        rec = self.show(version_or_alias)
        with self._db() as db:
            row = db.execute("SELECT blob FROM models WHERE version = ?", [rec.version]).fetchone()
        assert row is not None
        return rec, bytes(row[0])

    def resolve(self, version_or_alias: str) -> str:
        """A version, or the version an alias points to."""
        with self._db() as db:
            if version_or_alias in ALIASES:
                row = db.execute("SELECT version FROM aliases WHERE alias = ?", [version_or_alias]).fetchone()
                if row is None:
                    raise RegistryError(f"alias {version_or_alias!r} points to no model yet")
                return str(row[0])
            if not db.execute("SELECT 1 FROM models WHERE version = ?", [version_or_alias]).fetchone():
                raise RegistryError(f"no model {version_or_alias!r} in {self.path}")
        return version_or_alias

    # ------------------------------------------------------------------ aliases

    def alias(self, alias: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT version FROM aliases WHERE alias = ?", [alias]).fetchone()
        return None if row is None else str(row[0])

    def _move(
        self, db: duckdb.DuckDBPyConnection, alias: str, to: str | None, action: str, t_s: float, by: str, reason: str
    ) -> str | None:
        row = db.execute("SELECT version FROM aliases WHERE alias = ?", [alias]).fetchone()
        old = None if row is None else str(row[0])
        if to is None:
            db.execute("DELETE FROM aliases WHERE alias = ?", [alias])
        else:
            db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?)", [alias, to])
        seq = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM alias_history").fetchone()
        db.execute(
            "INSERT INTO alias_history VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [int(seq[0]) if seq else 1, float(t_s), alias, old, to, action, by, reason],
        )
        return old

    def promote(
        self, version: str, alias: str = "champion", *, t_s: float, by: str = "cli", reason: str = ""
    ) -> str | None:
        """Point ``alias`` at ``version``; returns the previous holder (recorded in the history)."""
        if alias not in ALIASES:
            raise RegistryError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
        v = self.resolve(version)
        with self._db() as db:
            return self._move(db, alias, v, "promote", t_s, by, reason)

    def rollback(
        self, alias: str = "champion", *, t_s: float, by: str = "cli", reason: str = ""
    ) -> tuple[str, str | None]:
        """Restore the alias's previous holder. Returns (rolled back from, restored to)."""
        with self._db() as db:
            cur = db.execute("SELECT version FROM aliases WHERE alias = ?", [alias]).fetchone()
            if cur is None:
                raise RegistryError(f"alias {alias!r} points to no model: nothing to roll back")
            # walk the history backwards: the holder before the current one's promotion
            rows = db.execute(
                "SELECT from_version, to_version, action FROM alias_history WHERE alias = ? ORDER BY seq DESC", [alias]
            ).fetchall()
            current = str(cur[0])
            previous = self._previous(rows, current)
            if previous is None:
                raise RegistryError(f"{alias} {current} has no previous holder to roll back to")
            self._move(db, alias, previous, "rollback", t_s, by, reason or f"rolled back from {current}")
        return current, previous

    @staticmethod
    def _previous(rows: list[tuple[Any, ...]], current: str) -> str | None:
        """The holder before ``current`` in the alias's stack of promotions (rollbacks pop the stack)."""
        stack: list[str | None] = []
        for frm, _to, action in reversed(rows):  # oldest first
            if action == "promote":
                stack.append(frm)
            elif action == "rollback" and stack:
                stack.pop()
        while stack:
            prev = stack.pop()
            if prev is not None and prev != current:
                return prev
        return None

    def history(self, alias: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT seq, t_s, alias, from_version, to_version, action, actor, reason FROM alias_history"
        args: list[Any] = []
        if alias:
            q += " WHERE alias = ?"
            args.append(alias)
        with self._db() as db:
            rows = db.execute(q + " ORDER BY seq", args).fetchall()
        keys = ("seq", "t_s", "alias", "from_version", "to_version", "action", "by", "reason")
        return [dict(zip(keys, r, strict=True)) for r in rows]
