"""The cockpit in a real browser: Debian's chromium driven by Playwright against a real server and runtime.

Screenshots of every page are saved under ``test-artifacts/`` (kept by CI). A missing chromium FAILS the tests
(the Makefile's ``test`` target installs it): browser downloads are not available on these machines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from powerplane.api import views
from powerplane.api.auth import TokenStore
from powerplane.api.browser import CHROMIUM, launch_chromium
from powerplane.api.server import BackgroundServer
from powerplane.runtime.live import LiveOptions, LiveRuntime
from powerplane.twin.jobs import State

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PAGES = ("overview", "floor", "energy", "jobs", "alerts", "audit")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; `make test` does it "
            "when run as root) or point POWERPLANE_CHROMIUM at a chromium binary"
        )
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def serve(tmp: Path, scenario: str) -> tuple[BackgroundServer, dict[str, str], LiveRuntime]:
    # No self-healing here: the pages are checked against alerts that stay up long enough to be acknowledged
    # (healing in the live runtime is tested in tests/runtime/test_live_ops.py).
    opts = LiveOptions(scenario=scenario, speed=60, period_s=0.5, state_dir=tmp, history=False, heal=False)
    rt = LiveRuntime(opts)
    rt.step()
    store = TokenStore(tmp / "tokens.json")
    toks = {r: store.create(f"{r}-ui", r) for r in ("viewer", "operator", "admin")}
    return BackgroundServer(rt, store), toks, rt


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], LiveRuntime]]:
    srv, toks, rt = serve(tmp_path_factory.mktemp("ui-small"), "small")
    # A real fault before the cycle thread starts, so the Alerts page has something live to show.
    j = rt.state.jobs
    job = int(j["job"][np.flatnonzero(j["state"] == State.RUNNING)[0]])
    rt.twin.workload.inject_fault(job, rt.twin.now_s, 79, int(rt.twin.workload.jobs.gpus[job][0]))
    with srv as url:
        yield url, toks, rt


def login(browser: Any, url: str, token: str, page_name: str = "overview") -> Any:
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/#{page_name}")
    page.wait_for_selector("#login-token", state="visible")
    page.fill("#login-token", token)
    page.click("#login-form button")
    page.wait_for_selector(f"body[data-painted-{page_name}]", timeout=20_000)
    page.errors = errors
    return page


# What a drawn chart holds: its library, series, non-empty points and, for uPlot's canvas, the pixels painted.
CHART = """(id) => {
  const el = document.getElementById(id);
  if (!el || !el.dataset.drawn) return null;
  if (el.dataset.drawn === 'uplot') {
    const u = PP._charts[id].u, px = u.ctx.getImageData(0, 0, u.ctx.canvas.width, u.ctx.canvas.height).data;
    let painted = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted++;
    return {lib: 'uplot', series: u.series.length - 1, painted,
            points: u.data.slice(1).reduce((n, col) => n + col.filter((v) => v != null).length, 0)};
  }
  return {lib: 'plotly', series: el.data.length, painted: el.querySelectorAll('.main-svg path.js-line').length,
          points: el.data.reduce((n, t) => n + t.y.filter((v) => v != null).length, 0)};
}"""


def bundled_lib() -> str:
    from powerplane.api import app as app_mod

    return "uplot" if app_mod.UPLOT_JS.is_file() else "plotly"


def chart_drawn(page: Any, chart_id: str, lib: str, min_series: int = 1) -> dict[str, Any]:
    """Waits for chart ``chart_id`` and checks that ``lib`` drew every series with data, on screen."""
    page.wait_for_selector(f"#{chart_id}[data-drawn]", timeout=20_000)
    c = page.evaluate(CHART, chart_id)
    assert c["lib"] == lib, c
    assert c["series"] >= min_series and c["points"] > 0 and c["painted"] > 0, c
    return c


def goto(page: Any, name: str) -> None:
    page.evaluate(f"location.hash = '#{name}'")
    page.wait_for_selector(f"body[data-painted-{name}]", timeout=20_000)


def test_every_page_loads_with_live_data(browser: Any, small: tuple[str, dict[str, str], LiveRuntime]) -> None:
    url, toks, rt = small
    page = login(browser, url, toks["viewer"])
    page.wait_for_function("PP.chartsLoaded()", timeout=20_000)
    lib = bundled_lib()
    # Overview: live numbers with units, the flow, the charts (uPlot, or plotly without the bundle: from the app).
    tiles = page.inner_text("#ov-tiles")
    assert re.search(r"GRID IMPORT\s+[0-9.]+\s*MW", tiles, re.I), tiles
    assert "PUE" in tiles and "SAVED TODAY" in tiles.upper()
    chart_drawn(page, "ov-power", lib, min_series=8)  # grid, facility, IT, demand, contract, plan, forecast band
    chart_drawn(page, "ov-price", lib)
    assert "MW" in page.text_content("#ov-flow")
    v0 = page.evaluate("PP.ov.version")
    page.wait_for_function(f"PP.ov.version > {v0}", timeout=10_000)  # the stream keeps it live
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
    goto(page, "energy")
    assert page.locator("#en-bess tr").count() == len(rt.site.bess)
    chart_drawn(page, "en-plan", lib, min_series=6)  # actual and plan: grid, batteries, mean SOC
    if lib == "uplot":  # a refresh moves the chart's time window with the site's clock
        x_max = page.evaluate("PP._charts['en-plan'].u.scales.x.max")
        page.wait_for_function("PP.ov.t_s > PP.pages.energy.doc.t_s + 60", timeout=15_000)
        page.evaluate("PP.pages.energy.refresh()")
        page.wait_for_function(f"PP._charts['en-plan'].u.scales.x.max > {x_max}", timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "energy.png"), full_page=True)
    goto(page, "jobs")
    assert page.locator("#jobs-body tr").count() > 0
    assert re.search(r"\d+ jobs", page.inner_text("#jobs-info"))
    page.screenshot(path=str(ARTIFACTS / "jobs.png"), full_page=True)
    goto(page, "alerts")
    page.wait_for_function("document.querySelectorAll('#alerts-body tr[data-id]').length > 0", timeout=20_000)
    assert page.locator("#alerts-body .sev").count() > 0
    page.screenshot(path=str(ARTIFACTS / "alerts.png"), full_page=True)
    goto(page, "audit")
    assert page.locator("#audit-body tr").count() > 0
    page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)
    # Viewer: every command control is disabled and the API refuses a command sent anyway.
    assert page.locator("button.op:not([disabled])").count() == 0
    status = page.evaluate(
        """async () => (await fetch('/api/commands', {method: 'POST', headers: {Authorization: 'Bearer ' + PP.token,
           'Content-Type': 'application/json'}, body: JSON.stringify({command: {kind: 'dr_end'}})})).status"""
    )
    assert status == 403
    assert not page.errors, page.errors
    page.context.close()


def test_operator_commands_round_trip_into_the_audit_log(
    browser: Any, small: tuple[str, dict[str, str], LiveRuntime]
) -> None:
    url, toks, rt = small
    page = login(browser, url, toks["operator"], "jobs")
    row = page.locator("#jobs-body tr", has=page.locator("button.cap")).first
    job = int(row.get_attribute("data-job"))
    row.locator("input.capw").fill("320")
    row.locator("button.cap").click()
    page.wait_for_function("document.getElementById('toast').textContent.includes('applied')", timeout=15_000)
    gpus = rt.twin.workload.jobs.gpus[job]
    assert np.all(rt.twin.fleet.cap_w[gpus] <= 320.0)
    # Demand response from the Energy page: start an event, see it active, end it.
    goto(page, "energy")
    page.fill("#dr-red", "20")
    page.fill("#dr-min", "30")
    page.click("#dr-start")
    page.wait_for_function("document.getElementById('en-dr').innerText.includes('Event active')", timeout=15_000)
    assert rt.state.dr["active"] and abs(rt.state.dr["reduction"] - 0.2) < 1e-9
    page.click("#dr-end")
    page.wait_for_function("document.getElementById('en-dr').innerText.includes('No demand-response')", timeout=15_000)
    # Acknowledge the live alert.
    goto(page, "alerts")
    page.wait_for_selector("#alerts-body button.ack:not([disabled])", timeout=20_000)
    page.locator("#alerts-body button.ack:not([disabled])").first.click()
    page.wait_for_function("document.getElementById('alerts-body').innerText.includes('operator-ui')", timeout=15_000)
    goto(page, "audit")
    page.select_option("#audit-actor", "operator")
    page.wait_for_function(
        "(() => { const rows = [...document.querySelectorAll('#audit-body tr')];"
        " return rows.length >= 2 && rows.every(r => r.cells[1].textContent.startsWith('operator:'))"
        " && rows.some(r => r.textContent.includes('cap_job'))"
        " && rows.some(r => r.textContent.includes('ack_alert'))"
        " && rows.some(r => r.textContent.includes('dr_start')); })()",
        timeout=15_000,
    )
    text = page.inner_text("#audit-body")
    assert "operator:operator-ui" in text and "applied" in text
    page.screenshot(path=str(ARTIFACTS / "audit-operator.png"), full_page=True)
    assert not page.errors, page.errors
    page.context.close()


def test_charts_draw_with_the_plotly_fallback(browser: Any, small: tuple[str, dict[str, str], LiveRuntime]) -> None:
    """Where the install had no npm there is no uPlot bundle: the same charts are drawn by the plotly package's
    plotly.min.js (?charts=plotly asks for it explicitly, as /vendor/charts.js serves it by default there)."""
    url, toks, _ = small
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
    ctx.add_init_script(f"sessionStorage.setItem('pp_token', {toks['viewer']!r})")
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/?charts=plotly#overview")
    page.wait_for_function("PP.chartLib() === 'plotly'", timeout=30_000)
    chart_drawn(page, "ov-power", "plotly", min_series=8)
    chart_drawn(page, "ov-price", "plotly")
    page.evaluate("location.hash = '#energy'")
    chart_drawn(page, "en-plan", "plotly", min_series=6)
    page.screenshot(path=str(ARTIFACTS / "energy-plotly.png"), full_page=True)
    assert not errors, errors
    ctx.close()


def test_silence_is_listed_and_lifted_with_its_audit(
    browser: Any, small: tuple[str, dict[str, str], LiveRuntime]
) -> None:
    url, toks, rt = small
    page = login(browser, url, toks["operator"], "alerts")
    page.wait_for_selector("#alerts-body button.sil:not([disabled])", timeout=20_000)
    before = {s["id"] for s in views.silences(rt)}
    row = page.locator("#alerts-body tr[data-id]").first
    rule = row.get_attribute("data-rule")
    row.locator("button.sil").click()
    page.wait_for_function("document.getElementById('toast').textContent.includes('silence: applied')", timeout=15_000)
    # Listed: matchers, who, until, comment, with the unsilence action.
    page.wait_for_selector(f"#silences-body tr[data-silence]:has-text('alertname={rule}')", timeout=15_000)
    new = [s for s in views.silences(rt) if s["id"] not in before]
    assert len(new) == 1 and new[0]["matchers"]["alertname"] == rule
    sid = new[0]["id"]
    srow = page.locator(f"#silences-body tr[data-silence='{sid}']")
    text = srow.inner_text()
    assert "operator-ui" in text and "from the cockpit" in text, text
    # The alert itself shows as silenced from the next published cycle on.
    page.wait_for_function(
        f"[...document.querySelectorAll(\"#alerts-body tr[data-rule='{rule}']\")]"
        ".some(r => r.textContent.includes('(silenced)'))",
        timeout=15_000,
    )
    # Live: a silence set elsewhere (here straight into the runtime's queue) shows up without a reload.
    rt.submit("silence", {"matchers": {"alertname": "RackInletHot"}, "duration_s": 900, "comment": "hvac work"}, "ci")
    page.wait_for_selector("#silences-body tr[data-silence]:has-text('hvac work')", timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "alerts-silenced.png"), full_page=True)
    srow.locator("button.unsil").click()
    page.wait_for_function(f"!document.querySelector(\"#silences-body tr[data-silence='{sid}']\")", timeout=15_000)
    assert all(s["id"] != sid for s in views.silences(rt))
    goto(page, "audit")
    page.select_option("#audit-actor", "operator")
    page.wait_for_function(
        "[...document.querySelectorAll('#audit-body tr')].some(r => r.textContent.includes('unsilence')"
        f" && r.textContent.includes('{sid}') && r.textContent.includes('applied'))",
        timeout=15_000,
    )
    assert not page.errors, page.errors
    page.context.close()


def test_one_click_link_signs_in_and_leaves_the_address_bar(
    browser: Any, small: tuple[str, dict[str, str], LiveRuntime]
) -> None:
    url, toks, _ = small
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(f"{url}/#token={toks['viewer']}")
    page.wait_for_selector("body[data-painted-overview]", timeout=20_000)
    assert "token" not in page.url and page.is_hidden("#login")
    ctx.close()


def test_bad_token_is_refused_with_a_message(browser: Any, small: tuple[str, dict[str, str], LiveRuntime]) -> None:
    url, _, _ = small
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(url)
    page.fill("#login-token", "pp_not-a-token")
    page.click("#login-form button")
    page.wait_for_function("document.getElementById('login-err').textContent.includes('invalid token')")
    ctx.close()


def test_floor_shows_10240_cells_and_drills_down(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    srv, toks, rt = serve(tmp_path_factory.mktemp("ui-texas"), "texas")
    assert rt.topology.n_gpus == 10_240
    with srv as url:
        page = login(browser, url, toks["viewer"], "floor")
        assert page.get_attribute("#floor-cells", "data-cells") == "10240"
        # Every GPU has its own cell in the pick map, and the painted pixels carry the palette.
        n_cells = page.evaluate("new Set(Array.from(ppFloor.layout.pick).filter(g => g >= 0)).size")
        assert n_cells == 10_240
        # A stream update repaints the floor.
        k = page.evaluate("window.ppFloorMs.length")
        page.wait_for_function(f"window.ppFloorMs.length > {k}", timeout=15_000)
        # Drill down: click the cell of one GPU (rack > node > GPU, with its recent series).
        g = 5000
        x, y = page.evaluate(
            f"(() => {{ const L = ppFloor.layout, o = L.off[{g}]; return [o % L.W + 1, Math.floor(o / L.W) + 1]; }})()"
        )
        page.click("#floor-cells", position={"x": x, "y": y})
        page.wait_for_function(f"document.getElementById('drill').dataset.gpu === '{g}'", timeout=15_000)
        node = rt.topology.node_names[int(rt.topology.gpu_node[g])]
        assert node in page.inner_text("#drill-crumbs")
        assert page.locator("#drill-nodes tr").count() == int(
            np.count_nonzero(rt.topology.node_rack == rt.topology.node_rack[rt.topology.gpu_node[g]])
        )
        chart_drawn(page, "drill-chart", bundled_lib(), min_series=3)
        # ... and on to another GPU of the node from the table.
        other = page.locator("#drill-gpus tr:not(.sel)").first
        g2 = other.get_attribute("data-gpu")
        other.click()
        page.wait_for_function(f"document.getElementById('drill').dataset.gpu === '{g2}'", timeout=15_000)
        page.select_option("#floor-metric", "temp_c")
        page.wait_for_function("document.getElementById('legend-hi').textContent.includes('C')", timeout=15_000)
        time.sleep(0.3)
        page.screenshot(path=str(ARTIFACTS / "floor.png"), full_page=True)
        check_rack_forecast_view(page, rt, g)
        check_hall_forecast(page, rt)
        assert not page.errors, page.errors
        page.context.close()


# The colour of one GPU cell of each rack asked for, as its palette index (-1: not a palette colour, i.e. not
# drawn), with the forecast the floor drew (its time and horizon) and the API's rack forecast fetched right after.
FLOOR_RACKS = """async (racks) => {
  const cells = document.getElementById('floor-cells'), L = ppFloor.layout, ctx = cells.getContext('2d');
  const t = Number(cells.dataset.fcT), h = Number(cells.dataset.fcH);
  const idx = racks.map((k) => {
    const o = L.off[L.gpuRack.indexOf(k)], px = ctx.getImageData(o % L.W, Math.floor(o / L.W), 1, 1).data;
    return ppFloor.PALETTE.indexOf(((px[3] << 24) | (px[2] << 16) | (px[1] << 8) | px[0]) >>> 0);
  });
  const api = await (await fetch('/api/forecast/racks', {headers: {Authorization: 'Bearer ' + PP.token}})).json();
  return {t, h, idx, api};
}"""


def check_rack_forecast_view(page: Any, rt: LiveRuntime, gpu: int) -> None:
    """The floor's forecast view paints each rack's P50 at the chosen horizon: a few racks' cells decoded from the
    canvas match the API's numbers (to the palette's step), at two horizons; the band is in the tooltip."""
    n = rt.topology.n_racks
    page.select_option("#floor-metric", "forecast")
    page.wait_for_selector("#floor-cells[data-view=forecast]", timeout=20_000)
    for horizon in (2, 4):  # 15 min, 24 h
        page.select_option("#floor-horizon", str(horizon))
        page.wait_for_selector(f"#floor-cells[data-fc-h='{horizon}']", timeout=10_000)
        for _ in range(30):  # the forecast is remade once a simulated minute: compare the one the floor drew
            probe = page.evaluate(FLOOR_RACKS, list(range(0, n, max(n // 7, 1))))
            api = probe["api"]["forecast"]
            if api is not None and api["t_s"] == probe["t"]:
                break
            page.evaluate("ppFloor.refreshForecast()")
        else:
            raise AssertionError(f"the floor never drew the API's latest rack forecast: {probe['t']}")
        assert probe["h"] == horizon
        p50 = np.array(api["p50_w"], dtype=float)[:, horizon]
        assert p50.shape == (n,) and np.all(np.isfinite(p50))
        lo, hi = float(p50.min()), float(p50.max())
        step = max(hi - lo, 1.0) / 254
        racks = list(range(0, n, max(n // 7, 1)))
        idx = np.array(probe["idx"])
        assert np.all((idx >= 0) & (idx < 255)), idx  # every probed cell is painted with a value
        drawn = lo + idx * step
        assert np.allclose(drawn, p50[racks], atol=0.51 * step + 1e-6), (drawn, p50[racks])
        assert page.inner_text("#legend-hi") == f"{hi / 1e3:.1f} kW"
    # The band on hover, the five horizons in the drill-down, the racks moving most in the side table.
    x, y = page.evaluate(
        f"(() => {{ const L = ppFloor.layout, o = L.off[{gpu}]; return [o % L.W + 1, Math.floor(o / L.W) + 1]; }})()"
    )
    page.hover("#floor-cells", position={"x": x, "y": y})
    tip = page.inner_text("#tooltip")
    assert "P50" in tip and "P10-P90" in tip and "band" in tip and "24 h" in tip, tip
    page.click("#floor-cells", position={"x": x, "y": y})
    page.wait_for_function("document.getElementById('drill-rack-fc').textContent.includes('24 h')", timeout=15_000)
    assert page.inner_text("#drill-rack-fc").count("kW") == 5
    assert page.locator("#hot tr[data-rack]").count() > 0
    page.screenshot(path=str(ARTIFACTS / "floor-forecast.png"), full_page=True)


def check_hall_forecast(page: Any, rt: LiveRuntime) -> None:
    """The energy page shows every hall's P50 at the five horizons: the table against the API, and the chart."""
    goto(page, "energy")
    halls = rt.topology.hall_names
    for _ in range(30):
        page.wait_for_selector("#en-hallfc-body[data-fc-t]", timeout=20_000)
        t = float(page.get_attribute("#en-hallfc-body", "data-fc-t") or "nan")
        rows = page.evaluate(
            "[...document.querySelectorAll('#en-hallfc-body tr[data-hall]')]"
            ".map(r => [...r.cells].map(c => c.textContent))"
        )
        api = page.evaluate(
            "async () => (await (await fetch('/api/forecast/racks?racks=false', "
            "{headers: {Authorization: 'Bearer ' + PP.token}})).json()).forecast"
        )
        if api["t_s"] == t:
            break
        page.evaluate("PP.pages.energy.refresh()")
    else:
        raise AssertionError("the energy page never showed the API's latest hall forecast")
    assert [r[0] for r in rows] == halls
    want = [[f"{v / 1e6:.2f}" for v in row] for row in api["hall_p50_w"]]
    assert [r[1:] for r in rows] == want
    chart_drawn(page, "en-hallfc", bundled_lib(), min_series=len(halls))
    page.screenshot(path=str(ARTIFACTS / "energy-hall-forecast.png"), full_page=True)
