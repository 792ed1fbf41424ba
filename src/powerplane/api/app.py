"""The cockpit's FastAPI app: REST over the runtime's published state, operator commands into its queue, a
WebSocket stream of updates, token auth, and the static web pages (charts: uPlot bundled at install, or plotly).

Every ``/api`` route needs a token (``Authorization: Bearer <token>``; the WebSocket takes ``?token=``):
viewer reads, operator also sends commands, admin also manages tokens. A missing or unknown token gets 401, a
token whose role is too low 403, each with a message that says what is needed.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from powerplane.api import views
from powerplane.api.auth import ROLES, Principal, TokenStore
from powerplane.api.stream import Broadcaster
from powerplane.runtime.live_commands import CommandRefused
from powerplane.runtime.live_core import LiveCore
from powerplane.runtime.live_view import clean

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


# The cockpit's charts: uPlot (npm `uplot`, 50 KB, made for time series) that `make` bundles into the package at
# install (the Makefile's `web-vendor` target); without it (no npm at install) the full plotly.min.js that the
# `plotly` Python package ships, which web/charts.js draws the same charts with (4.8 MB: a slower first chart).
VENDOR_DIR = WEB_DIR / "vendor"
UPLOT_JS = VENDOR_DIR / "uPlot.iife.min.js"
UPLOT_CSS = VENDOR_DIR / "uPlot.min.css"


def plotly_js() -> Path:
    """The full plotly.min.js of the installed plotly Python package (the fallback chart library)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise FileNotFoundError(f"plotly.min.js not found in the installed plotly package ({path})")
    return path


def chart_libraries(extra: dict[str, Path] | None = None) -> dict[str, Path]:
    """The chart libraries this install can serve, the default first: ``uplot`` when bundled, then ``plotly``.
    ``extra`` adds others by name (the benchmark adds plotly.js's basic bundle to compare)."""
    libs: dict[str, Path] = {}
    if UPLOT_JS.is_file():
        libs["uplot"] = UPLOT_JS
    libs["plotly"] = plotly_js()
    for name, path in (extra or {}).items():
        if not path.is_file():
            raise FileNotFoundError(f"chart library {name!r}: {path} is not a file")
        libs[name] = path
    return libs


# ---------------------------------------------------------------------------------------------- commands


class DrStart(BaseModel):
    kind: Literal["dr_start"]
    reduction: float = Field(gt=0, le=0.5, description="share of the baseline to shed, e.g. 0.25")
    duration_s: float = Field(default=3600.0, ge=60, le=86400)


class DrEnd(BaseModel):
    kind: Literal["dr_end"]


class SetPolicy(BaseModel):
    kind: Literal["set_policy"]
    policy: Literal["none", "threshold", "mpc"]


class CapJob(BaseModel):
    kind: Literal["cap_job"]
    job: int = Field(ge=0)
    cap_w: float | None = Field(default=None, gt=0, le=2000, description="per-GPU cap [W]; null removes the cap")


class CapGpus(BaseModel):
    kind: Literal["cap_gpus"]
    gpus: list[int] = Field(min_length=1, max_length=20000, description="site GPU indices")
    cap_w: float | None = Field(default=None, gt=0, le=2000, description="per-GPU cap [W]; null removes the cap")


class AckAlert(BaseModel):
    kind: Literal["ack_alert"]
    alert_id: str = Field(min_length=1, max_length=200)


class Silence(BaseModel):
    kind: Literal["silence"]
    matchers: dict[str, str] = Field(min_length=1)
    duration_s: float = Field(default=3600.0, ge=60, le=7 * 86400)
    comment: str = Field(default="", max_length=500)


class Unsilence(BaseModel):
    kind: Literal["unsilence"]
    silence_id: str = Field(min_length=1, max_length=200)


Command = Annotated[
    DrStart | DrEnd | SetPolicy | CapJob | CapGpus | AckAlert | Silence | Unsilence, Field(discriminator="kind")
]


class CommandBody(BaseModel):
    command: Command


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["viewer", "operator", "admin"]


# ---------------------------------------------------------------------------------------------- app


