"""Cockpit benchmarks on the texas site (10,240 GPUs), against a real runtime and server, in Debian's chromium.

- First render per page: navigation start -> live data painted (the page's ``pp-painted-<page>`` mark), and
  -> its first chart painted (``pp-chart-painted-<id>``), in a fresh browser context each time (nothing cached),
  for each chart library side by side (uPlot, the bundle; plotly.js's basic bundle; the full plotly.min.js, the
  fallback), with where the time goes from the page's Performance timeline. Target <= 1 s.
- Floor update: browser scripting time of one full floor update (decode 10,240 bytes + paint every cell), from
  ``performance.now()`` around the update in the page. Target <= 50 ms.
- Update size: one stream message (overview + floor) in bytes. Target <= 100 KB.
- 50 concurrent WebSocket clients (in a separate process) each subscribed to the floor, against the runtime
  cycling at ``--speed``: the cycle's lag behind schedule and its duration, side by side with the baseline of
  no clients in the same run. Target: the cycle does not fall behind.

Usage: python benchmarks/bench_cockpit.py [--clients 50] [--seconds 30] [--speed 60] [--charts uplot,plotly]
       [--record]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import add_table_row, machine
from powerplane.api.auth import TokenStore
from powerplane.api.browser import CHROMIUM, launch_chromium
from powerplane.api.server import BackgroundServer
from powerplane.runtime.live import LiveOptions, LiveRuntime
from powerplane.runtime.live_state import LiveState

BENCH = Path(__file__).resolve().parent / "BENCHMARKS.md"
ROOT = Path(__file__).resolve().parents[1]
PAGES = {  # page -> id of its first chart (None: a page without charts)
    "overview": "ov-power",
    "floor": None,
    "energy": "en-plan",
    "jobs": None,
    "alerts": None,
    "audit": None,
}
PAGE_API = {"overview": "/api/overview", "floor": "/api/floor", "energy": "/api/energy", "jobs": "/api/jobs",
            "alerts": "/api/alerts", "audit": "/api/audit"}  # fmt: skip
# plotly.js's basic bundle, the chart library before uPlot, for the side-by-side (npm, fetched here if missing)
PLOTLY_BASIC_NPM = "plotly.js-basic-dist-min@4.1.1"
PLOTLY_BASIC = ROOT / "build" / "npm" / "node_modules" / "plotly.js-basic-dist-min" / "plotly-basic.min.js"

# Where the cold first render goes, from the page's Performance timeline (ms from navigation start).
TIMELINE = """([page, chart, api]) => {
  const res = performance.getEntriesByType('resource'), at = (f) => res.find(f);
  const end = (e) => (e ? e.responseEnd : null);
  const mark = (n) => { const m = performance.getEntriesByName(n)[0]; return m ? m.startTime : null; };
  const lib = at((e) => e.name.includes('/vendor/charts.js'));
  const call = chart ? performance.getEntriesByName('pp-chart-call-' + chart)[0] : null;
  const nav = performance.getEntriesByType('navigation')[0];
  return {
    html: nav.responseEnd, dom: nav.domContentLoadedEventEnd,
    lib_start: lib ? lib.startTime : null, lib_fetched: end(lib), lib_kb: lib ? lib.encodedBodySize / 1024 : null,
    lib_ready: mark('pp-charts-loaded'),
    whoami: end(at((e) => e.name.includes('/api/whoami'))), topology: end(at((e) => e.name.includes('/api/topology'))),
    data: end(at((e) => e.name.includes(api))), painted: mark('pp-painted-' + page),
    chart_call: call ? call.duration : null, chart: chart ? mark('pp-chart-painted-' + chart) : null,
  };
}"""
STAGES = ("html", "dom", "lib_fetched", "lib_ready", "whoami", "topology", "data", "painted", "chart_call", "chart")


def chart_libs(want: list[str]) -> dict[str, Path]:
    """The chart libraries to compare, the project's default first (uPlot when `make web-vendor` bundled it)."""
    from powerplane.api.app import chart_libraries

    libs = chart_libraries()
    if "plotly-basic" in want and not PLOTLY_BASIC.is_file():
        subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(ROOT / "build" / "npm"),
             PLOTLY_BASIC_NPM],
            check=True,
        )  # fmt: skip
    if PLOTLY_BASIC.is_file():
        libs["plotly-basic"] = PLOTLY_BASIC
    return {k: v for k, v in libs.items() if k in want}


