"""A small expression language over snapshot metrics, compiled once to NumPy operations.

An alert rule's expression is parsed with Python's :mod:`ast` and a whitelist of nodes (user text is never
``eval``-ed) and compiled to a tree of closures. Evaluated against a cycle's :class:`Env` it yields one value per
entity of the rule's *level* (the finest level the expression names); coarser references are gathered down to it
through the topology's parent indices, scalars broadcast.

References:
- ``LEVEL.METRIC``: the reading of each entity (``gpu.temp_c``, ``rack.inlet_temp_c``, ``bess.soc``). A value whose
  quality is not OK reads as NaN, so every comparison on it is False (unknown is never a breach); ``missing()``
  tests for it explicitly. Static facts of an entity read the same way (``gpu.slowdown_temp_c``, ``gpu.tdp_w``,
  ``rack.limit_w``, ``hall.busbar_limit_w``, ``bess.soc_min``), see :class:`Env`.
- ``LEVEL.CHILD.METRIC.AGG`` or ``LEVEL.METRIC.AGG``: a rollup (``rack.gpu.temp_c.max``, ``rack.power_w.sum`` takes
  the nearest child level that has it); AGG is one of sum, mean, max, coverage, count.
- ``context.KEY``: a runtime fact (``context.cycle_lag_s``); a missing key is NaN.
- A bare name is a context key as well (``contract_w``).

Functions: ``rate(x)`` and ``delta(x)`` (per second / per cycle change of a counter; NaN on the first cycle and
on a counter reset), ``rate(x, W)`` and ``increase(x, W)`` over a window of W seconds, ``missing(x)`` (quality
not OK), ``bit(x, mask)`` (any of the mask's bits set), ``abs``, ``min``, ``max``, ``first(a, b, ...)`` (the
first finite value; an argument the snapshot lacks is skipped), ``isnan``. Operators: ``+ - * / % **``,
comparisons (also chained), ``and or not`` and ``& | ~`` on booleans.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from powerplane.telemetry.snapshot import Snapshot
from powerplane.topology import Topology

F64 = NDArray[np.float64]
Value = F64 | float
Fn = Callable[["Env"], Value]

LEVEL_ORDER = ("gpu", "node", "rack", "row", "hall", "site")
OTHER_LEVELS = ("bess",)
AGGS = ("sum", "mean", "max", "coverage", "count")


class ExprError(ValueError):
    """An expression that cannot be compiled: says what and where."""


@dataclass
class Env:
    """What one cycle's expressions read: the snapshot, the context and the static facts per entity.

    ``cache`` keeps each reference's array for the cycle, so rules sharing a metric read it once.
    """

    topo: Topology
    snapshot: Snapshot
    context: Mapping[str, float]
    static: Mapping[str, Mapping[str, F64]]
    cache: dict[str, Value] = field(default_factory=dict)

    @property
    def t_s(self) -> float:
        return float(self.context.get("t_s", self.snapshot.t_s))


class Unknown(Exception):
    """A reference the snapshot does not have this cycle (e.g. a metric the source does not report)."""


@dataclass
class Compiled:
    """A compiled expression: ``fn(env)`` gives one value per entity of ``level`` (or a scalar)."""

    text: str
    level: str  # the entity level the result is indexed by ("site" for a scalar expression)
    fn: Fn
    value_fn: Fn  # the left side of the top comparison (the number an alert reports)
    refs: tuple[str, ...]

    def evaluate(self, env: Env) -> Value:
        return self.fn(env)


_BINOPS: dict[type[ast.operator], Callable[[Value, Value], Value]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
    ast.Mod: np.mod,
    ast.Pow: np.power,
    ast.BitAnd: lambda a, b: np.logical_and(a, b),
    ast.BitOr: lambda a, b: np.logical_or(a, b),
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Value, Value], Value]] = {
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


def _rank(level: str) -> int:
    return LEVEL_ORDER.index(level) if level in LEVEL_ORDER else -1


class _Compiler:
    def __init__(self, text: str, topo: Topology) -> None:
        self.text = text
        self.topo = topo
        self.levels: set[str] = set()
        self.refs: list[str] = []
        self.memo: dict[int, tuple[str, Fn]] = {}  # one closure per node: stateful ones (rate) are shared

    def fail(self, node: ast.AST, what: str) -> ExprError:
        col = getattr(node, "col_offset", 0)
        return ExprError(f"{what} at column {col + 1} of {self.text!r}")

    # References -------------------------------------------------------------------------------------

    def _dotted(self, node: ast.expr) -> list[str]:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            raise self.fail(node, "a reference must be a dotted name like gpu.temp_c")
        parts.append(node.id)
        return parts[::-1]

    def reference(self, node: ast.expr) -> tuple[str, Fn]:
        parts = self._dotted(node)
        head = parts[0]
        if head == "context" or len(parts) == 1:
            key = parts[-1] if head == "context" else head
            if head == "context" and len(parts) != 2:
                raise self.fail(node, "context references are context.KEY")
            return "site", _context(key)
        if head not in LEVEL_ORDER and head not in OTHER_LEVELS:
            raise self.fail(node, f"unknown level {head!r} (levels: {', '.join(LEVEL_ORDER + OTHER_LEVELS)})")
        if len(parts) == 2:
            ref = ".".join(parts)
            self.refs.append(ref)
            return head, _reading(head, parts[1])
        if len(parts) == 3 and parts[2] in AGGS:
            children = [c for c in LEVEL_ORDER[: max(_rank(head), 0)]][::-1]
            self.refs.append(".".join(parts))
            return head, _rollup(head, children, parts[1], parts[2])
        if len(parts) == 4 and parts[3] in AGGS:
            if _rank(parts[1]) < 0 or _rank(parts[1]) >= _rank(head):
                raise self.fail(node, f"{parts[1]!r} is not a level below {head!r}")
            self.refs.append(".".join(parts))
            return head, _rollup(head, [parts[1]], parts[2], parts[3])
        raise self.fail(
            node, f"cannot read {'.'.join(parts)!r} (LEVEL.METRIC or LEVEL[.CHILD].METRIC.{'|'.join(AGGS)})"
        )

    # Nodes ------------------------------------------------------------------------------------------

    def compile(self, node: ast.AST) -> tuple[str, Fn]:
        """(level, fn) of a node; level is where its values are indexed ("site" = scalar)."""
        hit = self.memo.get(id(node))
        if hit is None:
            hit = self.memo[id(node)] = self._compile(node)
        return hit

    def _compile(self, node: ast.AST) -> tuple[str, Fn]:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise self.fail(node, f"only numbers are allowed as constants, not {node.value!r}")
            c = float(node.value)
            return "site", lambda env: c
        if isinstance(node, ast.Attribute | ast.Name):
            return self.reference(node)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")
            return self._combine([node.left, node.right], lambda a: op(a[0], a[1]))
        if isinstance(node, ast.UnaryOp):
            level, fn = self.compile(node.operand)
            if isinstance(node.op, ast.USub):
                return level, lambda env: np.negative(fn(env))
            if isinstance(node.op, ast.UAdd):
                return level, fn
            if isinstance(node.op, ast.Not | ast.Invert):
                return level, lambda env: np.logical_not(_truthy(fn(env)))
            raise self.fail(node, "unary operator not allowed")
        if isinstance(node, ast.BoolOp):
            red = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            return self._combine(list(node.values), lambda a: _reduce(red, [_truthy(x) for x in a]))
        if isinstance(node, ast.Compare):
            ops = [_CMPOPS.get(type(o)) for o in node.ops]
            if any(o is None for o in ops):
                raise self.fail(node, "only < <= > >= == != comparisons are allowed")
            cmp = [o for o in ops if o is not None]

            def chain(a: list[Value]) -> Value:
                out = [cmp[i](a[i], a[i + 1]) for i in range(len(cmp))]
                return _reduce(np.logical_and, out)

            return self._combine([node.left, *node.comparators], chain)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(node, f"{type(node).__name__} is not allowed in a rule expression")

    def _combine(self, nodes: list[ast.expr], f: Callable[[list[Value]], Value]) -> tuple[str, Fn]:
        parts = [self.compile(n) for n in nodes]
        level = _finest([p[0] for p in parts])
        fns = [self._lift(lv, fn, level, n) for (lv, fn), n in zip(parts, nodes, strict=True)]
        return level, lambda env: f([fn(env) for fn in fns])

    def _lift(self, from_level: str, fn: Fn, to_level: str, node: ast.AST) -> Fn:
        """Gather a coarser level's values down to ``to_level`` (one index per entity)."""
        self.levels.add(to_level)
        if from_level == to_level or from_level == "site":
            return fn
        if from_level in OTHER_LEVELS or to_level in OTHER_LEVELS:
            raise self.fail(node, f"cannot combine {from_level!r} and {to_level!r} values")
        idx = self.topo.parent_index(to_level, from_level)  # type: ignore[arg-type]

        def lifted(env: Env) -> Value:
            v = fn(env)
            return v[idx] if isinstance(v, np.ndarray) else v

        return lifted

    def call(self, node: ast.Call) -> tuple[str, Fn]:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise self.fail(node, "only plain calls of the listed functions are allowed")
        name = node.func.id
        args = node.args
        if name in ("rate", "delta", "increase"):
            window = 0.0
            if name == "delta" and len(args) != 1:
                raise self.fail(node, "delta() takes one counter")
            if len(args) == 2 and isinstance(args[1], ast.Constant) and isinstance(args[1].value, int | float):
                window = float(args[1].value)
            elif len(args) != 1 or name == "increase":
                raise self.fail(node, f"{name}() takes a counter and a window in seconds: {name}(x, 60)")
            level, fn = self.compile(args[0])
            return level, _Change(fn, name, window)
        if name == "missing":
            if len(args) != 1 or not isinstance(args[0], ast.Attribute):
                raise self.fail(node, "missing() takes one LEVEL.METRIC reference")
            parts = self._dotted(args[0])
            if len(parts) != 2:
                raise self.fail(node, "missing() takes one LEVEL.METRIC reference")
            self.refs.append(".".join(parts))
            return parts[0], _missing(parts[0], parts[1])
        if name == "bit":
            if len(args) != 2 or not isinstance(args[1], ast.Constant) or not isinstance(args[1].value, int):
                raise self.fail(node, "bit(x, MASK) takes a value and an integer mask")
            level, fn = self.compile(args[0])
            mask = int(args[1].value)

            def bits(env: Env) -> Value:
                v = np.asarray(fn(env))
                ok = np.isfinite(v)
                return (np.where(ok, v, 0).astype(np.int64) & mask) != 0

            return level, bits
        if name == "first":
            return self._first(node)
        simple: dict[str, Callable[[list[Value]], Value]] = {
            "abs": lambda a: np.abs(a[0]),
            "isnan": lambda a: np.isnan(a[0]),
            "min": lambda a: _reduce(np.fmin, a),
            "max": lambda a: _reduce(np.fmax, a),
        }
        if name not in simple:
            raise self.fail(node, f"unknown function {name!r} (rate, delta, missing, bit, {', '.join(simple)})")
        if not args or (name in ("abs", "isnan") and len(args) != 1):
            raise self.fail(node, f"wrong number of arguments to {name}()")
        return self._combine(list(args), simple[name])

    def _first(self, node: ast.Call) -> tuple[str, Fn]:
        """``first(a, b, ...)``: per entity the first finite value; an argument the snapshot lacks is skipped."""
        if len(node.args) < 2:
            raise self.fail(node, "first() takes two or more values")
        parts = [self.compile(n) for n in node.args]
        level = _finest([p[0] for p in parts])
        fns = [self._lift(lv, fn, level, n) for (lv, fn), n in zip(parts, node.args, strict=True)]

        def first(env: Env) -> Value:
            got: list[Value] = []
            missing: Unknown | None = None
            for fn in fns:
                try:
                    got.append(fn(env))
                except Unknown as e:
                    missing = e
            if not got:
                assert missing is not None
                raise missing
            return _first(got)

        return level, first


