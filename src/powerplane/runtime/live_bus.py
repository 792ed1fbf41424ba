"""The live runtime over the NATS bus: `powerplane run --bus nats://...` (or ``--bus local``).

The site runs elsewhere: twin agents (or real node agents) publish node frames, hall trackers roll them up, the
first agent publishes the plant (meters, batteries). :class:`BusLiveRuntime` shares
:class:`~powerplane.runtime.live.LiveRuntime`'s interface (state, ready, subscribe, submit, result, audit, start,
stop, step, record_admin), so the API and the cockpit work unchanged on top. One cycle (every ``period_s``, at
speed 1: the agents play the site in real time):

apply the operator commands queued since the last cycle (GPU caps go to the nodes' agents through the bus) ->
read the :class:`~powerplane.bus.source.BusSource` frame and ingest it into the Tracker -> the energy fast loop
on the meter readings (``runtime/live_bus_energy.py``), its battery setpoints sent as ``BessSetpoint`` commands
-> money and demand window from the grid meter -> alerts -> forecasts -> publish one LiveState.

What the bus does not carry is said, not guessed: job placement (the jobs page is empty and says why, job
commands are refused) and demand response (it needs the embedded twin's scheduler). The planner runs on a model of
the site with the SOC and IT load read over the bus (``live_bus_energy.py``).
:meth:`stop` also closes the bus site it was given (agents, trackers, and a local nats-server).
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import numpy as np

from powerplane.control.fast import Measurements
from powerplane.core.clock import Clock, perf_counter_s
from powerplane.core.commands import BessSetpoint, GpuPowerCap
from powerplane.core.frames import Frame
from powerplane.physics import gpu_power, tariff
from powerplane.runtime.live_bus_energy import BUS_POLICIES, BusEnergy
from powerplane.runtime.live_bus_view import bus_bess_rows, bus_site_view, bus_status, reading, unit_readings
from powerplane.runtime.live_commands import COMMAND_KINDS, CommandRefused, OperatorCommand, _alert_command
from powerplane.runtime.live_core import JOB_FIELDS, LiveCore, LiveOptions, check_period
from powerplane.telemetry.snapshot import Snapshot

if TYPE_CHECKING:
    from powerplane.bus.wiring import BusSite

BUS_COMMAND_KINDS = tuple(dict.fromkeys((*COMMAND_KINDS, "cap_gpus")))
JOBS_NOTE = (
    "job data is not available over the bus: agents report GPUs, nodes and the plant, not job placement "
    "(cap GPUs instead of jobs)"
)
JOB_DTYPES = {"kind": np.int64, "priority": np.int64, "n_gpus": np.int64, "state": np.int64, "deferrable": bool}


class BusSiteClock:
    """What the shared runtime code and the API read of ``rt.twin`` in bus mode: the site's time (that of the
    newest reading, advancing in real time between readings) and the GPUs' jobs (none known: -1)."""

    def __init__(self, n_gpus: int, monotonic_s: Callable[[], float]) -> None:
        self._mono = monotonic_s
        self._t_s = float("nan")
        self._at = 0.0
        self.workload = type("BusWorkload", (), {"gpu_job": np.full(n_gpus, -1, dtype=np.int64)})()

    def seen(self, t_s: float) -> None:
        if np.isfinite(t_s) and not t_s <= self._t_s:
            self._t_s, self._at = float(t_s), self._mono()

    @property
    def now_s(self) -> float:
        return self._t_s + (self._mono() - self._at) if np.isfinite(self._t_s) else float("nan")


