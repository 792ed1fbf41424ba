"""The Prometheus text-format parser: parity with prometheus_client, bad lines, values, labels, fast vs slow path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from powerplane.config import load_scenario
from powerplane.sources.dcgm_synth import synth_scrape
from powerplane.sources.prom_text import NO_TIMESTAMP, ParseResult, _parse_line_by_line, parse
from powerplane.topology.tree import Topology

Sample = tuple[str, tuple[tuple[str, str], ...], float, int | None]


def ours(text: str | bytes) -> list[Sample]:
    res = parse(text)
    return [(n, tuple(sorted(lab.items())), v, t) for n, lab, v, t in res.samples()]


def theirs(text: str) -> list[Sample]:
    """prometheus_client's samples, with its OpenMetrics munging undone (counter ``_total``, seconds)."""
    sample_names = {line.split("{")[0].split()[0] for line in text.splitlines() if line.strip() and line[0] != "#"}
    out: list[Sample] = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name = s.name
            if fam.type == "counter" and name.endswith("_total") and name not in sample_names:
                name = name[: -len("_total")]
            ts = None if s.timestamp is None else round(float(s.timestamp) * 1000)
            out.append((name, tuple(sorted(s.labels.items())), float(s.value), ts))
    return out


def same(a: list[Sample], b: list[Sample]) -> bool:
    def key(s: Sample) -> tuple[str, tuple[tuple[str, str], ...], float | str, int | None]:
        return (s[0], s[1], "nan" if math.isnan(s[2]) else s[2], s[3])

    return sorted(map(key, a), key=repr) == sorted(map(key, b), key=repr)


TRICKY = r"""# HELP dcgm_power Power draw (in W), with \\ and \n escapes in help.
# TYPE dcgm_power gauge
dcgm_power{gpu="0",UUID="GPU-aa",Hostname="node-1",DCGM_FI_DRIVER_VERSION="550.54.15"} 312.5
dcgm_power{gpu="1",UUID="GPU-bb",Hostname="node-1",DCGM_FI_DRIVER_VERSION="550.54.15"} 1e3
dcgm_power{gpu="2",UUID="GPU-cc",hostname="node-2",GPU_I_PROFILE="1g.10gb",GPU_I_ID="7"} -1.5E-2
dcgm_power {gpu="3" , UUID = "GPU-dd" ,  pod="train-0",namespace="ml",container="worker",}   +Inf
dcgm_power{gpu="4",UUID="GPU-ee",note="quote \" backslash \\ newline \n brace } { comma, eq="} -Inf
dcgm_power{gpu="5",UUID="GPU-ff",modelName="NVIDIA H100 80GB HBM3"} NaN
dcgm_power{} 7
dcgm_power 8
# a comment line
#another comment
# TYPE dcgm_energy counter
dcgm_energy{gpu="0"} 12345678901234567890 1700000000000
dcgm_energy{gpu="1"} 9007199254740993 1700000000001
	dcgm_energy{gpu="2"}	42	-5

# TYPE rpc_seconds histogram
rpc_seconds_bucket{le="0.1"} 3
rpc_seconds_bucket{le="+Inf"} 5
rpc_seconds_sum 1.25
rpc_seconds_count 5
untyped_metric{a="b"} .5
"""


def test_parity_with_prometheus_client_on_tricky_text() -> None:
    a, b = ours(TRICKY), theirs(TRICKY)
    assert len(a) == len(b) == 16
    assert same(a, b)
    res = parse(TRICKY)
    assert res.rejected == []
    assert res.types == {"dcgm_power": "gauge", "dcgm_energy": "counter", "rpc_seconds": "histogram"}
    assert res.helps["dcgm_power"] == "Power draw (in W), with \\ and \n escapes in help."
    assert res.metrics["rpc_seconds_bucket"].type == "histogram"
    assert res.metrics["untyped_metric"].type == "untyped"
    assert res.n_lines == TRICKY.count("\n")


def test_parity_on_a_synthetic_dcgm_scrape_with_mig_pods_and_timestamps() -> None:
    site, _ = load_scenario("small")
    topo = Topology.from_site(site)
    for kw in ({}, {"mig": True, "pods": True, "t_ms": 1_700_000_000_000, "hostname_label": "hostname"}):
        text = synth_scrape(topo, metrics=6, **kw)  # type: ignore[arg-type]
        a, b = ours(text), theirs(text)
        assert len(a) == len(b) > 6 * topo.n_gpus - 1
        assert same(a, b)


def test_values_nan_inf_exponents_and_big_integers() -> None:
    text = "m NaN\nm +Inf\nm -Inf\nm Inf\nm 1.5e+300\nm -2E-5\nm 18446744073709551617\nm 9007199254740993\nm -0\n"
    v = parse(text).metrics["m"].values
    assert v.dtype == np.float64
    assert math.isnan(v[0]) and v[1] == math.inf and v[2] == -math.inf and v[3] == math.inf
    assert v[4] == 1.5e300 and v[5] == -2e-5
    assert v[6] == float(18446744073709551617) and v[7] == float(9007199254740993)
    assert math.copysign(1.0, v[8]) == -1.0