def _finest(levels: list[str]) -> str:
    other = {lv for lv in levels if lv in OTHER_LEVELS}
    if other:
        if len(other) > 1 or any(lv not in OTHER_LEVELS and lv != "site" for lv in levels):
            raise ExprError(f"cannot combine levels {sorted(set(levels))} in one expression")
        return other.pop()
    return min(levels, key=_rank)


def _reduce(f: Callable[[Value, Value], Value], values: list[Value]) -> Value:
    out = values[0]
    for v in values[1:]:
        out = f(out, v)
    return out


def _truthy(v: Value) -> Value:
    a = np.asarray(v)
    if a.dtype == np.bool_:
        return v
    return np.where(np.isnan(a), False, a != 0)  # NaN is unknown: false


def _first(values: list[Value]) -> Value:
    out = values[-1]
    for v in values[-2::-1]:
        out = np.where(np.isfinite(v), v, out)
    return out


def _context(key: str) -> Fn:
    def get(env: Env) -> Value:
        v = env.context.get(key)
        return float(v) if v is not None else float("nan")

    return get


def _reading(level: str, metric: str) -> Fn:
    key = f"{level}.{metric}"

    def get(env: Env) -> Value:
        hit = env.cache.get(key)
        if hit is not None:
            return hit
        ld = env.snapshot.levels.get(level)
        if ld is not None and metric in ld.values:
            v = ld.values[metric]
            q = ld.quality[metric]
            out: Value = np.where(q == 0, v, np.nan) if q.any() else v
        else:
            st = env.static.get(level, {}).get(metric)
            if st is None:
                raise Unknown(key)
            out = st
        env.cache[key] = out
        return out

    return get