CLIENTS = r"""
import asyncio, json, sys, time
import websockets
url, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
async def one(stats):
    async with websockets.connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps({"floor": "power_w"}))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=max(0.1, end - time.monotonic()))
            except asyncio.TimeoutError:
                break
            stats["msgs"] += 1
            stats["bytes_max"] = max(stats["bytes_max"], len(msg))
async def main():
    stats = [{"msgs": 0, "bytes_max": 0} for _ in range(n)]
    await asyncio.gather(*(one(s) for s in stats))
    print(json.dumps({"msgs": [s["msgs"] for s in stats], "bytes_max": max(s["bytes_max"] for s in stats)}))
asyncio.run(main())
"""


class CycleProbe:
    """Records each cycle's lag behind schedule and its duration (from the published state)."""

    def __init__(self) -> None:
        self.on = False
        self.lag_s: list[float] = []
        self.cycle_ms: list[float] = []

    def __call__(self, s: LiveState) -> None:
        if self.on:
            self.lag_s.append(s.cycle.lag_s)
            self.cycle_ms.append(s.cycle.cycle_ms)

    def window(self, seconds: float) -> tuple[list[float], list[float]]:
        self.lag_s, self.cycle_ms, self.on = [], [], True
        time.sleep(seconds)
        self.on = False
        return self.lag_s, self.cycle_ms


def first_renders(browser: Any, url: str, token: str, lib: str, repeats: int) -> dict[str, dict[str, Any]]:
    """Per page, with chart library ``lib``: in a fresh context (cold cache) the page's Performance timeline
    (library fetched and executed, data fetched, data painted, first chart call and paint), then the same page
    reloaded (warm HTTP and V8 code cache, as for an operator who has opened the cockpit before); medians of
    ``repeats``. Each navigation's main-thread script time comes from CDP (Performance.getMetrics)."""
    out: dict[str, dict[str, Any]] = {}
    for page_name, chart in PAGES.items():
        cold: list[dict[str, Any]] = []
        warm: list[dict[str, Any]] = []
        for _ in range(repeats):
            ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
            ctx.add_init_script(f"sessionStorage.setItem('pp_token', {json.dumps(token)})")
            page = ctx.new_page()
            cdp = ctx.new_cdp_session(page)
            cdp.send("Performance.enable")
            for rows, go in ((cold, True), (warm, False)):
                before = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                if go:
                    page.goto(f"{url}/?charts={lib}#{page_name}")
                else:
                    page.reload()
                page.wait_for_selector(f"body[data-painted-{page_name}]", timeout=30_000)
                if chart:
                    page.wait_for_function(
                        f"performance.getEntriesByName('pp-chart-painted-{chart}').length", timeout=30_000
                    )
                t = page.evaluate(TIMELINE, [page_name, chart, PAGE_API[page_name]])
                after = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                t["script_ms"] = 1000.0 * (after["ScriptDuration"] - before.get("ScriptDuration", 0.0))
                rows.append(t)
            ctx.close()
        out[page_name] = {"cold": _median(cold), "warm": _median(warm)}
    return out


