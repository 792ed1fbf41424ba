"""The operations audit trail: one JSON line per action (actor, action, target, reason, before/after), fsynced.

Every acknowledgement, silence and self-healing action is written here. With no path the records are kept in
memory only (tests, dry runs); :meth:`AuditLog.records` reads them back either way.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: str | Path | None, keep: int = 10_000) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._mem: list[dict[str, Any]] = []
        self._keep = keep
        self._seq = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(
        self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None, t_s: float | None = None
    ) -> dict[str, Any]:
        """Append one record; returns it (with its sequence number)."""
        with self._lock:
            self._seq += 1
            rec: dict[str, Any] = {"seq": self._seq, "t_s": t_s, "actor": actor, "action": action, "target": target}
            rec.update(detail or {})
            line = json.dumps(rec, default=str, sort_keys=False)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            self._mem.append(rec)
            if len(self._mem) > self._keep:
                del self._mem[: len(self._mem) - self._keep]
            return rec

    def records(self) -> list[dict[str, Any]]:
        """Every record: from the file when there is one (so it survives a restart), else from memory."""
        with self._lock:
            if self.path is not None and self.path.exists():
                out = []
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a torn last line after a crash: the rest stays readable
                return out
            return list(self._mem)