class BusLiveRuntime(LiveCore):
    """The live runtime on a :class:`~powerplane.bus.wiring.BusSite` instead of an embedded twin: the shared
    :class:`LiveCore` cycle, with readings, control, accounting and views of its own."""

    command_kinds = BUS_COMMAND_KINDS
    money_note = (
        "energy at the tariff's price since local midnight, from the grid meter read each cycle "
        "over the bus; saved: against the same load without batteries (demand charge not included)"
    )

    def __init__(
        self,
        opts: LiveOptions,
        bus: BusSite,
        *,
        owns_bus: bool = True,
        monotonic_s: Callable[[], float] = perf_counter_s,
        wall: Clock | None = None,
        alert_engine: Any = "auto",
        forecaster: Any = "auto",
    ) -> None:
        if opts.speed != 1.0:
            raise ValueError("--speed does not apply over the bus: the agents play the site in real time (speed 1)")
        check_period(opts)
        if opts.policy not in BUS_POLICIES:
            raise ValueError(f"unknown live policy {opts.policy!r} over the bus; valid: {', '.join(BUS_POLICIES)}")
        self.bus = bus
        self._owns_bus = owns_bus
        self._bus_closed = False
        self.clock = BusSiteClock(bus.topology.n_gpus, monotonic_s)
        self.twin = cast(Any, self.clock)  # the site's time and (unknown) jobs where shared code reads rt.twin
        self.steps_per_cycle = 1
        super().__init__(opts, bus.site, bus.topology, monotonic_s, wall, alert_engine, forecaster, opts.period_s)
        from powerplane.config.loader import load_scenario
        from powerplane.twin.twin import Twin

        # The planner's model of the site (weather, cooling, renewables, batteries); never advanced.
        self.site_model = Twin(self.site, load_scenario(opts.scenario)[1], seed=opts.seed, dt_s=1.0)
        self.energy = BusEnergy(self.site, self.topology, opts.policy, self.site_model)
        self.policy = cast(Any, self.energy)
        self._controller = None
        self._tz = ZoneInfo(self.site.timezone)
        self._last_block = None
        # Bus mode: the newest frame, the batteries' commanded setpoints and what became of the commands.
        n = self.energy.n_units
        self._frame: Frame | None = None
        self._source_rejected: Counter[str] = Counter()
        self._last_control_t = float("nan")
        self._last_account_t = float("nan")
        self.bess_setpoint_w = np.full(n, np.nan)
        self.bess_commands: Counter[str] = Counter()
        self._bess_failing = np.zeros(n, dtype=bool)
        self._gpu_cap = _cap_limits(self.topology)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the cycle, close the history, then the bus site (agents, trackers, a local server)."""
        super().stop(timeout_s)
        if self._owns_bus and not self._bus_closed:
            self._bus_closed = True
            self.bus.close()

    # ------------------------------------------------------------------ the cycle

    def _advance(self) -> Snapshot:
        """Read the bus frame, ingest it, and run the energy fast loop on its meter readings."""
        frame = self.bus.source.read()
        rejected = Counter(self.bus.source.rejected)
        delta = rejected - self._source_rejected
        self._source_rejected = rejected
        snap = self.tracker.ingest(frame, None, delta)
        self._frame = frame
        self.clock.seen(frame.t_s)
        self.clock.seen(self._plant_t())
        self._control(frame)
        return snap

    def _plant_t(self) -> float:
        return float(getattr(self.bus.source, "_plant_t", float("nan")))

    def _readings(self, frame: Frame) -> Measurements:
        site = frame.levels.get("site", {})
        bess = frame.levels.get("bess", {})
        n = self.energy.n_units
        grid = reading(site, "meter_power_w")
        freq = reading(site, "frequency_hz")
        bess_w, soc = unit_readings(bess, "power_w", n), unit_readings(bess, "soc", n)
        hall = frame.levels.get("hall", {}).get("it_power_w")
        hall_w = np.asarray(hall, dtype=np.float64) if hall is not None else None
        if hall_w is not None and (hall_w.shape != (self.topology.n_halls,) or not np.isfinite(hall_w).all()):
            hall_w = None
        valid = bool(np.isfinite(grid) and np.isfinite(bess_w).all() and np.isfinite(soc).all())
        if not np.isfinite(freq):
            freq = float(self.site.grid.frequency_hz)
        plant_t = self._plant_t()
        return Measurements(
            self.clock.now_s,
            grid,
            np.nan_to_num(bess_w),
            np.nan_to_num(soc, nan=0.5),
            freq,
            False,
            hall_w,
            reading_t_s=plant_t if np.isfinite(plant_t) else None,
            valid=valid and np.isfinite(plant_t),
        )

    def _control(self, frame: Frame) -> None:
        """The energy fast loop on the meter readings; its setpoints go to the batteries over the bus."""
        m = self._readings(frame)
        now = m.t_s
        dt_s = now - self._last_control_t if np.isfinite(self._last_control_t) else self.opts.period_s
        self._last_control_t = now
        dt_s = float(np.clip(dt_s, 0.05, 10.0))
        if m.valid:
            it_w = reading(frame.levels.get("site", {}), "it_power_w")
            self.energy.observe(now, m.grid_w, it_w, m.hall_it_w)
            self._account_reading(now, m.grid_w, float(m.bess_w.sum()))
        unit = self.energy.decide(m, dt_s)
        if unit is None:
            return
        cmds = [BessSetpoint(i, float(w)) for i, w in enumerate(np.asarray(unit, dtype=np.float64).tolist())]
        results = self.bus.actuator.apply(cmds)
        for i, r in enumerate(results):
            self.bess_commands["sent"] += 1
            self.bess_commands["applied" if r.applied else "refused"] += 1
            self.bess_commands["clipped"] += bool(r.clipped)
            if r.applied:
                self.bess_setpoint_w[i] = cmds[i].power_w
            if r.applied == self._bess_failing[i]:  # audit when a unit stops (or starts again) taking setpoints
                self._bess_failing[i] = not r.applied
                self._record(
                    {
                        "t_s": now,
                        "actor": "fast-loop",
                        "mode": "bess",
                        "unit": self.site.bess[i].name,
                        "setpoint_w": cmds[i].power_w,
                        "applied": r.applied,
                        "why": r.detail if not r.applied else f"battery takes setpoints again: {r.detail}",
                    }
                )

    def _account_reading(self, t_s: float, grid_w: float, bess_w: float) -> None:
        """Money and the rolling demand window from one meter reading (the interval since the last one)."""
        dt_s = t_s - self._last_account_t if np.isfinite(self._last_account_t) else 0.0
        self._last_account_t = t_s
        price = tariff.price_per_kwh(np.array([t_s]), self.site.tariff, self.site.timezone)
        self._last_price = float(price[0])
        if 0.0 < dt_s <= 60.0:
            day = dt.datetime.fromtimestamp(t_s, self._tz).toordinal()
            self.ledger.add(
                day, np.array([grid_w]), np.array([bess_w]), price, self.site.tariff.export_price_per_kwh, dt_s
            )
        self._grid_window[self._grid_next] = grid_w
        self._grid_next = (self._grid_next + 1) % self._grid_window.size

    def _planner_failed(self) -> bool:
        return bool(self.energy.planner_failed)

    def _safe_mode(self) -> bool:
        return bool(self.energy.safe_mode)

    def _plant_context(self) -> dict[str, float]:
        ctx: dict[str, float] = {}
        if self._frame is not None:
            site = self._frame.levels.get("site", {})
            grid, freq = reading(site, "meter_power_w"), reading(site, "frequency_hz")
            if np.isfinite(grid):
                ctx["grid_power_w"] = grid
                ctx["islanded"] = 0.0
            if np.isfinite(freq):
                ctx["frequency_hz"] = freq
        return ctx

    def _job_timeline(self, t_s: float) -> Any:
        return None  # no job timeline over the bus

    # ------------------------------------------------------------------ operator commands

    def _execute(self, cmd: OperatorCommand) -> tuple[str, dict[str, Any]]:
        a = cmd.args
        if cmd.kind == "cap_gpus":
            return self._cap_gpus(a)
        if cmd.kind == "set_policy":
            name = str(a.get("policy", ""))
            if name not in BUS_POLICIES:
                raise CommandRefused(f"unknown live policy {name!r}; valid: {', '.join(BUS_POLICIES)}")
            old = self.energy.name
            if name == old:
                return f"already running {name}", {}
            self.energy = BusEnergy(self.site, self.topology, name, self.site_model)
            self.policy = cast(Any, self.energy)
            self._policy_audit_seen = 0
            return f"policy {old} -> {name} (batteries follow it from this cycle)", {}
        if cmd.kind == "cap_job":
            raise CommandRefused(f"{JOBS_NOTE}; the runtime does not know which GPUs job {a.get('job')} holds")
        if cmd.kind in ("dr_start", "dr_end"):
            raise CommandRefused(
                "demand response needs the job scheduler of an embedded twin (deferral, compute caps by class): "
                "not available over the bus"
            )
        return _alert_command(self, cmd)

    def _cap_gpus(self, a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Cap GPUs (site indices) to ``cap_w`` watts each (None: the default limit), through the nodes' agents;
        the cap is clipped to each GPU model's accepted range before it is sent."""
        try:
            gpus = np.unique(np.asarray(a.get("gpus", []), dtype=np.int64).reshape(-1))
        except (TypeError, ValueError) as exc:
            raise CommandRefused(f"gpus must be a list of GPU indices: {exc}") from None
        n = self.topology.n_gpus
        if gpus.size == 0:
            raise CommandRefused("cap_gpus needs at least one GPU index")
        if gpus.min() < 0 or gpus.max() >= n:
            raise CommandRefused(f"GPU indices must be within 0-{n - 1}")
        cap = a.get("cap_w")
        lo, hi = self._gpu_cap[0][gpus], self._gpu_cap[1][gpus]
        clipped = False
        if cap is None:
            want = np.full(gpus.size, np.nan)
        else:
            cap_w = float(cap)
            if not (np.isfinite(cap_w) and cap_w > 0):
                raise CommandRefused(f"cap_w must be a positive number of watts per GPU, got {cap!r}")
            want = np.clip(np.full(gpus.size, cap_w), lo, hi)
            clipped = bool(np.any(want != cap_w))
        res = self.bus.actuator.apply([GpuPowerCap(gpus, want)])[0]
        if not res.applied:
            raise CommandRefused(f"not applied over the bus: {res.detail}")
        what = "default limit restored" if cap is None else f"capped at {float(np.nanmax(want)):.0f} W"
        note = " (clipped to the GPUs' limits)" if clipped or res.clipped else ""
        return f"{gpus.size} GPUs {what}{note} through the bus: {res.detail}", {"gpus": int(gpus.size)}

    # ------------------------------------------------------------------ publishing

    def _jobs_arrays(self) -> tuple[dict[str, Any], list[str]]:
        out: dict[str, Any] = {"job": np.zeros(0, dtype=np.int64)}
        for f in JOB_FIELDS:
            out[f] = np.zeros(0, dtype=JOB_DTYPES.get(f, np.float64))
        return out, []

    def _site_view(self, snap: Snapshot) -> dict[str, Any]:
        return bus_site_view(self, snap)

    def _bess_rows(self) -> list[dict[str, Any]]:
        return bus_bess_rows(self)

    def _dr_view(self, t_s: float, site: dict[str, Any]) -> dict[str, Any]:
        return {
            "supported": False,
            "active": False,
            "events": [],
            "note": "demand response: not available over the bus",
        }

    def _extra(self) -> dict[str, Any]:
        return {"source": "bus", "bus": bus_status(self), "planner": self.energy.planner_status, "jobs_note": JOBS_NOTE}


