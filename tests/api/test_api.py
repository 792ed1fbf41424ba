"""The cockpit API over a real live runtime (small twin): auth, reads, commands through the queue, the stream."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from powerplane.api.app import create_app
from powerplane.api.auth import TokenStore
from powerplane.runtime.live import LiveOptions, LiveRuntime
from powerplane.twin.jobs import State


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    state_dir = tmp_path_factory.mktemp("cockpit")
    rt = LiveRuntime(LiveOptions(scenario="small", speed=60, state_dir=state_dir, history=True))
    rt.step()
    rt.step()
    tokens = TokenStore(state_dir / "tokens.json")
    toks = {role: tokens.create(f"{role}-1", role) for role in ("viewer", "operator", "admin")}
    with TestClient(create_app(rt, tokens)) as client:
        yield {"rt": rt, "client": client, "tokens": toks, "store": tokens, "dir": state_dir}
    rt.stop()


def hdr(env: dict[str, object], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['tokens'][role]}"}  # type: ignore[index]


def test_tokens_are_stored_hashed(env: dict[str, object]) -> None:
    text = (env["dir"] / "tokens.json").read_text()  # type: ignore[operator]
    for tok in env["tokens"].values():  # type: ignore[attr-defined]
        assert tok not in text
    assert json.loads(text)["tokens"][0]["sha256"]
    assert (env["dir"] / "tokens.json").stat().st_mode & 0o077 == 0  # type: ignore[operator]


def test_missing_bad_and_insufficient_tokens(env: dict[str, object]) -> None:
    c: TestClient = env["client"]  # type: ignore[assignment]
    r = c.get("/api/overview")
    assert r.status_code == 401 and "missing token" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = c.get("/api/overview", headers={"Authorization": "Bearer pp_nope"})
    assert r.status_code == 401 and "invalid token" in r.json()["detail"]
    r = c.get("/api/overview", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    body = {"command": {"kind": "dr_end"}}
    r = c.post("/api/commands", json=body, headers=hdr(env, "viewer"))
    assert r.status_code == 403 and "viewer" in r.json()["detail"] and "operator" in r.json()["detail"]
    r = c.post("/api/tokens", json={"name": "x", "role": "viewer"}, headers=hdr(env, "operator"))
    assert r.status_code == 403
    assert c.get("/api/health").status_code == 200  # liveness needs no token


def test_reads(env: dict[str, object]) -> None:
    c: TestClient = env["client"]  # type: ignore[assignment]
    rt: LiveRuntime = env["rt"]  # type: ignore[assignment]
    h = hdr(env, "viewer")
    assert c.get("/api/whoami", headers=h).json() == {"name": "viewer-1", "role": "viewer"}
    topo = c.get("/api/topology", headers=h).json()
    assert topo["counts"]["gpu"] == rt.topology.n_gpus == len(topo["gpu_node"])
    ov = c.get("/api/overview", headers=h).json()
    assert ov["site"]["facility_power_w"] > 0 and ov["money"]["currency"] == rt.site.tariff.currency
    assert len(ov["series"]["t_s"]) >= 2 and ov["plan"]["grid_w"]
    for level in ("site", "hall", "row", "rack", "node", "gpu", "bess"):
        doc = c.get(f"/api/snapshot?level={level}", headers=h).json()
        assert doc["rows"], level
    racks = c.get("/api/snapshot?level=rack", headers=h).json()["rows"]
    assert racks[0]["gpu_power_w_sum"] > 0
    assert c.get("/api/snapshot?level=planet", headers=h).status_code == 400
    fl = c.get("/api/floor?metric=temp_c", headers=h).json()
    q = np.frombuffer(base64.b64decode(fl["b64"]), dtype=np.uint8)
    assert q.size == rt.topology.n_gpus and fl["unit"] == "C"
    temp = rt.state.snapshot.levels["gpu"].values["temp_c"]
    expect = np.clip(np.rint((temp - 20.0) / 80.0 * 254), 0, 254)
    assert np.abs(q.astype(float) - expect).max() <= 1  # quantized within one step (0.3 C)
    assert c.get("/api/floor?metric=volts", headers=h).status_code == 400
    gpu = c.get("/api/entity/gpu/3", headers=h).json()
    assert gpu["gpu"]["gpu"] == 3 and gpu["path"]["node"] and len(gpu["series"]["t_s"]) >= 2
    assert len(gpu["gpus"]) == int(np.count_nonzero(rt.topology.gpu_node == rt.topology.gpu_node[3]))
    assert c.get("/api/entity/gpu/99999", headers=h).status_code == 404
    jobs = c.get("/api/jobs?status=running", headers=h).json()
    assert jobs["jobs"] and all(j["state"] != "queued" for j in jobs["jobs"])
    assert jobs["jobs"][0]["power_w"] >= jobs["jobs"][-1]["power_w"]
    en = c.get("/api/energy", headers=h).json()
    assert len(en["bess"]) == len(rt.site.bess) and en["plan"]["t_s"]
    assert c.get("/api/alerts", headers=h).json()["available"] is (rt.alerts is not None)
    ser = c.get("/api/series?entity=site&metric=facility_power_w&step_s=60", headers=h).json()
    assert ser["value"] and all(v > 0 for v in ser["value"])
    assert c.get("/api/series?entity=site&metric=nope", headers=h).status_code == 400
    spec = c.get("/api/openapi.json").json()
    assert "/api/commands" in spec["paths"] and "/api/floor" in spec["paths"]


def test_operator_command_round_trip_is_audited(env: dict[str, object]) -> None:
    c: TestClient = env["client"]  # type: ignore[assignment]
    rt: LiveRuntime = env["rt"]  # type: ignore[assignment]
    j = rt.state.jobs
    job = int(j["job"][np.flatnonzero(j["state"] == State.RUNNING)[0]])
    r = c.post(
        "/api/commands", json={"command": {"kind": "cap_job", "job": job, "cap_w": 350}}, headers=hdr(env, "operator")
    )
    assert r.status_code == 202 and r.json()["status"] == "queued"
    cid = r.json()["id"]
    rt.step()  # the web handler never applies it: the next cycle does
    res = c.get(f"/api/commands/{cid}", headers=hdr(env, "viewer")).json()
    assert res["status"] == "applied", res
    assert np.all(rt.twin.fleet.cap_w[rt.twin.workload.jobs.gpus[job]] <= 350.0)
    jobs = c.get("/api/jobs?limit=500", headers=hdr(env, "viewer")).json()["jobs"]
    assert next(x for x in jobs if x["job"] == job)["cap_w"] <= 350.0
    audit = c.get("/api/audit?actor=operator", headers=hdr(env, "viewer")).json()["records"]
    assert any(a["command_id"] == cid and a["actor"] == "operator:operator-1" for a in audit)
    # Validation happens at the door, with the field named.
    r = c.post("/api/commands", json={"command": {"kind": "dr_start", "reduction": 3}}, headers=hdr(env, "operator"))
    assert r.status_code == 422 and "reduction" in json.dumps(r.json())
    r = c.post("/api/commands", json={"command": {"kind": "launch"}}, headers=hdr(env, "operator"))
    assert r.status_code == 422


def test_wait_for_the_outcome(env: dict[str, object]) -> None:
    c: TestClient = env["client"]  # type: ignore[assignment]
    rt: LiveRuntime = env["rt"]  # type: ignore[assignment]
    stop = threading.Event()

    def cycle() -> None:
        while not stop.wait(0.05):
            rt.step()

    t = threading.Thread(target=cycle)
    t.start()
    try:
        r = c.post(
            "/api/commands?wait_s=10",
            json={"command": {"kind": "dr_start", "reduction": 0.1, "duration_s": 600}},
            headers=hdr(env, "operator"),
        )
        assert r.status_code == 200 and r.json()["status"] == "applied", r.json()
        r = c.post("/api/commands?wait_s=10", json={"command": {"kind": "dr_end"}}, headers=hdr(env, "operator"))
        assert r.json()["status"] == "applied"
    finally:
        stop.set()
        t.join()


def test_admin_manages_tokens(env: dict[str, object]) -> None:
    c: TestClient = env["client"]  # type: ignore[assignment]
    r = c.post("/api/tokens", json={"name": "grafana", "role": "viewer"}, headers=hdr(env, "admin"))
    assert r.status_code == 201
    tok = r.json()["token"]
    assert c.get("/api/whoami", headers={"Authorization": f"Bearer {tok}"}).json()["name"] == "grafana"
    names = [t["name"] for t in c.get("/api/tokens", headers=hdr(env, "admin")).json()["tokens"]]
    assert "grafana" in names
    assert c.delete("/api/tokens/grafana", headers=hdr(env, "admin")).status_code == 200
    assert c.get("/api/whoami", headers={"Authorization": f"Bearer {tok}"}).status_code == 401
    assert (
        c.post("/api/tokens", json={"name": "bad name!", "role": "viewer"}, headers=hdr(env, "admin")).status_code
        == 400
    )


def test_stream_sends_updates_with_the_floor(env: dict[str, object]) -> None:
    c: TestClient = env["client"]  # type: ignore[assignment]
    rt: LiveRuntime = env["rt"]  # type: ignore[assignment]
    tok = env["tokens"]["viewer"]  # type: ignore[index]
    with c.websocket_connect(f"/api/stream?token={tok}") as ws:
        first = json.loads(ws.receive_text())
        assert first["type"] == "update" and first["floor"] is None
        ws.send_text(json.dumps({"floor": "power_w"}))
        msg = json.loads(ws.receive_text())
        assert msg["floor"]["metric"] == "power_w" and msg["floor"]["n"] == rt.topology.n_gpus
        rt.step()
        nxt = json.loads(ws.receive_text())
        assert nxt["version"] == msg["version"] + 1
        assert nxt["overview"]["site"]["grid_power_w"] is not None
        ws.send_text("not json")
        assert json.loads(ws.receive_text())["type"] == "error"


def test_stream_refuses_a_bad_token(env: dict[str, object]) -> None:
    from starlette.websockets import WebSocketDisconnect

    c: TestClient = env["client"]  # type: ignore[assignment]
    with pytest.raises(WebSocketDisconnect) as exc, c.websocket_connect("/api/stream?token=pp_wrong") as ws:
        ws.receive_text()
    assert exc.value.code == 4401


def test_pages_and_charts_are_served_locally(env: dict[str, object]) -> None:
    from powerplane.api import app as app_mod

    c: TestClient = env["client"]  # type: ignore[assignment]
    page = c.get("/").text
    assert "/vendor/charts.css" in page and "http" not in page.split("<body>")[0].replace("http-equiv", "")
    assert "/vendor/charts.js" in c.get("/static/app.js").text
    bundled = app_mod.UPLOT_JS.is_file()  # `make` bundles uPlot from npm; without npm the plotly package's file
    js = c.get("/vendor/charts.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    if bundled:
        assert len(js.content) < 200_000 and b"uPlot" in js.content
        assert ".uplot" in c.get("/vendor/charts.css").text
    else:
        assert len(js.content) > 1_000_000 and b"plotly" in js.content
    full = c.get("/vendor/charts.js?lib=plotly")
    assert full.status_code == 200 and len(full.content) > 1_000_000
    missing = c.get("/vendor/charts.js?lib=highcharts")
    assert missing.status_code == 404 and "highcharts" in missing.json()["detail"]
    for asset in ("app.js", "charts.js", "pages.js", "floor.js", "style.css"):
        assert c.get(f"/static/{asset}").status_code == 200


def test_without_the_bundle_the_charts_fall_back_to_plotly(
    env: dict[str, object], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An install without npm has no vendor/uPlot file: /vendor/charts.js is then the plotly package's bundle."""
    from powerplane.api import app as app_mod

    monkeypatch.setattr(app_mod, "UPLOT_JS", tmp_path / "missing.js")
    libs = app_mod.chart_libraries()
    assert list(libs) == ["plotly"]
    with TestClient(create_app(env["rt"], env["store"])) as c:  # type: ignore[arg-type]
        js = c.get("/vendor/charts.js")
        assert js.status_code == 200 and len(js.content) > 1_000_000
        assert c.get("/vendor/charts.css").text == ""
    with pytest.raises(FileNotFoundError, match="basic"):
        app_mod.chart_libraries({"basic": tmp_path / "nope.js"})