def test_timestamps_absent_mixed_and_present() -> None:
    assert parse('a{x="1"} 1\na{x="2"} 2\n').metrics["a"].timestamps_ms is None
    ts = parse('a{x="1"} 1 1000\na{x="2"} 2\na{x="3"} 3 -7\n').metrics["a"].timestamps_ms
    assert ts is not None and ts.tolist() == [1000, NO_TIMESTAMP, -7]
    fast = parse("".join(f'a{{x="{i}"}} {i} {1_700_000_000_000 + i}\n' for i in range(100))).metrics["a"]
    assert fast.timestamps_ms is not None
    assert fast.timestamps_ms.tolist() == [1_700_000_000_000 + i for i in range(100)]


BAD_LINES = {
    "bad_metric_name": ["9metric 1", "met-ric 1", '{a="b"} 1', "m.x 1"],
    "unclosed_labels": ['m{a="b" 1', 'm{a="b",'],
    "bad_labels": [
        "m{a=b} 1",
        'm{a="b"c="d"} 1',
        'm{,a="b"} 1',
        'm{a="b",,} 1',
        'm{1a="b"} 1',
        'm{a="b"}} 1',
        'm}a="b"{ 1',
        'm{a="unterminated} 1',
    ],
    "duplicate_label": ['m{a="b",a="c"} 1', 'm{a="b",a="b\\n"} 1'],
    "missing_value": ['m{a="b"}', "m", 'm{a="b"}   '],
    "bad_value": ['m{a="b"} one', 'm{a="b"} 1_000', 'm{a="b"} 0x1p3', 'm{a="b"} 1.2.3', "m 12abc"],
    "bad_timestamp": ['m{a="b"} 1 1.5', 'm{a="b"} 1 abc', 'm{a="b"} 1 99999999999999999999'],
    "trailing_garbage": ['m{a="b"} 1 2 3', 'm{a="b"} 1 2 # exemplar'],
    "bad_type": ["# TYPE m", "# TYPE m bogus", "# TYPE 9m gauge"],
    "bad_help": ["# HELP", "# HELP 9m text"],
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_each_bad_line_class_is_rejected_with_its_reason_and_neighbours_survive(reason: str) -> None:
    for bad in BAD_LINES[reason]:
        good = [f'm{{a="{i}"}} {i}' for i in range(6)]
        lines = [*good[:3], bad, *good[3:]]
        text = "# TYPE m gauge\n" + "\n".join(lines) + "\n"
        res = parse(text)
        assert [(r.line_no, r.reason) for r in res.rejected] == [(5, reason)], bad
        assert res.rejected[0].line == bad
        m = res.metrics["m"]
        assert m.values.tolist() == [0, 1, 2, 3, 4, 5], bad
        assert res.label_values("m", "a").tolist() == [str(i) for i in range(6)]


def test_bad_utf8_is_rejected() -> None:
    res = parse(b'm{a="\xff\xfe"} 1\nm{a="ok"} 2\n')
    assert [(r.line_no, r.reason) for r in res.rejected] == [(1, "bad_utf8")]
    assert res.metrics["m"].values.tolist() == [2.0]


def test_many_bad_lines_never_crash_and_are_all_counted() -> None:
    rng = np.random.default_rng(3)
    good = synth_scrape(Topology.from_site(load_scenario("small")[0]), metrics=3).splitlines()
    junk = [b for v in BAD_LINES.values() for b in v if not b.startswith("#")]
    lines = list(good)
    where = sorted(rng.choice(np.arange(10, len(lines)), size=40, replace=False).tolist(), reverse=True)
    for k, pos in enumerate(where):
        lines.insert(pos, junk[k % len(junk)])
    res = parse("\n".join(lines) + "\n")
    assert len(res.rejected) == 40
    assert res.n_samples == sum(1 for s in good if not s.startswith("#"))


def test_two_samples_on_one_line_and_a_split_line_are_rejected() -> None:
    text = 'm{a="1"} 1 m{a="2"} 2\nm{a="3"}\n3\nm{a="4"} 4\n'
    res = parse(text)
    assert [(r.line_no, r.reason) for r in res.rejected] == [
        (1, "trailing_garbage"),
        (2, "missing_value"),
        (3, "bad_metric_name"),
    ]
    assert res.metrics["m"].values.tolist() == [4.0]


def test_crlf_blank_lines_no_final_newline_and_empty_input() -> None:
    text = '# TYPE m gauge\r\n\r\nm{a="1"} 1\r\n\r\nm{a="2"} 2\r\n\n\nm{a="3"} 3'
    res = parse(text)
    assert res.rejected == []
    assert res.metrics["m"].values.tolist() == [1.0, 2.0, 3.0]
    assert res.types == {"m": "gauge"}
    assert res.n_lines == 8
    empty = parse("")
    assert empty.n_samples == 0 and empty.rejected == [] and len(empty.labels) == 0
    only_comments = parse("# HELP m x\n# TYPE m gauge\n")
    assert only_comments.n_samples == 0 and only_comments.helps == {"m": "x"}


def test_label_sets_are_interned_across_metrics_and_spellings() -> None:
    text = (
        'a{gpu="0",Hostname="n1"} 1\na{gpu="1",Hostname="n1"} 2\n'
        'b{gpu="0",Hostname="n1"} 3\nb{gpu="1",Hostname="n1"} 4\n'
        'c{Hostname="n1",gpu="0"} 5\nc{ gpu = "1" , Hostname = "n1" , } 6\n'
    )
    res = parse(text)
    assert len(res.labels) == 2
    assert res.metrics["a"].label_ids.tolist() == res.metrics["b"].label_ids.tolist()
    assert res.metrics["c"].label_ids.tolist() == res.metrics["a"].label_ids.tolist()
    assert res.labels[0] == {"gpu": "0", "Hostname": "n1"}
    assert res.labels.column("gpu").tolist() == ["0", "1"]
    assert res.labels.column("absent").tolist() == [None, None]


def test_synthetic_site_scrape_fast_path_equals_line_by_line_path() -> None:
    topo = Topology.from_site(load_scenario("small")[0])
    text = synth_scrape(topo, mig=True, pods=True, t_ms=1_700_000_000_000)
    fast = parse(text)
    # A bad line in every family sends every run through the line-by-line path.
    spoiled = text.replace("\n# HELP", "\nbroken line here\n# HELP")
    slow = parse(spoiled)
    assert len(slow.rejected) == 19 and fast.rejected == []
    assert ours(text) == [s for s in ours(spoiled)]
    assert len(fast.labels) == len(slow.labels)
    for name, m in fast.metrics.items():
        np.testing.assert_array_equal(m.values, slow.metrics[name].values)
        np.testing.assert_array_equal(m.label_ids, slow.metrics[name].label_ids)


def test_str_and_bytes_inputs_agree_and_unicode_label_values_survive() -> None:
    text = 'm{site="Zürich",emoji="⚡"} 1\nm{site="Tōkyō",emoji=""} 2\n'
    assert ours(text) == ours(text.encode())
    assert parse(text).label_values("m", "site").tolist() == ["Zürich", "Tōkyō"]


def test_name_inside_braces_form() -> None:
    res = parse('{__name__="m",a="b"} 1\nm{a="c"} 2\n')
    assert res.rejected == []
    assert sorted(ours('{__name__="m",a="b"} 1\nm{a="c"} 2\n')) == [
        ("m", (("a", "b"),), 1.0, None),
        ("m", (("a", "c"),), 2.0, None),
    ]


label_value = st.text(alphabet=st.sampled_from(list('ab \\"\n{},=#}µ')), max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(label_value, label_value, st.floats(allow_nan=False, width=64)), min_size=1, max_size=6))
def test_property_escaped_label_values_round_trip_like_prometheus_client(
    rows: list[tuple[str, str, float]],
) -> None:
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = [f'm{{a="{esc(a)}",b="{esc(b)}"}} {v!r}' for a, b, v in rows]
    text = "# TYPE m gauge\n" + "\n".join(lines) + "\n"
    res = parse(text)
    assert res.rejected == []
    assert same(ours(text), theirs(text))
    assert [(s[1], s[2]) for s in ours(text)] == [((("a", a), ("b", b)), v) for a, b, v in rows]