def _median(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in rows[0]:
        v = [r[k] for r in rows if r[k] is not None]
        out[k] = float(np.median(v)) if v else None
    return out


def floor_updates(browser: Any, url: str, token: str, n: int) -> list[float]:
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
    ctx.add_init_script(f"sessionStorage.setItem('pp_token', {json.dumps(token)})")
    page = ctx.new_page()
    page.goto(f"{url}/#floor")
    page.wait_for_selector("body[data-painted-floor]", timeout=30_000)
    page.wait_for_function(f"(window.ppFloorMs || []).length > {n}", timeout=120_000)
    ms = page.evaluate("window.ppFloorMs")
    ctx.close()
    return [float(x) for x in ms[1:]]  # the first draw includes building the layout's lookup tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each stream window (baseline, clients)")
    ap.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second")
    ap.add_argument("--repeats", type=int, default=3, help="first renders per page (median)")
    ap.add_argument("--updates", type=int, default=20, help="floor updates to time")
    ap.add_argument(
        "--charts",
        default="uplot,plotly-basic,plotly",
        help="chart libraries to compare, comma-separated: uplot (the bundle), plotly-basic (npm), plotly (fallback)",
    )
    ap.add_argument("--chromium", default=CHROMIUM)
    ap.add_argument("--note", default="shared machine, other jobs running")
    ap.add_argument("--record", action="store_true", help="append the results to benchmarks/BENCHMARKS.md")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    libs = chart_libs(args.charts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        rt = LiveRuntime(LiveOptions(scenario="texas", speed=args.speed, period_s=1.0, state_dir=Path(tmp)))
        probe = CycleProbe()
        rt.subscribe(probe)
        store = TokenStore(Path(tmp) / "tokens.json")
        token = store.create("bench", "viewer")
        with BackgroundServer(rt, store, chart_libs=libs) as url, sync_playwright() as p:
            browser = launch_chromium(p, args.chromium)
            time.sleep(3.0)  # let the planner solve and the stream warm up
            first_renders(browser, url, token, next(iter(libs)), 1)  # warm-up: the server's first requests
            renders = {lib: first_renders(browser, url, token, lib, args.repeats) for lib in libs}
            floor_ms = floor_updates(browser, url, token, args.updates)
            browser.close()
            base_lag, base_ms = probe.window(args.seconds)
            ws_url = url.replace("http", "ws") + f"/api/stream?token={token}"
            proc = subprocess.Popen(
                [sys.executable, "-c", CLIENTS, ws_url, str(args.clients), str(args.seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            load_lag, load_ms = probe.window(args.seconds)
            out, _ = proc.communicate(timeout=args.seconds + 60)
            clients = json.loads(out)
    msg_bytes = int(clients["bytes_max"])  # the largest stream message (overview + floor) any client received

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f}"

    def kb(lib: str) -> str:
        return f"{libs[lib].stat().st_size / 1024:,.0f} KB"

    print(f"{'charts':<22} {'page':<10} {'cold: data':>11} {'cold: chart':>12} {'warm: data':>11} {'warm: chart':>12}")
    for lib, pages in renders.items():
        for name, r in pages.items():
            c, w = r["cold"], r["warm"]
            print(
                f"{lib + ' (' + kb(lib) + ')':<22} {name:<10} {ms(c['painted']):>11} {ms(c['chart']):>12} "
                f"{ms(w['painted']):>11} {ms(w['chart']):>12}   ms (target 1000)"
            )
    print("\ncold first render, Performance timeline, ms from navigation start (medians):")
    print(f"{'charts':<13} {'page':<9} " + " ".join(f"{k:>11}" for k in (*STAGES, "script_ms")))
    for lib, pages in renders.items():
        for name, r in pages.items():
            c = r["cold"]
            print(f"{lib:<13} {name:<9} " + " ".join(f"{ms(c[k]):>11}" for k in (*STAGES, "script_ms")))
    fm = np.array(floor_ms)
    print(
        f"floor update (10,240 cells): median {np.median(fm):.2f} ms, max {fm.max():.2f} ms over {fm.size} (target 50)"
    )
    print(f"largest update message (overview + floor): {msg_bytes:,} bytes (target 100,000)")

    def stats(lag: list[float], ms: list[float]) -> tuple[float, float, float, int]:
        a, b = np.array(lag or [np.nan]), np.array(ms or [np.nan])
        return float(np.percentile(a, 95)), float(a.max()), float(np.percentile(b, 95)), len(lag)

    b = stats(base_lag, base_ms)
    c = stats(load_lag, load_ms)
    msgs = clients["msgs"]
    print(f"{'case':<18} {'cycles':>6} {'lag p95 s':>10} {'lag max s':>10} {'cycle p95 ms':>13} {'msgs/client':>12}")
    print(f"{'0 clients (base)':<18} {b[3]:>6} {b[0]:>10.3f} {b[1]:>10.3f} {b[2]:>13.1f} {'-':>12}")
    per = f"{min(msgs)}-{max(msgs)}"
    print(f"{f'{args.clients} clients':<18} {c[3]:>6} {c[0]:>10.3f} {c[1]:>10.3f} {c[2]:>13.1f} {per:>12}")
    if not args.record:
        return
    date = time.strftime("%Y-%m-%d")
    m = machine()
    for lib, pages in renders.items():
        for name, r in pages.items():
            co, w = r["cold"], r["warm"]
            add_table_row(
                BENCH,
                "### Cockpit: first render per page and chart library (texas, 10,240 GPUs)",
                "`python benchmarks/bench_cockpit.py --record`: navigation start -> live data painted, and -> the "
                "page's first chart painted (the frame after its first draw), in Debian's chromium 1600x1000; cold: a "
                "fresh context (nothing cached), warm: the same page reloaded (HTTP and V8 code cache warm); medians "
                "of 3. The chart libraries are compared in the same run (?charts=NAME): uplot is the project's "
                "(npm, bundled by make), plotly the fallback without npm (the plotly package's plotly.min.js), "
                "plotly-basic the npm bundle used before.",
                [
                    "| date | machine | charts | page | cold: data painted ms | cold: first chart ms | "
                    "warm: data painted ms | warm: first chart ms | target ms | note |",
                    "|---|---|---|---|---|---|---|---|---|---|",
                ],
                f"| {date} | {m} | {lib} ({kb(lib)}) | {name} | {ms(co['painted'])} | {ms(co['chart'])} | "
                f"{ms(w['painted'])} | {ms(w['chart'])} | 1000 | {args.note} |",
            )
    for lib, pages in renders.items():
        for name, r in pages.items():
            if PAGES[name] is None:
                continue
            co = r["cold"]
            add_table_row(
                BENCH,
                "### Cockpit: where the cold first chart goes (texas, Performance timeline)",
                "`python benchmarks/bench_cockpit.py --record`: a fresh browser context per page, ms from navigation "
                "start (medians of 3) read from the page's Performance timeline: the HTML, DOMContentLoaded (the "
                "app's scripts ran), the chart library fetched (resource timing) and executed (its onload), the "
                "token check and topology fetched, the page's data fetched, the data painted, the first chart's "
                "library call (ms it took) and the frame that painted it; main-thread script ms from CDP "
                "Performance.getMetrics (ScriptDuration) over the whole load.",
                [
                    "| date | machine | charts | page | html | scripts ran | library fetched | library executed | "
                    "whoami | topology | page data | data painted | chart call ms | chart painted | "
                    "main-thread script ms | note |",
                    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
                ],
                f"| {date} | {m} | {lib} ({kb(lib)}) | {name} | "
                + " | ".join(ms(co[k]) for k in (*STAGES, "script_ms"))
                + f" | {args.note} |",
            )
    add_table_row(
        BENCH,
        "### Cockpit: floor update, update size, concurrent stream clients (texas, 10,240 GPUs)",
        "`python benchmarks/bench_cockpit.py --record`: floor update = browser scripting time of decoding and painting "
        "all 10,240 cells (performance.now around the update); update = one stream message (overview + floor); the "
        "cycle's lag behind schedule with no client (baseline) and with N clients in another process, each "
        f"subscribed to the floor, runtime at {args.speed:g}x with 1 s cycles, {args.seconds:g} s windows.",
        [
            "| date | machine | floor update ms median / max (target 50) | update bytes (target 100 KB) | clients | "
            "lag p95 / max s: 0 clients | lag p95 / max s: N clients | cycle p95 ms: 0 / N | msgs per client | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ],
        f"| {date} | {m} | {np.median(fm):.2f} / {fm.max():.2f} | {msg_bytes:,} | {args.clients} | "
        f"{b[0]:.3f} / {b[1]:.3f} | {c[0]:.3f} / {c[1]:.3f} | {b[2]:.0f} / {c[2]:.0f} | {min(msgs)}-{max(msgs)} | "
        f"{args.note} |",
    )
    print(f"recorded in {BENCH}")


if __name__ == "__main__":
    main()