def _cap_limits(topology: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each GPU's accepted power-cap range [W] from its model's profile (the widest range when unknown)."""
    models = list(topology.gpu_models)
    lo = np.array([gpu_power.GPU_PROFILES[m].min_cap_w if m in gpu_power.GPU_PROFILES else 1.0 for m in models])
    hi = np.array([gpu_power.GPU_PROFILES[m].max_cap_w if m in gpu_power.GPU_PROFILES else 2000.0 for m in models])
    idx = np.asarray(topology.gpu_model_idx, dtype=np.int64)
    return lo[idx], hi[idx]


def open_bus_runtime(
    opts: LiveOptions,
    url: str,
    *,
    agents: int = 1,
    trackers: int = 2,
    rate_hz: float = 10.0,
    ready_timeout_s: float = 60.0,
    announce: Callable[[str], None] | None = None,
) -> BusLiveRuntime:
    """Start the site on the bus at ``url`` (``local``: a nats-server of our own on a free loopback port), wait
    until every GPU has reported, and return the runtime on it (its ``stop`` closes the whole bus site).

    Agents and trackers run as subprocesses logging to ``<state_dir>/bus``; every bus command is appended to
    ``<state_dir>/bus/bus_audit.jsonl``."""
    from powerplane.bus.wiring import run_site_over_bus

    if url != "local" and not url.startswith(("nats://", "tls://")):
        raise ValueError(f"--bus takes a NATS URL (nats://host:port) or 'local', got {url!r}")
    if opts.speed != 1.0:
        raise ValueError("--speed does not apply over the bus: the agents play the site in real time (speed 1)")
    if opts.policy not in BUS_POLICIES:
        raise ValueError(f"unknown live policy {opts.policy!r} over the bus; valid: {', '.join(BUS_POLICIES)}")
    log_dir = opts.state_dir / "bus"
    store: Path | None = None
    if url == "local":  # a fresh JetStream store: an old run's rollups would come back as the newest picture
        log_dir.mkdir(parents=True, exist_ok=True)
        store = Path(tempfile.mkdtemp(prefix="nats-", dir=log_dir))
    bus = run_site_over_bus(
        None if url == "local" else url,
        opts.scenario,
        agents=agents,
        trackers=trackers,
        rate_hz=rate_hz,
        seed=opts.seed,
        log_dir=log_dir,
        store_dir=store,
        tie_to_parent=True,  # a killed `powerplane run --bus` takes its agents, trackers and server with it
    )
    if store is not None:
        _remove_store_on_close(bus, store)
    try:
        if announce is not None:
            announce(f"bus: {bus.url}, {agents} agents and {trackers} trackers started (logs in {log_dir})")
        bus.wait_ready(ready_timeout_s)
        return BusLiveRuntime(opts, bus)
    except BaseException:
        bus.close()
        raise


def _remove_store_on_close(bus: BusSite, store: Path) -> None:
    close = bus.close

    def close_and_remove() -> None:
        try:
            close()
        finally:
            shutil.rmtree(store, ignore_errors=True)

    bus.close = close_and_remove  # type: ignore[method-assign]