def _canon(res: ParseResult) -> tuple[list[tuple[str, str, float, int | None]], list[tuple[int, str]]]:
    samples = [(n, repr(sorted(lab.items())), v, t) for n, lab, v, t in res.samples()]
    return samples, [(r.line_no, r.reason) for r in res.rejected]


FUZZ_BASE = (
    "# HELP m Power.\n# TYPE m gauge\n"
    + "".join(f'm{{gpu="{i}",UUID="GPU-{i:04d}",Hostname="n{i // 8}"}} {100 + i}.5\n' for i in range(24))
    + "# TYPE c counter\n"
    + "".join(f'c{{gpu="{i}",UUID="GPU-{i:04d}",Hostname="n{i // 8}"}} {10**17 + i} {1000 + i}\n' for i in range(24))
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([FUZZ_BASE, TRICKY]),
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(FUZZ_BASE) + len(TRICKY)),
            st.integers(min_value=0, max_value=3),
            st.sampled_from(
                [*'{}"=, \t\n\\#x1.e-+_\r\x0b', "} ", "\n\n", "m{", '",', "\x00", "\x02", "\r\n", "\n#", "é"]
            ),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_fuzz_fast_path_agrees_with_line_by_line_path(base: str, edits: list[tuple[int, int, str]]) -> None:
    """Random edits of a valid text: the fast path must accept, reject and count exactly like the reference."""
    text = base
    for pos, delete, insert in edits:
        pos = min(pos, len(text))
        text = text[:pos] + insert + text[pos + delete :]
    fast, slow = parse(text), _parse_line_by_line(text)
    a, b = _canon(fast), _canon(slow)
    assert [s[:2] + s[3:] for s in a[0]] == [s[:2] + s[3:] for s in b[0]]
    np.testing.assert_array_equal([s[2] for s in a[0]], [s[2] for s in b[0]])
    assert a[1] == b[1]
    assert fast.n_lines == slow.n_lines
