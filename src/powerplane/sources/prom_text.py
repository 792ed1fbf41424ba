"""A fast, columnar parser of the Prometheus text exposition format (version 0.0.4).

``parse(text)`` returns, per series name, a float64 value array, an int64 array of label-set ids and, when any
sample carries one, an int64 timestamp array (milliseconds; :data:`NO_TIMESTAMP` where a sample has none). Label
sets are interned: every distinct ``{...}`` block is parsed once, and identical label sets (even spelled with a
different label order or spacing) share one id across all metrics. That is what makes mapping a dcgm-exporter
scrape to GPUs cheap: each of the ~20 metrics repeats the same per-GPU label block, so 200,000 samples carry only
~10,000 distinct blocks. The label table is columnar (:class:`LabelSets`: label name -> object array of str/None).

Speed comes from treating many lines at once (a few MB of text at a time, so that it stays in the CPU cache):
one ``bytes.replace`` + ``bytes.split`` on the braces separates names, label blocks and value tails; one
``split()`` over the joined tails gives the value tokens (with a marker per newline) and one NumPy conversion
turns them into float64. Label blocks are interned with one dict pass, or, when a run of lines repeats the
blocks of an earlier run (every dcgm-exporter family lists the same GPUs in the same order), by comparing the two
lists (a memcmp per block, no hashing). Each distinct block is parsed once; blocks spelled alike are parsed
together, column by column, with one ``str.split``. Every structural assumption of that fast path is checked
exactly (brace order, one sample per line, names, value/timestamp token counts); a piece of text that fails any
check is parsed again run by run and then line by line, where each bad line is rejected with its line number and
a reason while the rest survive. Tests check the fast path against the line-by-line path on fuzzed input.

Accepted: ``# HELP``/``# TYPE`` lines and other comments, blank lines, CRLF, spaces/tabs around ``{``, ``,``,
``=``, ``}`` and before the value, a trailing comma in a label set, empty label sets (``m 1``, ``m{} 1``), escaped
``\\"``, ``\\\\`` and ``\\n`` in label values (other escapes are kept verbatim, as prometheus_client does), NaN,
+Inf/-Inf, exponent floats, integers of any size (as float64), and an optional integer millisecond timestamp.
``{__name__="m",...}`` (name inside the braces) is accepted on the line-by-line path. Not accepted: the
Prometheus 3 quoted UTF-8 metric names, OpenMetrics exemplars (``# {...}`` after the value), underscores in
numbers, hexadecimal floats.

Rejection reasons: ``bad_metric_name``, ``unclosed_labels``, ``bad_labels``, ``duplicate_label``, ``bad_utf8``,
``missing_value``, ``bad_value``, ``bad_timestamp``, ``trailing_garbage``, ``bad_type``, ``bad_help``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "METRIC_TYPES",
    "NO_TIMESTAMP",
    "REJECT_REASONS",
    "LabelSets",
    "MetricSamples",
    "ParseResult",
    "Rejection",
    "parse",
]

NO_TIMESTAMP: Final[int] = int(np.iinfo(np.int64).min)
METRIC_TYPES: Final = frozenset({"counter", "gauge", "histogram", "summary", "untyped", "unknown"})
REJECT_REASONS: Final = (
    "bad_metric_name",
    "unclosed_labels",
    "bad_labels",
    "duplicate_label",
    "bad_utf8",
    "missing_value",
    "bad_value",
    "bad_timestamp",
    "trailing_garbage",
    "bad_type",
    "bad_help",
)
_SUFFIXES: Final = ("_bucket", "_sum", "_count", "_total", "_created")

_METRIC_NAME = re.compile(rb"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
# Segments between the quoted values of a label block without backslashes, split on '"'.
_SEG_FIRST = re.compile(rf"[ \t]*({_LABEL_NAME})[ \t]*=[ \t]*")
_SEG_MID = re.compile(rf"[ \t]*,[ \t]*({_LABEL_NAME})[ \t]*=[ \t]*")
_SEG_LAST = re.compile(r"[ \t]*,?[ \t]*")
# One label pair of a block that contains escapes.
_PAIR = re.compile(rf'[ \t]*({_LABEL_NAME})[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(?:,[ \t]*|$)')
_ESCAPE = re.compile(r"\\(.)")
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}
# The label block of one line on the slow path: braces outside quoted strings.
_BRACES = re.compile(rb'\{((?:[^"}\n]|"(?:[^"\\\n]|\\.)*")*)\}')
_CHUNK: Final = 1 << 22  # bytes the fast path takes at a time
_GOOD_NAMES: set[bytes] = set()  # metric names already validated
_BLOCK_MARK: Final = b"\x02"  # prefixes raw label blocks (the fast path uses it to check brace order)
_NL_MARK: Final = b"\x00"  # stands for a newline among the value tokens of a fast-path run


class Rejection(NamedTuple):
    line_no: int  # 1-based
    reason: str
    line: str  # the offending line, truncated to 200 characters


class LabelSets:
    """Distinct label sets, stored by column: ``column(name)[i]`` is label ``name`` of set ``i`` (or None)."""

    def __init__(self, n: int, columns: dict[str, NDArray[np.object_]]) -> None:
        self._n = n
        self._columns = columns

    def __len__(self) -> int:
        return self._n

    @property
    def names(self) -> list[str]:
        """All label names seen, sorted."""
        return sorted(self._columns)

    def column(self, name: str) -> NDArray[np.object_]:
        """Values of label ``name`` for every set (object array of str, None where the set lacks it)."""
        col = self._columns.get(name)
        if col is None:
            return np.full(self._n, None, dtype=object)
        return col

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __getitem__(self, i: int) -> dict[str, str]:
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return {k: col[i] for k, col in sorted(self._columns.items()) if col[i] is not None}

    def __iter__(self) -> Iterator[dict[str, str]]:
        for i in range(self._n):
            yield self[i]


@dataclass
class MetricSamples:
    """All samples of one series name, in the order they appeared."""

    name: str
    type: str  # from ``# TYPE`` (histogram/summary suffixes resolved to their family); "untyped" if none
    help: str | None
    values: NDArray[np.float64]
    label_ids: NDArray[np.int64]  # into ParseResult.labels
    timestamps_ms: NDArray[np.int64] | None  # None if no sample had one; NO_TIMESTAMP where one is missing

    def __len__(self) -> int:
        return int(self.values.size)


@dataclass
class ParseResult:
    metrics: dict[str, MetricSamples]
    labels: LabelSets
    types: dict[str, str] = field(default_factory=dict)  # from # TYPE, by family name
    helps: dict[str, str] = field(default_factory=dict)  # from # HELP, by family name
    rejected: list[Rejection] = field(default_factory=list)
    n_lines: int = 0

    @property
    def n_samples(self) -> int:
        return sum(len(m) for m in self.metrics.values())

    @property
    def rejected_counts(self) -> Counter[str]:
        return Counter(r.reason for r in self.rejected)

    def label_values(self, metric: str, label: str) -> NDArray[np.object_]:
        """Label ``label`` of every sample of ``metric`` (object array of str or None)."""
        m = self.metrics[metric]
        return self.labels.column(label)[m.label_ids]

    def samples(self) -> Iterator[tuple[str, dict[str, str], float, int | None]]:
        """(name, labels, value, timestamp_ms or None) for every sample; slow, for tests and debugging."""
        sets = list(self.labels)
        for m in self.metrics.values():
            ts = m.timestamps_ms
            for k in range(len(m)):
                t = None if ts is None or ts[k] == NO_TIMESTAMP else int(ts[k])
                yield m.name, sets[int(m.label_ids[k])], float(m.values[k]), t


# ---------------------------------------------------------------------------------------------- label blocks

_Skeleton = tuple[tuple[str, ...], bool] | str  # (label names, canonically spelled) or a rejection reason
_Parsed = tuple[tuple[str, ...], tuple[str, ...], bool]  # (names, values, canonically spelled)


def _unescape(s: str) -> str:
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


def _parse_block(content: bytes, skeletons: _Skeletons) -> _Parsed | str:
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
        values.append(_unescape(v) if "\\" in v else v)
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


class _LabelStore:
    """Parsed label blocks by provisional id (each id: one distinct raw block text)."""

    def __init__(self) -> None:
        self.skeletons = _SKELETONS
        self.batches: list[_Batch] = []
        self.bad: dict[int, str] = {}
        self._singles: dict[tuple[tuple[str, ...], bool], _Batch] = {}

    def add_many(self, raws: list[bytes], pids: list[int]) -> bool:
        """Parse new raw blocks (each ``_BLOCK_MARK + content``); False if any was bad (those go to ``bad``)."""
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
            if raw[:1] != _BLOCK_MARK or raw.count(_BLOCK_MARK) != 1:
                res: _Parsed | str = "bad_labels"
            else:
                res = _parse_block(raw[1:], self.skeletons)
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
            joined[:1] != _BLOCK_MARK
            or joined.count(_BLOCK_MARK) != n
            or joined.count(b"\x01" + _BLOCK_MARK) != n - 1
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


def _floats(tokens: list[bytes]) -> NDArray[np.float64] | None:
    """Strictly convert value tokens (Go ParseFloat syntax minus hex floats); None if any is invalid."""
    try:
        out = np.array(tokens, dtype=np.float64)
    except (ValueError, OverflowError):
        return None
    if b"_" in b"".join(tokens):  # NumPy and Python accept 1_000; the exposition format does not
        return None
    return out


def _ints(tokens: list[bytes]) -> NDArray[np.int64] | None:
    try:
        out = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        return None
    if b"_" in b"".join(tokens):
        return None
    return out


_COMMENTS: dict[bytes, tuple[str, str, str]] = {}  # exporters repeat the same HELP/TYPE lines


def _parse_comment(line: bytes) -> tuple[str, str, str]:
    """("TYPE"|"HELP", name, value), ("", "", "") for a plain comment, or (reason, "", "")."""
    text = line.rstrip(b"\r").decode("utf-8", "replace")
    parts = text[1:].lstrip(" \t").split(None, 2)
    if not parts or parts[0] not in ("HELP", "TYPE"):
        return "", "", ""
    kind = parts[0]
    reason = "bad_type" if kind == "TYPE" else "bad_help"
    if len(parts) < 2 or _METRIC_NAME.fullmatch(parts[1].encode()) is None:
        return reason, "", ""
    rest = parts[2] if len(parts) > 2 else ""
    if kind == "TYPE":
        typ = rest.strip()
        return ("TYPE", parts[1], typ) if typ in METRIC_TYPES else (reason, "", "")
    return "HELP", parts[1], _unescape(rest) if "\\" in rest else rest


class _Acc:
    """Samples of one series name, collected run by run."""

    __slots__ = ("chunks", "has_ts")

    def __init__(self) -> None:
        self.chunks: list[tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64] | None]] = []
        self.has_ts = False


class _Parser:
    def __init__(self, data: bytes, fast: bool = True) -> None:
        self.data = data
        self.fast = fast  # False: line by line only (the reference the fast path is tested against)
        self.intern: dict[bytes, int] = {}  # raw block (_BLOCK_MARK + content) -> provisional id
        self.next_id = 0
        self.store = _LabelStore()
        self.acc: dict[str, _Acc] = {}
        self.types: dict[str, str] = {}
        self.helps: dict[str, str] = {}
        self.rejected: list[Rejection] = []
        # Label blocks of recent runs, by (number of lines, first block): most families repeat them.
        self._recent: dict[tuple[int, bytes], tuple[list[bytes], NDArray[np.int64]]] = {}
        # Slow-path samples of the current region, flushed as one chunk per name.
        self._slow: dict[str, tuple[list[float], list[int], list[int]]] = {}

    # ------------------------------------------------------------------ driver

    def run(self) -> ParseResult:
        data = self.data
        n = len(data)
        # Comment lines and runs of sample lines, in order; long runs are cut at line ends into pieces of about
        # _CHUNK bytes, and short ones are grouped up to that size: the fast path works best on a few MB at a
        # time (the pieces stay in the CPU cache) and poorly on many tiny pieces (fixed costs).
        items: list[tuple[bool, int, int]] = []  # (is_comment, start, end)
        pos = 0
        for start, end in [*self._comment_lines(), (n, n)]:
            while start - pos > _CHUNK:
                cut = data.find(b"\n", pos + _CHUNK // 2, start) + 1
                if cut <= 0:
                    break
                items.append((False, pos, cut))
                pos = cut
            if start > pos:
                items.append((False, pos, start))
            if start < n:
                items.append((True, start, end))
            pos = end + 1
        line_no = 1
        group: list[tuple[bool, int, int]] = []
        size = 0
        for item in items:
            group.append(item)
            size += item[2] - item[1]
            if size >= _CHUNK // 2:
                line_no = self._group(group, line_no)
                group = []
                size = 0
        if group:
            line_no = self._group(group, line_no)
        return self._finish(line_no - 1)

    def _group(self, items: list[tuple[bool, int, int]], line_no: int) -> int:
        """Parse some comment lines and runs of sample lines; return the line number after them."""
        n_lines = self._fast_group(items) if self.fast else None
        if n_lines is not None:
            return line_no + n_lines
        # Something needs a closer look: run by run, with line numbers, falling back to line by line.
        for is_comment, start, end in items:
            if is_comment:
                self._comment(self.data[start:end], line_no)
                line_no += 1
            else:
                line_no += self._region(start, end, line_no)
        return line_no

    def _trim(self, s: int, e: int) -> tuple[int, int]:
        """Drop blank lines at both ends of the run of lines data[s:e] (they do not spoil the fast path)."""
        data = self.data
        while s < e and data[s] == 10:
            s += 1
        while e - s >= 2 and data[e - 1] == 10 and data[e - 2] == 10:
            e -= 1
        return s, e

    def _fast_group(self, items: list[tuple[bool, int, int]]) -> int | None:
        """The fast path over a group at once; its number of lines, or None (no samples committed)."""
        data = self.data
        spans: list[tuple[int, int]] = []
        blank = 0
        n_comments = 0
        for is_comment, start, end in items:
            if is_comment:
                n_comments += 1
                if self._comment(self.data[start:end], 0) is not None:
                    return None  # a bad HELP/TYPE line: the slower pass reports it with its line number
            else:
                a, b = self._trim(start, end)
                blank += (end - start) - (b - a)  # each byte dropped is the newline of a blank line
                if a < b:
                    spans.append((a, b))
        if not spans:
            return n_comments + blank
        body = data[spans[0][0] : spans[0][1]] if len(spans) == 1 else b"".join([self.data[a:b] for a, b in spans])
        k = self._fast(body)
        if k is None:
            return None
        return k + n_comments + blank

    def _comment_lines(self) -> list[tuple[int, int]]:
        """(start, end) of the lines with ``#`` in column 0, in order (memchr scans)."""
        data = self.data
        n = len(data)
        found: list[tuple[int, int]] = []
        q = data.find(b"#")
        while q >= 0:
            if q == 0 or data[q - 1] == 10:
                e = data.find(b"\n", q)
                if e < 0:
                    e = n
                found.append((q, e))
                q = data.find(b"#", e)
            else:
                q = data.find(b"#", q + 1)
        return found

    def _comment(self, line: bytes, line_no: int) -> str | None:
        """Take in a ``#`` line; return the rejection reason of a bad HELP/TYPE line (rejected if line_no > 0)."""
        res = _COMMENTS.get(line)
        if res is None:
            res = _parse_comment(line)
            if len(_COMMENTS) >= 4096:
                _COMMENTS.clear()
            _COMMENTS[line] = res
        kind, name, value = res
        if kind == "TYPE":
            self.types.setdefault(name, value)
        elif kind == "HELP":
            self.helps.setdefault(name, value)
        elif kind:
            if line_no > 0:
                self._reject(line_no, kind, line)
            return kind
        return None

    def _reject(self, line_no: int, reason: str, line: bytes) -> None:
        self.rejected.append(Rejection(line_no, reason, line[:200].decode("utf-8", "replace")))

    # ------------------------------------------------------------------ one run of sample lines

    def _region(self, s: int, e: int, line_no: int) -> int:
        """Parse the whole lines data[s:e]; return how many lines that was."""
        a, b = self._trim(s, e)
        if a < b and self.fast:
            k = self._fast(self.data[a:b])
            if k is not None:
                return k + (a - s) + (e - b)
        return self._slow_region(self.data[s:e], line_no)

    def _fast(self, region: bytes) -> int | None:
        """Parse lines ``NAME{labels} value [timestamp]`` all at once; None (nothing committed) to fall back.

        One replace + split on the braces separates names, label blocks and value tails; one split of the joined
        tails gives the value tokens with a marker for each newline. Every assumption is checked exactly: each
        block follows a ``{`` (the mark the replace puts there), the tails contain no braces, each line has one
        value (and optionally one timestamp) and ends in a newline followed by the next line's name.
        """
        parts = region.replace(b"{", b"}" + _BLOCK_MARK).split(b"}")
        n_parts = len(parts)
        if n_parts < 3 or not n_parts & 1:
            return None
        k = n_parts >> 1
        first = parts[0].strip(b" \t")
        if _METRIC_NAME.fullmatch(first) is None:  # (checked here: NumPy's bytes arrays drop trailing NULs)
            return None
        tail = b" ".join(parts[2::2])  # (a space keeps a line's name apart from the next line's tail)
        if _NL_MARK in tail or _BLOCK_MARK in tail:
            return None
        if b"\r" in tail:
            tail = tail.replace(b"\r\n", b"\n")
        if b"\r" in tail or b"\x0b" in tail or b"\x0c" in tail:  # only spaces and tabs separate tokens
            return None
        toks = tail.replace(b"\n", b" \x00 ").split()
        nt = len(toks)
        # Tokens per line: value [timestamp] NL NAME-of-next-line; the last line ends value [timestamp] [NL].
        period = 0
        for p in (3, 4):
            if nt in (p * k - 1, p * k - 2):
                marks = toks[p - 2 :: p]
                if marks.count(_NL_MARK) == len(marks):
                    period = p
                    break
        if not period:
            return None
        next_names = toks[period - 1 :: period]
        if next_names.count(first) == k - 1:
            runs = [(first, 0, k)]
        else:
            # Several metric names: split into runs of equal names (one family each, normally).
            names_arr = np.array([first, *next_names])
            cuts = (np.flatnonzero(names_arr[1:] != names_arr[:-1]) + 1).tolist()
            starts = [0, *cuts]
            ends = [*cuts, k]
            runs = [(names_arr[a].item(), a, b) for a, b in zip(starts, ends, strict=True)]
        for name, _, _ in runs:
            if name not in _GOOD_NAMES:
                if _METRIC_NAME.fullmatch(name) is None:
                    return None
                if len(_GOOD_NAMES) < 65536:
                    _GOOD_NAMES.add(name)
        values = _floats(toks[0::period])
        if values is None or values.size != k:
            return None
        ts: NDArray[np.int64] | None = None
        if period == 4:
            ts = _ints(toks[1::4])
            if ts is None:
                return None
        raws = parts[1::2]
        store = self.store
        had_bad = bool(store.bad)
        sd = self.intern.setdefault
        recent = self._recent
        added: list[tuple[tuple[int, bytes], list[bytes], NDArray[np.int64]]] = []
        new_raws: list[bytes] = []
        new_pids: list[int] = []
        commits: list[tuple[bytes, int, int, NDArray[np.int64]]] = []
        for name, a, b in runs:
            n = b - a
            rr = raws if n == k else raws[a:b]
            # The usual exporter layout: every family lists the same label blocks in the same order. Comparing
            # with the blocks of an earlier run (a memcmp per block) is much cheaper than hashing them all again.
            key = (n, rr[0])
            hit = recent.get(key)
            if hit is not None and hit[0] == rr:
                ids = hit[1]
            else:
                base = self.next_id
                ids = np.fromiter(map(sd, rr, range(base, base + n)), dtype=np.int64, count=n)
                self.next_id = base + n
                for i in np.flatnonzero(ids == np.arange(base, base + n)).tolist():
                    new_raws.append(rr[i])
                    new_pids.append(base + i)
                added.append((key, rr, ids))
                if hit is None:
                    recent[key] = (rr, ids)  # provisional: dropped below if this call falls back
            commits.append((name, a, b, ids))
        if new_raws and not store.add_many(new_raws, new_pids):
            for key, rr, _ in added:
                if recent.get(key, (None,))[0] is rr:
                    del recent[key]
            return None
        if had_bad:  # a block seen before this call may have been rejected then
            seen = np.unique(np.concatenate([c[3] for c in commits])).tolist()
            if not store.bad.keys().isdisjoint(seen):
                for key, rr, _ in added:
                    if recent.get(key, (None,))[0] is rr:
                        del recent[key]
                return None
        if len(recent) > 1024:
            recent.clear()
        for name, a, b, ids in commits:
            if b - a == k:
                self._add(name.decode(), values, ids, ts)
            else:
                self._add(name.decode(), values[a:b], ids, None if ts is None else ts[a:b])
        if nt == period * k - 1 and not region.endswith(b"\n"):
            return k + 1  # blanks after the last newline: one more (empty) line
        return k

    def _add(
        self, name: str, values: NDArray[np.float64], ids: NDArray[np.int64], ts: NDArray[np.int64] | None
    ) -> None:
        acc = self.acc.get(name)
        if acc is None:
            acc = self.acc[name] = _Acc()
        acc.chunks.append((values, ids, ts))
        if ts is not None:
            acc.has_ts = True

    # ------------------------------------------------------------------ line by line

    def _slow_region(self, region: bytes, line_no: int) -> int:
        lines = region.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        self._slow = {}
        for i, line in enumerate(lines):
            self._slow_line(line, line_no + i)
        for name, (vals, ids, tss) in self._slow.items():
            ts_arr = np.array(tss, dtype=np.int64) if any(t != NO_TIMESTAMP for t in tss) else None
            self._add(name, np.array(vals, dtype=np.float64), np.array(ids, dtype=np.int64), ts_arr)
        self._slow = {}
        return len(lines)

    def _label_id(self, raw: bytes) -> int | str:
        """Provisional id of a raw block, parsing it on first sight; or the reason it was rejected."""
        pid = self.intern.get(raw)
        if pid is None:
            pid = self.intern[raw] = self.next_id
            self.next_id += 1
            self.store.add_many([raw], [pid])
        return self.store.bad.get(pid, pid)

    def _slow_line(self, line: bytes, line_no: int) -> None:
        ln = line.rstrip(b"\r").strip(b" \t")
        if not ln:
            return
        if ln.startswith(b"#"):
            self._comment(ln, line_no)
            return
        m = _METRIC_NAME.match(ln)
        name: bytes | None = None
        pos = 0
        if m is not None:
            name = m.group()
            pos = m.end()
            if pos < len(ln) and ln[pos] not in b" \t{":
                self._reject(line_no, "bad_labels" if ln[pos] == 0x7D else "bad_metric_name", line)  # "}"
                return
            while pos < len(ln) and ln[pos] in b" \t":
                pos += 1
        content = b""
        if pos < len(ln) and ln[pos] == 0x7B:  # "{"
            bm = _BRACES.match(ln, pos)
            if bm is None:
                self._reject(line_no, "bad_labels" if b"}" in ln[pos:] else "unclosed_labels", line)
                return
            content = bm.group(1)
            pos = bm.end()
            if pos < len(ln) and ln[pos] in b"{}":
                self._reject(line_no, "bad_labels", line)
                return
        elif name is None:
            self._reject(line_no, "bad_metric_name", line)
            return
        pid = self._label_id(_BLOCK_MARK + content)
        if isinstance(pid, str):
            self._reject(line_no, pid, line)
            return
        if name is None:  # {__name__="...", ...}
            res = _parse_block(content, self.store.skeletons)
            assert not isinstance(res, str)
            label_names, label_values, _ = res
            j = label_names.index("__name__") if "__name__" in label_names else -1
            if j < 0 or _METRIC_NAME.fullmatch(label_values[j].encode()) is None:
                self._reject(line_no, "bad_metric_name", line)
                return
            name = label_values[j].encode()
            raw = _BLOCK_MARK + b"\x00" + content  # a key no fast-path block can have
            pid2 = self.intern.get(raw)
            if pid2 is None:
                pid2 = self.intern[raw] = self.next_id
                self.next_id += 1
                self.store.add_parsed(
                    pid2, label_names[:j] + label_names[j + 1 :], label_values[:j] + label_values[j + 1 :], False
                )
            pid = pid2
        rest = ln[pos:]
        if b"\r" in rest or b"\x0b" in rest or b"\x0c" in rest:  # only spaces and tabs separate tokens
            self._reject(line_no, "bad_value", line)
            return
        toks = rest.split()
        if not toks:
            self._reject(line_no, "missing_value", line)
            return
        if len(toks) > 2:
            self._reject(line_no, "trailing_garbage", line)
            return
        v = _floats(toks[:1])
        if v is None:
            self._reject(line_no, "bad_value", line)
            return
        t = NO_TIMESTAMP
        if len(toks) == 2:
            ta = _ints(toks[1:])
            if ta is None:
                self._reject(line_no, "bad_timestamp", line)
                return
            t = int(ta[0])
        slot = self._slow.get(name.decode())
        if slot is None:
            slot = self._slow[name.decode()] = ([], [], [])
        slot[0].append(float(v[0]))
        slot[1].append(pid)
        slot[2].append(t)

    # ------------------------------------------------------------------ assembly

    def _finish(self, n_lines: int) -> ParseResult:
        used = np.zeros(self.next_id, dtype=bool)
        for acc in self.acc.values():
            for _, ids, _ in acc.chunks:
                used[ids] = True
        labels, final = self.store.build(used)
        metrics: dict[str, MetricSamples] = {}
        for name, acc in self.acc.items():
            chunks = acc.chunks
            values = chunks[0][0] if len(chunks) == 1 else np.concatenate([c[0] for c in chunks])
            ids = final[chunks[0][1] if len(chunks) == 1 else np.concatenate([c[1] for c in chunks])]
            ts: NDArray[np.int64] | None = None
            if acc.has_ts:
                ts = np.concatenate(
                    [c[2] if c[2] is not None else np.full(c[0].size, NO_TIMESTAMP, np.int64) for c in chunks]
                )
            family = self._family(name)
            metrics[name] = MetricSamples(
                name=name,
                type=self.types.get(family, "untyped"),
                help=self.helps.get(family),
                values=values,
                label_ids=ids,
                timestamps_ms=ts,
            )
        return ParseResult(
            metrics=metrics,
            labels=labels,
            types=self.types,
            helps=self.helps,
            rejected=sorted(self.rejected),
            n_lines=n_lines,
        )

    def _family(self, name: str) -> str:
        if name in self.types or name in self.helps:
            return name
        for suf in _SUFFIXES:
            if name.endswith(suf):
                base = name[: -len(suf)]
                typ = self.types.get(base)
                if typ in ("histogram", "summary") or (typ == "counter" and suf in ("_total", "_created")):
                    return base
        return name


def parse(text: str | bytes | bytearray | memoryview) -> ParseResult:
    """Parse one scrape in the Prometheus text exposition format. Never raises on bad lines: see ``rejected``."""
    # (Encoding a str in one go measured faster than piece by piece: fewer fresh pages to fault in.)
    return _Parser(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)).run()


def _parse_line_by_line(text: str | bytes) -> ParseResult:
    """The reference: ``parse`` without the fast path (for tests)."""
    return _Parser(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text), fast=False).run()
