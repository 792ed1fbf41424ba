"""Label blocks of the Prometheus text format: parsing one ``{...}`` and interning the distinct blocks of a
scrape, column by column (:mod:`powerplane.sources.prom_text` describes the whole design)."""

from __future__ import annotations

import re
from typing import Final

import numpy as np
from numpy.typing import NDArray

from powerplane.sources.prom_types import LabelSets

_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
# Segments between the quoted values of a label block without backslashes, split on '"'.
_SEG_FIRST = re.compile(rf"[ \t]*({_LABEL_NAME})[ \t]*=[ \t]*")
_SEG_MID = re.compile(rf"[ \t]*,[ \t]*({_LABEL_NAME})[ \t]*=[ \t]*")
_SEG_LAST = re.compile(r"[ \t]*,?[ \t]*")
# One label pair of a block that contains escapes.
_PAIR = re.compile(rf'[ \t]*({_LABEL_NAME})[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(?:,[ \t]*|$)')
_ESCAPE = re.compile(r"\\(.)")
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}
BLOCK_MARK: Final = b"\x02"  # prefixes raw label blocks (the fast path uses it to check brace order)


# ---------------------------------------------------------------------------------------------- label blocks

_Skeleton = tuple[tuple[str, ...], bool] | str  # (label names, canonically spelled) or a rejection reason
_Parsed = tuple[tuple[str, ...], tuple[str, ...], bool]  # (names, values, canonically spelled)


def unescape(s: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(0)), s)


def _check_skeleton(segs: tuple[str, ...]) -> _Skeleton:
    """Validate the text around the quoted values of a block (split on '"'); return the label names or a reason."""
    if len(segs) == 1:
        return ((), segs[0] == "") if not segs[0].strip(" \t") else "bad_labels"
    names: list[str] = []
    for k, seg in enumerate(segs[:-1]):
        m = (_SEG_FIRST if k == 0 else _SEG_MID).fullmatch(seg)
        if m is None:
            return "bad_labels"
        names.append(m.group(1))
    if _SEG_LAST.fullmatch(segs[-1]) is None:
        return "bad_labels"
    if len(set(names)) != len(names):
        return "duplicate_label"
    canonical = segs[-1] == "" and segs[0] == names[0] + "="
    canonical = canonical and all(seg == f",{nm}=" for seg, nm in zip(segs[1:-1], names[1:], strict=True))
    return tuple(names), canonical


class _Skeletons(dict[tuple[str, ...], _Skeleton]):
    """Checked skeletons; shared by all parses (exporters repeat theirs), bounded."""

    def __missing__(self, segs: tuple[str, ...]) -> _Skeleton:
        if len(self) >= 4096:
            self.clear()
        res = self[segs] = _check_skeleton(segs)
        return res


_SKELETONS = _Skeletons()


def parse_block(content: bytes, skeletons: _Skeletons) -> _Parsed | str:
    """Parse the inside of one ``{...}``; return (names, values, canonical) or a rejection reason."""
    try:
        s = content.decode("utf-8")
    except UnicodeDecodeError:
        return "bad_utf8"
    if "\n" in s:
        return "bad_labels"
    if "\\" not in s:
        parts = s.split('"')
        if len(parts) % 2 == 0:
            return "bad_labels"
        sk = skeletons[tuple(parts[0::2])]
        if isinstance(sk, str):
            return sk
        return sk[0], tuple(parts[1::2]), sk[1]
    # Escapes present: walk the pairs with a regex.
    names: list[str] = []
    values: list[str] = []
    pos = 0
    n = len(s)
    while pos < n:
        m = _PAIR.match(s, pos)  # a pair ends in a comma or at the end of the block
        if m is None:
            return "bad_labels"
        names.append(m.group(1))
        v = m.group(2)
        values.append(unescape(v) if "\\" in v else v)
        pos = m.end()
    if len(set(names)) != len(names):
        return "duplicate_label"
    return tuple(names), tuple(values), False


class _Batch:
    """Label sets sharing one list of label names, stored by column."""

    __slots__ = ("canonical", "columns", "names", "pids")

    def __init__(self, names: tuple[str, ...], canonical: bool, pids: list[int], columns: list[list[str]]) -> None:
        self.names = names
        self.canonical = canonical
        self.pids = pids
        self.columns = columns


