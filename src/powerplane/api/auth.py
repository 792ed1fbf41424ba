"""API tokens with roles (viewer < operator < admin), stored hashed (sha256) in a JSON file of the run's state dir.

A token is shown once, when created; the file keeps only its hash, name and role. There is no default password:
`powerplane run` creates a fresh admin token at every start and prints it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

ROLES = ("viewer", "operator", "admin")
TOKEN_PREFIX = "pp_"


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Tokens in ``path`` (created with mode 0600). Thread-safe; every change is written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._tokens: dict[str, dict[str, str]] = {}  # name -> {"role", "sha256"}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                for row in data.get("tokens", []):
                    if row.get("role") in ROLES and row.get("name") and len(row.get("sha256", "")) == 64:
                        self._tokens[row["name"]] = {"role": row["role"], "sha256": row["sha256"]}
            except (OSError, ValueError) as exc:
                raise ValueError(f"{self.path}: not a token file ({exc})") from exc

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        rows = [{"name": n, **v} for n, v in sorted(self._tokens.items())]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"tokens": rows}, f, indent=1)
        os.replace(tmp, self.path)

    def create(self, name: str, role: str) -> str:
        """A new token for ``name`` (replacing any previous token of that name); returns the secret once."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
        name = name.strip()
        if not name or len(name) > 64 or not all(c.isalnum() or c in "-_.@" for c in name):
            raise ValueError("a token name is 1-64 characters of letters, digits and - _ . @")
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[name] = {"role": role, "sha256": _hash(token)}
            self._save()
        return token

    def revoke(self, name: str) -> bool:
        with self._lock:
            if self._tokens.pop(name, None) is None:
                return False
            self._save()
            return True

    def list(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"name": n, "role": v["role"]} for n, v in sorted(self._tokens.items())]

    def verify(self, token: str) -> Principal | None:
        h = _hash(token)
        with self._lock:
            items = list(self._tokens.items())
        found = None
        for name, v in items:  # compare against every entry in constant time
            if hmac.compare_digest(v["sha256"], h):
                found = Principal(name, v["role"])
        return found
