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
from typing import Final

import numpy as np
from numpy.typing import NDArray

from powerplane.sources.prom_labels import BLOCK_MARK as _BLOCK_MARK
from powerplane.sources.prom_labels import LabelStore, parse_block, unescape
from powerplane.sources.prom_types import (
    METRIC_TYPES,
    NO_TIMESTAMP,
    REJECT_REASONS,
    SUFFIXES,
    LabelSets,
    MetricSamples,
    ParseResult,
    Rejection,
)

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

_METRIC_NAME = re.compile(rb"[a-zA-Z_:][a-zA-Z0-9_:]*")
# The label block of one line on the slow path: braces outside quoted strings.
_BRACES = re.compile(rb'\{((?:[^"}\n]|"(?:[^"\\\n]|\\.)*")*)\}')
_CHUNK: Final = 1 << 22  # bytes the fast path takes at a time
_GOOD_NAMES: set[bytes] = set()  # metric names already validated
_NL_MARK: Final = b"\x00"  # stands for a newline among the value tokens of a fast-path run


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
    return "HELP", parts[1], unescape(rest) if "\\" in rest else rest


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
        self.store = LabelStore()
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
            res = parse_block(content, self.store.skeletons)
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
        for suf in SUFFIXES:
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