def _missing(level: str, metric: str) -> Fn:
    def get(env: Env) -> Value:
        ld = env.snapshot.levels.get(level)
        if ld is None or metric not in ld.values:
            raise Unknown(f"{level}.{metric}")
        return ld.quality[metric] != 0

    return get


def _rollup(level: str, children: list[str], metric: str, agg: str) -> Fn:
    def get(env: Env) -> Value:
        ups = env.snapshot.rollups.get(level, {})
        for child in children:
            r = ups.get(f"{child}.{metric}")
            if r is not None:
                return np.asarray(getattr(r, agg), dtype=np.float64)
        raise Unknown(f"{level}.{metric}.{agg}")

    return get


class _Change:
    """``rate``/``delta``/``increase`` of a counter (state is per compiled expression).

    Without a window: the change since the previous cycle. With ``window_s``: the change since the oldest sample
    inside the window (Prometheus' ``increase``/``rate`` over a range; a partly filled window spans what it has).
    A counter that went down (a reset) gives NaN for that window: no change we can know.
    """

    def __init__(self, fn: Fn, mode: str, window_s: float = 0.0) -> None:
        self.fn = fn
        self.mode = mode  # rate | delta | increase
        self.window_s = window_s
        self.samples: deque[tuple[float, F64]] = deque()
        self.out_t = float("nan")
        self.out: Value = float("nan")

    def __call__(self, env: Env) -> Value:
        t = env.t_s
        if t == self.out_t:  # asked again this cycle (the alert's value): the same answer
            return self.out
        self.out = self._change(env, t)
        self.out_t = t
        return self.out

    def _change(self, env: Env, t: float) -> Value:
        v = np.asarray(self.fn(env), dtype=np.float64)
        s = self.samples
        if s and (s[-1][1].shape != v.shape or not t > s[-1][0]):
            s.clear()
        last = s[-1][1] if s else None
        # A reading that is unknown this cycle keeps the last known one, so the change spans the gap.
        cur = v.copy() if last is None else np.where(np.isnan(v), last, v)
        if self.window_s > 0:
            while len(s) > 1 and t - s[1][0] >= self.window_s:
                s.popleft()
            base = s[0] if s else None
        else:
            base = s[-1] if s else None
            s.clear()
        s.append((t, cur))
        if base is None:
            return np.full(v.shape, np.nan) if v.ndim else float("nan")
        t0, old = base
        d = cur - old
        if self.window_s > 0 and last is not None:
            d = np.where(cur < last, np.nan, d)  # reset inside the window
        d = np.where(d < 0, np.nan, d)
        return d / (t - t0) if self.mode == "rate" else d


def compile_expr(text: str, topo: Topology, value: str | None = None) -> Compiled:
    """Compile ``text``; raises :class:`ExprError` naming what is wrong and where."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"syntax error in {text!r}: {e.msg} at column {e.offset}") from None
    c = _Compiler(text, topo)
    level, fn = c.compile(tree.body)
    body = tree.body
    left: ast.AST = body
    while isinstance(left, ast.BoolOp):
        left = left.values[0]
    if isinstance(left, ast.Compare):
        left = left.left
    if value is not None:
        try:
            vtree = ast.parse(value.strip(), mode="eval")
        except SyntaxError as e:
            raise ExprError(f"syntax error in value {value!r}: {e.msg} at column {e.offset}") from None
        left = vtree.body
    if left is body:
        value_fn = fn
    else:
        vlevel, vfn = c.compile(left)
        value_fn = vfn if vlevel == level else c._lift(vlevel, vfn, level, left)
    return Compiled(text, level, fn, value_fn, tuple(dict.fromkeys(c.refs)))