def test_silences_are_listed_and_lifted(env: dict[str, object]) -> None:
    c: TestClient = env["client"]  # type: ignore[assignment]
    rt: LiveRuntime = env["rt"]  # type: ignore[assignment]
    if rt.alerts is None:
        pytest.fail(f"the runtime has no alert engine: {rt.alert_status}")
    matchers = {"alertname": "GpuXid", "node": "n-test"}
    r = c.post(
        "/api/commands",
        json={"command": {"kind": "silence", "matchers": matchers, "duration_s": 600, "comment": "maintenance"}},
        headers=hdr(env, "operator"),
    )
    cid = r.json()["id"]
    rt.step()
    res = c.get(f"/api/commands/{cid}", headers=hdr(env, "viewer")).json()
    assert res["status"] == "applied", res
    sid = res["silence_id"]
    listed = c.get("/api/silences", headers=hdr(env, "viewer")).json()
    mine = [s for s in listed["silences"] if s["id"] == sid]
    assert listed["available"] and len(mine) == 1
    assert mine[0]["matchers"] == matchers and mine[0]["by"] == "operator-1"
    assert mine[0]["comment"] == "maintenance" and mine[0]["ends_s"] - mine[0]["starts_s"] == pytest.approx(600)
    assert any(s["id"] == sid for s in c.get("/api/alerts", headers=hdr(env, "viewer")).json()["silences"])
    # A viewer cannot lift it; an operator can, and it is audited.
    body = {"command": {"kind": "unsilence", "silence_id": sid}}
    assert c.post("/api/commands", json=body, headers=hdr(env, "viewer")).status_code == 403
    cid = c.post("/api/commands", json=body, headers=hdr(env, "operator")).json()["id"]
    rt.step()
    assert c.get(f"/api/commands/{cid}", headers=hdr(env, "viewer")).json()["status"] == "applied"
    assert all(s["id"] != sid for s in c.get("/api/silences", headers=hdr(env, "viewer")).json()["silences"])
    audit = c.get("/api/audit?actor=operator", headers=hdr(env, "viewer")).json()["records"]
    assert any(a.get("command") == "unsilence" and a.get("status") == "applied" for a in audit), audit[:3]
    # Lifting it again is refused with the reason.
    cid = c.post("/api/commands", json=body, headers=hdr(env, "operator")).json()["id"]
    rt.step()
    again = c.get(f"/api/commands/{cid}", headers=hdr(env, "viewer")).json()
    assert again["status"] == "refused" and sid in again["detail"], again