def create_app(runtime: LiveCore, tokens: TokenStore, chart_libs: dict[str, Path] | None = None) -> FastAPI:
    """``chart_libs``: name -> JavaScript file served at /vendor/charts.js?lib=NAME, the first one by default
    (default: :func:`chart_libraries`)."""
    bc = Broadcaster(runtime)
    libs = chart_libraries() if chart_libs is None else dict(chart_libs)
    if not libs:
        raise ValueError("the cockpit needs at least one chart library")
    default_lib = next(iter(libs))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bc.attach(asyncio.get_running_loop())
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="PowerPlane cockpit API",
        version="1",
        description=__doc__,
        docs_url=None,  # the Swagger UI loads from a CDN; sites run air-gapped. The schema is at /api/openapi.json
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.broadcaster = bc
    app.state.runtime = runtime

    def principal(request: Request) -> Principal:
        auth = request.headers.get("authorization", "")
        if not auth:
            raise HTTPException(
                401, "missing token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(
                401, "malformed Authorization header: expected 'Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
        p = tokens.verify(token.strip())
        if p is None:
            raise HTTPException(401, "invalid token (unknown or revoked)", {"WWW-Authenticate": "Bearer"})
        return p

    def need(role: str) -> Any:
        def dep(p: Annotated[Principal, Depends(principal)]) -> Principal:
            if not p.allows(role):
                raise HTTPException(403, f"token '{p.name}' has role {p.role}; this needs {role} or higher")
            return p

        return dep

    Viewer = Annotated[Principal, Depends(need("viewer"))]
    Operator = Annotated[Principal, Depends(need("operator"))]
    Admin = Annotated[Principal, Depends(need("admin"))]

    def state() -> Any:
        if not runtime.ready:
            raise HTTPException(503, "the runtime has not completed its first cycle yet")
        return runtime.state

    def bad(exc: Exception) -> HTTPException:
        return HTTPException(400, str(exc))

    # ------------------------------------------------------------------ reading

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Liveness without a token: whether the runtime cycles."""
        return {"ok": runtime.ready, "cycles": runtime.cycles, "errors": runtime.errors}

    @app.get("/api/whoami")
    def whoami(p: Viewer) -> dict[str, str]:
        return {"name": p.name, "role": p.role}

    @app.get("/api/topology")
    def topology(p: Viewer) -> Response:
        return Response(bc.topology_json(), media_type="application/json")

    @app.get("/api/overview")
    def overview(p: Viewer) -> dict[str, Any]:
        s = state()
        doc = views.overview_doc(s)
        doc["prices"] = s.prices
        doc["plan"] = s.plan
        doc["forecast"] = clean(s.forecast)
        doc["series"] = runtime.series.tail(s.t_s - 3 * 3600.0)
        return doc

    @app.get("/api/snapshot")
    def snapshot(
        p: Viewer,
        level: str = "site",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=20000)] = 1000,
    ) -> dict[str, Any]:
        try:
            return views.level_doc(runtime, state(), level, offset, limit)
        except ValueError as exc:
            raise bad(exc) from exc

    @app.get("/api/floor")
    def floor(p: Viewer, metric: str = "power_w") -> Response:
        try:
            return Response(bc.floor_json(state(), metric), media_type="application/json")
        except ValueError as exc:
            raise bad(exc) from exc

    @app.get("/api/entity/{level}/{index}")
    def entity(p: Viewer, level: str, index: int) -> dict[str, Any]:
        try:
            return views.entity_doc(runtime, state(), level, index)
        except ValueError as exc:
            raise bad(exc) from exc
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.get("/api/series")
    def series(
        p: Viewer,
        entity: str = "site",
        metric: str = "facility_power_w",
        start_s: float | None = None,
        end_s: float | None = None,
        step_s: Annotated[float, Query(gt=0)] = 60.0,
    ) -> dict[str, Any]:
        """A series from the DuckDB history (``entity``: site, hall:NAME, rack:NAME, node:NAME, gpu:N, job:N)."""
        if runtime.history is None:
            raise HTTPException(404, "this run keeps no history (started with --no-history)")
        s = state()
        end = s.t_s + 1.0 if end_s is None else end_s
        start = end - 3600.0 if start_s is None else start_s
        try:
            runtime.history.flush(5.0)
            df = runtime.history.series(entity, metric, start, end, step_s)
        except ValueError as exc:
            raise bad(exc) from exc
        return clean({"entity": entity, "metric": metric, "t_s": df["t_s"].tolist(), "value": df["value"].tolist()})

    @app.get("/api/jobs")
    def jobs(
        p: Viewer,
        status: str = "all",
        sort: str = "power",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    ) -> dict[str, Any]:
        try:
            return views.jobs_doc(state(), status, limit, offset, sort)
        except ValueError as exc:
            raise bad(exc) from exc

    @app.get("/api/energy")
    def energy(p: Viewer) -> dict[str, Any]:
        return views.energy_doc(runtime, state())

    @app.get("/api/alerts")
    def alerts(p: Viewer) -> dict[str, Any]:
        """Active alerts and active silences (the Alerts page reads both in one request)."""
        s = state()
        return clean(
            {
                "t_s": s.t_s,
                "status": s.alert_status,
                "available": s.alerts is not None,
                "alerts": s.alerts or [],
                "silences": views.silences(runtime),
            }
        )

    @app.get("/api/silences")
    def silences(p: Viewer) -> dict[str, Any]:
        """Active silences: id, matchers, starts_s, ends_s, by, comment (lift one with the ``unsilence`` command)."""
        s = state()
        return clean({"t_s": s.t_s, "available": runtime.alerts is not None, "silences": views.silences(runtime)})

    @app.get("/api/forecast")
    def forecast(p: Viewer) -> dict[str, Any]:
        s = state()
        return clean({"status": s.forecast_status, "forecast": s.forecast})

    @app.get("/api/forecast/racks")
    def forecast_racks(
        p: Viewer, racks: Annotated[bool, Query(description="false: the halls and the site only")] = True
    ) -> dict[str, Any]:
        """Every rack's P10/P50/P90 (and every hall's P50) at 10 s, 1 min, 15 min, 1 h and 24 h ahead, in W, rows in
        the topology's rack (hall) order, following the jobs placed on each rack; made once a simulated minute.
        ``racks=false`` leaves the rack rows out (the energy page draws the halls only)."""
        s = state()
        fc = s.forecast_racks
        if fc is None:
            return {"status": s.forecast_status if s.forecast_status != "ok" else "no data yet", "forecast": None}
        if not racks:
            fc = {k: v for k, v in fc.items() if k not in ("p10_w", "p50_w", "p90_w")}
        return clean(
            {
                "status": s.forecast_status,
                "racks": runtime.topology.rack_names if racks else None,
                "halls": runtime.topology.hall_names,
                "forecast": fc,
            }
        )

    @app.get("/api/audit")
    def audit(p: Viewer, limit: Annotated[int, Query(ge=1, le=5000)] = 200, actor: str | None = None) -> dict[str, Any]:
        total, rows = runtime.audit(limit, actor)
        return {"total": total, "records": rows}

    # ------------------------------------------------------------------ commands

    @app.post("/api/commands", status_code=202)
    async def command(body: CommandBody, p: Operator, wait_s: Annotated[float, Query(ge=0, le=30)] = 0.0) -> Any:
        """Queue an operator command; it is applied at the runtime's next cycle and audited with the token's name.
        ``wait_s`` waits that long for the outcome."""
        args = body.command.model_dump()
        kind = args.pop("kind")
        try:
            cid = runtime.submit(kind, args, p.name)
        except CommandRefused as exc:
            raise bad(exc) from exc
        result = runtime.result(cid)
        waited = 0.0
        while wait_s > 0 and result is not None and result["status"] == "queued" and waited < wait_s:
            await asyncio.sleep(0.02)
            waited += 0.02
            result = runtime.result(cid)
        return JSONResponse(result, status_code=200 if result and result["status"] != "queued" else 202)

    @app.get("/api/commands/{command_id}")
    def command_result(command_id: str, p: Viewer) -> dict[str, Any]:
        r = runtime.result(command_id)
        if r is None:
            raise HTTPException(404, f"no command {command_id!r} (results are kept for the last 1,000)")
        return r

    # ------------------------------------------------------------------ tokens

    @app.get("/api/tokens")
    def list_tokens(p: Admin) -> dict[str, Any]:
        return {"roles": list(ROLES), "tokens": tokens.list()}

    @app.post("/api/tokens", status_code=201)
    def new_token(body: NewToken, p: Admin) -> dict[str, str]:
        try:
            secret = tokens.create(body.name, body.role)
        except ValueError as exc:
            raise bad(exc) from exc
        runtime.record_admin(p.name, f"token {body.name!r} created with role {body.role}")
        return {"name": body.name, "role": body.role, "token": secret}

    @app.delete("/api/tokens/{name}")
    def revoke_token(name: str, p: Admin) -> dict[str, Any]:
        if not tokens.revoke(name):
            raise HTTPException(404, f"no token named {name!r}")
        runtime.record_admin(p.name, f"token {name!r} revoked")
        return {"revoked": name}

    # ------------------------------------------------------------------ stream

    @app.websocket("/api/stream")
    async def stream(ws: WebSocket, token: str = "") -> None:
        """Updates as JSON text messages, one per cycle: ``{"type": "update", "overview": ..., "floor": ...}``.
        Send ``{"floor": "power_w" | "temp_c" | "util_pct" | null}`` to choose the heatmap metric."""
        p = tokens.verify(token) if token else None
        if p is None:
            await ws.close(code=4401, reason="missing or invalid token: connect with ?token=<token>")
            return
        await ws.accept()
        await bc.serve(ws, lambda: tokens.verify(token) is not None)

    # ------------------------------------------------------------------ pages

    @app.get("/vendor/charts.js", include_in_schema=False)
    def chart_asset(lib: str | None = None) -> FileResponse:
        name = default_lib if lib is None else lib
        if name not in libs:
            raise HTTPException(404, f"no chart library {name!r} in this install; have: {', '.join(libs)}")
        return FileResponse(libs[name], media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/vendor/charts.css", include_in_schema=False)
    def chart_css() -> Response:
        css = UPLOT_CSS.read_text() if "uplot" in libs and UPLOT_CSS.is_file() else ""
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=86400"})

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    return app
