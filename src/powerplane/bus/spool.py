"""The agent's disk spool: messages not yet stored by JetStream, kept on disk so an agent restarted (or killed)
while the bus is down loses nothing.

One file of records, each ``<HII`` (subject length, node frames, payload length), a CRC-32 of what follows, then
the subject and the payload. Appends go to the end as the agent queues messages while the link is down; a
rewrite (temporary file + rename) replaces the file with exactly the queue in memory. A record torn by a crash
mid-write, or damaged, ends the readable part: what comes before it is restored, the rest is counted and reported.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"PPSPOOL1"
_HEAD = struct.Struct("<HIII")  # subject length, node frames, payload length, crc32 of subject + payload

Message = tuple[str, bytes, int]  # subject, payload, node frames in it


@dataclass
class SpoolLoad:
    messages: list[Message]
    damaged_bytes: int  # bytes past the last whole record (a torn write, or damage), dropped
    detail: str


class Spool:
    """Unacknowledged messages of one agent at ``path`` (a file; its directory is created)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = 0  # records in the file now (restored, appended or rewritten)
        self.bytes = 0
        self._fh: int | None = None

    # ------------------------------------------------------------------------------------------ reading

    def load(self) -> SpoolLoad:
        """The messages on disk, oldest first (empty when there is no spool file)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return SpoolLoad([], 0, "no spool")
        if not data:
            return SpoolLoad([], 0, "empty")
        if not data.startswith(MAGIC):
            raise ValueError(f"{self.path} is not an agent spool (header {data[:8]!r}, expected {MAGIC!r})")
        out: list[Message] = []
        pos = len(MAGIC)
        detail = "whole"
        while pos < len(data):
            if pos + _HEAD.size > len(data):
                detail = f"torn record header at byte {pos}"
                break
            n_subj, n_frames, n_pay, crc = _HEAD.unpack_from(data, pos)
            body = pos + _HEAD.size
            end = body + n_subj + n_pay
            if end > len(data):
                detail = f"torn record at byte {pos}"
                break
            blob = data[body:end]
            if zlib.crc32(blob) != crc:
                detail = f"bad checksum at byte {pos}"
                break
            out.append((blob[:n_subj].decode(), bytes(blob[n_subj:]), int(n_frames)))
            pos = end
        damaged = len(data) - pos
        if damaged:
            log.warning("spool %s: %s; %d bytes after it dropped", self.path, detail, damaged)
        self.records, self.bytes = len(out), pos
        return SpoolLoad(out, damaged, detail)

    # ------------------------------------------------------------------------------------------ writing

    @staticmethod
    def _encode(msgs: Iterable[Message]) -> tuple[bytes, int]:
        parts: list[bytes] = []
        n = 0
        for subject, payload, frames in msgs:
            s = subject.encode()
            parts.append(_HEAD.pack(len(s), frames, len(payload), zlib.crc32(s + payload)))
            parts.append(s)
            parts.append(payload)
            n += 1
        return b"".join(parts), n

    def append(self, msgs: Iterable[Message]) -> None:
        """Add messages at the end (one write; the OS has them when this returns, the disk at its next flush)."""
        blob, n = self._encode(msgs)
        if not n:
            return
        if self._fh is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if new:
                os.write(self._fh, MAGIC)
                self.bytes = len(MAGIC)
        os.write(self._fh, blob)
        self.records += n
        self.bytes += len(blob)

    def rewrite(self, msgs: Iterable[Message]) -> None:
        """Replace the spool with exactly ``msgs`` (atomic: a crash leaves the old file or the new one)."""
        blob, n = self._encode(msgs)
        if not n:
            self.clear()
            return
        self._close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.records, self.bytes = n, len(MAGIC) + len(blob)

    def clear(self) -> None:
        """Everything was stored by the bus: no spool."""
        self._close()
        self.path.unlink(missing_ok=True)
        self.records, self.bytes = 0, 0

    def _close(self) -> None:
        if self._fh is not None:
            os.close(self._fh)
            self._fh = None

    def close(self) -> None:
        self._close()
