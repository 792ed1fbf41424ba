"""Benchmark the Prometheus text parser on a full-site dcgm-exporter scrape, side by side with prometheus_client.

The text: `texas` (10,240 GPUs) x 20 dcgm-exporter metrics from `powerplane.sources.dcgm_synth`, about 205,000
samples. Cases, all on the same text in the same process:
  prometheus_client   `text_string_to_metric_families`, consumed fully (one run: it is slow)
  ours (bytes)        `prom_text.parse` on the bytes an HTTP response gives          [target: >= 50x, 2 M samples/s]
  ours (str)          the same on a str (includes the UTF-8 encode)
  ours + map          parse, then map every sample onto its GPU (`DcgmMapper`)
  ours per host       the same samples as 1,280 per-node texts, parsed one by one (what a scrape of every node's
                      exporter costs)
Times are the median of --repeats runs (prometheus_client: one run).

Usage: python benchmarks/bench_dcgm_parse.py [--repeats 7] [--skip-baseline] [--record]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from machine_info import add_table_row, machine, median_s

HERE = Path(__file__).resolve().parent
HEADING = "## Telemetry: dcgm-exporter scrape parse"
TABLE_HEADER = [
    "| date | machine | samples | MB | prometheus_client s | ours p50 s | ours samples/s | speed-up "
    "| ours (str) s | ours + map s | per host (1,280 texts) s |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def run(repeats: int, baseline: bool) -> dict[str, float]:
    from powerplane.config import load_scenario
    from powerplane.sources.dcgm import DcgmMapper
    from powerplane.sources.dcgm_synth import synth_scrape, synth_scrape_per_host
    from powerplane.sources.prom_text import parse
    from powerplane.topology.tree import Topology

    site, _ = load_scenario("texas")
    topo = Topology.from_site(site)
    text = synth_scrape(topo)
    data = text.encode()
    hosts = [t.encode() for t in synth_scrape_per_host(topo).values()]
    mapper = DcgmMapper(topo)

    res = parse(data)
    n = res.n_samples
    assert not res.rejected, res.rejected[:3]
    checksum = sum(float(m.values.sum()) for m in res.metrics.values())
    out: dict[str, float] = {"samples": n, "mb": len(data) / 1e6, "labels": len(res.labels)}

    out["ours_s"] = median_s(lambda: parse(data), repeats)
    out["ours_str_s"] = median_s(lambda: parse(text), repeats)
    out["ours_map_s"] = median_s(lambda: mapper.map([("site", parse(data))]), repeats)
    out["per_host_s"] = median_s(lambda: [parse(h) for h in hosts], max(1, repeats // 2))
    mapped = mapper.map([("site", res)])
    assert mapped.n_mapped == n and mapped.reported.all()

    if baseline:
        from prometheus_client.parser import text_string_to_metric_families

        t0 = time.perf_counter()
        count = 0
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                count += 1
                total += float(s.value)
        out["baseline_s"] = time.perf_counter() - t0
        assert count == n, (count, n)
        assert math.isclose(total, checksum, rel_tol=1e-12), (total, checksum)
    return out


def record(r: dict[str, float]) -> Path:
    """Add a dated row under HEADING in BENCHMARKS.md (creating the section or file if needed)."""
    path = HERE / "BENCHMARKS.md"
    base = r.get("baseline_s")
    ours = r["ours_s"]
    base_s = f"{base:.2f}" if base else "-"
    speed = f"{base / ours:.0f}x" if base else "-"
    row = (
        f"| {time.strftime('%Y-%m-%d')} | {machine()} | {int(r['samples']):,} | {r['mb']:.1f} | {base_s} | "
        f"{ours:.3f} | {r['samples'] / ours / 1e6:.2f} M | {speed} | {r['ours_str_s']:.3f} | "
        f"{r['ours_map_s']:.3f} | {r['per_host_s']:.3f} |"
    )
    note = (
        "Full-site dcgm-exporter scrape (`texas`, 10,240 GPUs x 20 metrics) parsed by "
        "`powerplane.sources.prom_text.parse` and by prometheus_client's `text_string_to_metric_families` "
        "in the same run; `python benchmarks/bench_dcgm_parse.py --record`. Seconds are medians of repeats "
        "(prometheus_client: one run)."
    )
    return add_table_row(path, HEADING, note, TABLE_HEADER, row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="runs of each of our cases (median reported)")
    ap.add_argument("--skip-baseline", action="store_true", help="do not run prometheus_client (~10-15 s)")
    ap.add_argument("--record", action="store_true", help="append a row to benchmarks/BENCHMARKS.md")
    args = ap.parse_args()
    r = run(args.repeats, not args.skip_baseline)
    n, mb = r["samples"], r["mb"]
    base = r.get("baseline_s")
    print(f"text: {int(n):,} samples, {mb:.1f} MB, {int(r['labels']):,} distinct label sets; {machine()}")
    print(f"{'case':<28} {'seconds':>9} {'samples/s':>12} {'speed-up':>9}")
    cases = [
        ("prometheus_client", base),
        ("ours (bytes)", r["ours_s"]),
        ("ours (str)", r["ours_str_s"]),
        ("ours + map to GPUs", r["ours_map_s"]),
        ("ours per host (1,280 texts)", r["per_host_s"]),
    ]
    for name, sec in cases:
        if sec is None:
            continue
        speed = f"{base / sec:.0f}x" if base else "-"
        print(f"{name:<28} {sec:>9.3f} {n / sec:>12,.0f} {speed:>9}")
    if args.record:
        print(f"recorded in {record(r)}")


if __name__ == "__main__":
    main()
