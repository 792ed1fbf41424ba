"""A durable outbox for notifications: an SQLite file, retries with exponential backoff, survives restarts.

Every message the router decides to send is first committed here (``synchronous=FULL``), then delivered by
:meth:`Outbox.deliver_due`. A failed delivery is retried after ``base_s * 2**attempts`` (capped at ``max_s``,
with a deterministic jitter) until it succeeds or ``give_up_after_s`` passes, when it is kept as *dead* for an
operator to see. So an alert survives a notifier being down and a restart of PowerPlane.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_s REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_s REAL NOT NULL,
    delivered_s REAL,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered_s, dead, next_s);
"""


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_s: float = 2.0
    max_s: float = 300.0
    give_up_after_s: float = 86_400.0


@dataclass
class Message:
    id: int
    receiver: str
    kind: str
    payload: dict[str, Any]
    created_s: float
    attempts: int


class DeliveryError(Exception):
    """A receiver refused or could not be reached; the message is retried."""


Sender = Callable[[Message, float], None]  # raises on failure; the float is the time of the attempt


class Outbox:
    def __init__(self, path: str | Path, retry: RetryPolicy | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retry = retry or RetryPolicy()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def put(self, receiver: str, kind: str, payload: dict[str, Any], now_s: float) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (receiver, kind, payload, created_s, next_s) VALUES (?, ?, ?, ?, ?)",
                (receiver, kind, json.dumps(payload, default=str), now_s, now_s),
            )
            return int(cur.lastrowid or 0)

    def due(self, now_s: float, limit: int = 100) -> list[Message]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, receiver, kind, payload, created_s, attempts FROM outbox "
                "WHERE delivered_s IS NULL AND dead = 0 AND next_s <= ? ORDER BY id LIMIT ?",
                (now_s, limit),
            ).fetchall()
        return [Message(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    def _backoff_s(self, msg_id: int, attempts: int) -> float:
        delay = min(self.retry.base_s * 2.0 ** max(attempts - 1, 0), self.retry.max_s)
        jitter = 1.0 + 0.1 * (((msg_id * 2654435761) >> 7) % 1000) / 1000.0  # spread retries, deterministically
        return float(delay * jitter)

    def deliver_due(self, senders: dict[str, Sender], now_s: float) -> dict[str, int]:
        """Try every due message once; returns counts of delivered, failed and dead."""
        counts = {"delivered": 0, "failed": 0, "dead": 0}
        for m in self.due(now_s):
            send = senders.get(m.receiver)
            try:
                if send is None:
                    raise DeliveryError(f"no receiver named {m.receiver!r} is configured")
                send(m, now_s)
            except Exception as e:
                attempts = m.attempts + 1
                dead = now_s - m.created_s >= self.retry.give_up_after_s
                with self._lock:
                    self._db.execute(
                        "UPDATE outbox SET attempts = ?, next_s = ?, last_error = ?, dead = ? WHERE id = ?",
                        (
                            attempts,
                            now_s + self._backoff_s(m.id, attempts),
                            f"{type(e).__name__}: {e}"[:500],
                            int(dead),
                            m.id,
                        ),
                    )
                counts["dead" if dead else "failed"] += 1
                continue
            with self._lock:
                self._db.execute(
                    "UPDATE outbox SET delivered_s = ?, attempts = ? WHERE id = ?", (now_s, m.attempts + 1, m.id)
                )
            counts["delivered"] += 1
        return counts

    def pending(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM outbox WHERE delivered_s IS NULL AND dead = 0").fetchone()
        return int(row[0])

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT id, receiver, kind, created_s, attempts, next_s, delivered_s, dead, last_error, payload "
                "FROM outbox ORDER BY id"
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