class LabelStore:
    """Parsed label blocks by provisional id (each id: one distinct raw block text)."""

    def __init__(self) -> None:
        self.skeletons = _SKELETONS
        self.batches: list[_Batch] = []
        self.bad: dict[int, str] = {}
        self._singles: dict[tuple[tuple[str, ...], bool], _Batch] = {}

    def add_many(self, raws: list[bytes], pids: list[int]) -> bool:
        """Parse new raw blocks (each ``BLOCK_MARK + content``); False if any was bad (those go to ``bad``)."""
        if len(raws) > 1 and self._add_uniform(raws, pids):
            return True
        if len(raws) > 16:
            groups: dict[int, tuple[list[bytes], list[int]]] = {}
            for raw, pid in zip(raws, pids, strict=True):
                g = groups.setdefault(raw.count(b'"'), ([], []))
                g[0].append(raw)
                g[1].append(pid)
            if len(groups) > 1:
                ok = True
                for g_raws, g_pids in groups.values():
                    ok = self.add_many(g_raws, g_pids) and ok
                return ok
        ok = True
        for raw, pid in zip(raws, pids, strict=True):
            if raw[:1] != BLOCK_MARK or raw.count(BLOCK_MARK) != 1:
                res: _Parsed | str = "bad_labels"
            else:
                res = parse_block(raw[1:], self.skeletons)
            if isinstance(res, str):
                self.bad[pid] = res
                ok = False
            else:
                self.add_parsed(pid, *res)
        return ok

    def add_parsed(self, pid: int, names: tuple[str, ...], values: tuple[str, ...], canonical: bool) -> None:
        b = self._singles.get((names, canonical))
        if b is None:
            b = self._singles[(names, canonical)] = _Batch(names, canonical, [], [[] for _ in names])
            self.batches.append(b)
        b.pids.append(pid)
        for col, v in zip(b.columns, values, strict=True):
            col.append(v)

    def _add_uniform(self, raws: list[bytes], pids: list[int]) -> bool:
        """All blocks spelled with one skeleton and no escapes: split them all at once, column by column."""
        n = len(raws)
        joined = b"\x01".join(raws)
        if (
            joined[:1] != BLOCK_MARK
            or joined.count(BLOCK_MARK) != n
            or joined.count(b"\x01" + BLOCK_MARK) != n - 1
            or joined.count(b"\x01") != n - 1
            or b"\\" in joined
            or b"\n" in joined
        ):
            return False
        try:
            text = joined.decode("utf-8")
        except UnicodeDecodeError:
            return False
        p0 = raws[0][1:].decode("utf-8").split('"')
        if len(p0) % 2 == 0:
            return False
        segs = tuple(p0[0::2])
        sk = self.skeletons[segs]
        if isinstance(sk, str) or not sk[0]:
            return False
        names, canonical = sk
        m = len(names)
        step = 2 * m
        parts = text.split('"')
        if len(parts) != step * n + 1 or parts[0] != "\x02" + segs[0] or parts[-1] != segs[m]:
            return False
        for j in range(1, m):
            if parts[2 * j :: step].count(segs[j]) != n:
                return False
        if n > 1 and parts[step:-1:step].count(segs[m] + "\x01\x02" + segs[0]) != n - 1:
            return False
        self.batches.append(_Batch(names, canonical, list(pids), [parts[2 * j + 1 :: step] for j in range(m)]))
        return True

    def build(self, used: NDArray[np.bool_]) -> tuple[LabelSets, NDArray[np.int64]]:
        """The label table of the used provisional ids, and the map provisional id -> final id."""
        next_id = used.size
        used_ids = np.flatnonzero(used)
        batches = [b for b in self.batches if b.pids and used[np.asarray(b.pids)].any()]
        final = np.full(next_id, -1, dtype=np.int64)
        # Distinct raw blocks are distinct label sets unless one is spelled loosely (spaces, trailing comma,
        # escapes) or the same names come in another order: only then compare the parsed sets.
        by_sorted: dict[tuple[str, ...], tuple[str, ...]] = {}
        exact = True
        for b in batches:
            srt = tuple(sorted(b.names))
            exact = exact and b.canonical and by_sorted.setdefault(srt, b.names) == b.names
        if exact:
            final[used_ids] = np.arange(used_ids.size)
        else:
            final[used_ids] = self._dedupe(batches, used, next_id)[used_ids]
        n_out = int(final.max()) + 1 if used_ids.size else 0
        columns: dict[str, NDArray[np.object_]] = {}
        for b in batches:
            pids = np.asarray(b.pids, dtype=np.int64)
            keep = used[pids]
            dest = final[pids[keep]]
            for label, col in zip(b.names, b.columns, strict=True):
                out = columns.get(label)
                if out is None:
                    out = columns[label] = np.full(n_out, None, dtype=object)
                vals = np.empty(len(col), dtype=object)
                vals[:] = col
                out[dest] = vals[keep]
        return LabelSets(n_out, columns), final

    @staticmethod
    def _dedupe(batches: list[_Batch], used: NDArray[np.bool_], next_id: int) -> NDArray[np.int64]:
        key_of: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for b in batches:
            perm = sorted(range(len(b.names)), key=b.names.__getitem__)
            srt = tuple(b.names[p] for p in perm)
            rows = zip(*(b.columns[p] for p in perm), strict=True) if perm else ((),) * len(b.pids)
            for pid, row in zip(b.pids, rows, strict=True):
                if used[pid]:
                    key_of[pid] = (srt, tuple(row))
        seen: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
        out = np.full(next_id, -1, dtype=np.int64)
        for pid in sorted(key_of):
            out[pid] = seen.setdefault(key_of[pid], len(seen))
        return out


# ---------------------------------------------------------------------------------------------- the parser