def test_stream_closes_when_its_token_is_revoked(env: dict[str, object]) -> None:
    from starlette.websockets import WebSocketDisconnect

    c: TestClient = env["client"]  # type: ignore[assignment]
    rt: LiveRuntime = env["rt"]  # type: ignore[assignment]
    store: TokenStore = env["store"]  # type: ignore[assignment]
    tok = store.create("short-lived", "viewer")
    with c.websocket_connect(f"/api/stream?token={tok}") as ws:
        assert json.loads(ws.receive_text())["type"] == "update"
        store.revoke("short-lived")
        rt.step()
        with pytest.raises(WebSocketDisconnect) as exc:
            for _ in range(3):
                ws.receive_text()
        assert exc.value.code == 4401


def test_rack_forecasts_are_served_for_every_rack_and_horizon(tmp_path: Path) -> None:
    rt = LiveRuntime(LiveOptions(scenario="small", speed=600, state_dir=tmp_path, history=False, policy="none"))
    tokens = TokenStore(tmp_path / "tokens.json")
    h = {"Authorization": f"Bearer {tokens.create('viewer-r', 'viewer')}"}
    try:
        with TestClient(create_app(rt, tokens)) as c:
            assert c.get("/api/forecast/racks", headers=h).status_code == 503  # no cycle yet: said so
            rt.step()
            early = c.get("/api/forecast/racks", headers=h).json()
            assert early["forecast"] is not None or early["status"]  # a forecast, or why not: never zeros
            for _ in range(40):  # 40 cycles at 600x: enough closed minutes for the forecaster
                rt.step()
                if rt.state.forecast_racks is not None:
                    break
            doc = c.get("/api/forecast/racks", headers=h).json()
            halls = c.get("/api/forecast/racks?racks=false", headers=h).json()  # the energy page's (smaller) view
    finally:
        rt.stop()
    assert halls["racks"] is None and not {"p10_w", "p50_w", "p90_w"} & set(halls["forecast"])
    assert halls["forecast"]["hall_p50_w"] == doc["forecast"]["hall_p50_w"] and halls["halls"] == doc["halls"]
    fc = doc["forecast"]
    assert fc is not None, doc
    topo = rt.topology
    assert doc["racks"] == topo.rack_names and doc["halls"] == topo.hall_names
    assert fc["horizons_s"] == [10.0, 60.0, 900.0, 3600.0, 86400.0]
    p10, p50, p90 = (np.array(fc[k], dtype=float) for k in ("p10_w", "p50_w", "p90_w"))
    assert p50.shape == (topo.n_racks, 5) and np.array(fc["hall_p50_w"]).shape == (topo.n_halls, 5)
    assert np.all(np.isfinite(p50)) and np.all(p10 <= p50 + 1e-6) and np.all(p50 <= p90 + 1e-6)
    assert np.all(np.array(fc["site_p50_w"]) > 0)
