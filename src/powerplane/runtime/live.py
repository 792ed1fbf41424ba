"""The live runtime: the embedded stack, cycle by cycle, behind `powerplane run` and the cockpit.

One cycle: apply the operator commands queued since the last cycle -> advance the twin (a Source and an
Actuator) in closed loop with the energy policy (``runtime/energy.py``: the fast loop every step, the planner
every 15 min) -> read it and ingest the frame into the :class:`~powerplane.telemetry.tracker.Tracker` (validation,
rollups, job power, ring, history) -> alerts -> forecasts (every simulated minute) -> publish one immutable
:class:`~powerplane.runtime.live_state.LiveState`.

The cycle runs in its own thread at ``speed`` simulated seconds per wall second; the web server only reads the
published state and enqueues commands (:meth:`LiveRuntime.submit`), so it never blocks the cycle nor drives a
device itself. Every operator command is audited with the name of the token that sent it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from powerplane.config.loader import load_scenario
from powerplane.core.clock import Clock, perf_counter_s
from powerplane.physics import tariff
from powerplane.runtime.energy import POLICIES, Policy, make_policy
from powerplane.runtime.live_commands import CommandRefused, OperatorCommand, apply_command
from powerplane.runtime.live_core import (
    AUDIT_KEEP,
    FORECAST_EVERY_S,
    JOB_FIELDS,
    LiveCore,
    LiveOptions,
    check_period,
)
from powerplane.runtime.live_view import bess_rows, dr_view, site_view
from powerplane.telemetry.snapshot import Snapshot
from powerplane.twin.jobs import State
from powerplane.twin.twin import Twin, TwinBlock

__all__ = ["AUDIT_KEEP", "FORECAST_EVERY_S", "JOB_FIELDS", "CommandRefused", "LiveOptions", "LiveRuntime"]

MAX_BLOCK_STEPS = 60


class LiveRuntime(LiveCore):
    """The composition root of the running system. ``start`` runs cycles in a thread; ``step`` runs one (tests)."""

    twin: Twin
    policy: Policy

    def __init__(
        self,
        opts: LiveOptions,
        monotonic_s: Callable[[], float] = perf_counter_s,
        wall: Clock | None = None,
        alert_engine: Any = "auto",
        forecaster: Any = "auto",
    ) -> None:
        if not 1.0 <= opts.speed <= 600.0:
            raise ValueError(f"--speed must be between 1 and 600 simulated seconds per second, got {opts.speed:g}")
        check_period(opts)
        if opts.policy not in POLICIES or opts.policy == "oracle":
            raise ValueError(f"unknown live policy {opts.policy!r}; valid: none, threshold, mpc")
        site, site_file = load_scenario(opts.scenario)
        self.twin = Twin(site, site_file, seed=opts.seed, dt_s=1.0)
        self.policy = make_policy(opts.policy, self.twin, list(site.energy.demand_response))
        self._controller = self.policy.controller()
        super().__init__(opts, site, self.twin.topo, monotonic_s, wall, alert_engine, forecaster, self.twin.dt_s)
        self.feed_planner(self.policy)
        self.notifier: Any = None
        if alert_engine == "auto" and self.alerts is not None and (opts.heal or opts.notify is not None):
            self._attach_ops(opts)
        self.steps_per_cycle = max(1, round(opts.speed * opts.period_s / self.twin.dt_s))
        self._tz = ZoneInfo(self.site.timezone)
        self._last_block: TwinBlock | None = None

    def _attach_ops(self, opts: LiveOptions) -> None:
        """Alerts with self-healing on the twin and, with ``opts.notify``, notification through a durable outbox
        (``runtime/ops_loop.OpsStack``: the same engine interface, so the cockpit's alert page is unchanged)."""
        from powerplane.ops.notify import Notifier, NotifyConfig
        from powerplane.ops.outbox import Outbox
        from powerplane.runtime.ops_loop import OpsStack

        if opts.notify is not None:
            cfg = NotifyConfig.load(opts.notify)  # a broken file is a clear error before anything starts
            self.notifier = Notifier(cfg, Outbox(opts.state_dir / "outbox.sqlite"))
            self.notifier.start(self._wall)
        stack = OpsStack.for_twin(self.twin, self.notifier, str(opts.state_dir / "ops_audit.jsonl"))
        if not opts.heal:
            stack.healer = None
        self.alerts, self.alert_status = stack, "ok"

    def stop(self, timeout_s: float = 10.0) -> None:
        super().stop(timeout_s)
        notifier = getattr(self, "notifier", None)  # the bus runtime builds no ops stack of its own
        if notifier is not None:
            notifier.stop()
            notifier.outbox.close()
            self.notifier = None

    def feed_planner(self, policy: Policy) -> None:
        """Give an mpc policy the live forecaster's newest forecast as its IT-load forecast (P90 per slot)."""
        if self.forecaster is not None and hasattr(policy, "forecast_source"):
            policy.forecast_source = lambda _now_s: self._forecast

    # ------------------------------------------------------------------ the cycle

    def _advance(self) -> Snapshot:
        """Advance the twin in closed loop with the energy policy, in blocks, and ingest its reading."""
        remaining = self.steps_per_cycle
        while remaining > 0:
            n = min(remaining, MAX_BLOCK_STEPS)
            self.policy.before_block(self.twin.now_s)
            block = self.twin.advance(n, self._controller)  # type: ignore[arg-type]
            self.policy.after_block(block)
            self._account(block)
            remaining -= n
        return self.tracker.ingest(self.twin.read(), self.twin.workload.gpu_job)

    def _account(self, block: TwinBlock) -> None:
        """Money, the rolling demand window and the site series, from every step of a block (vectorized)."""
        p = block.plant
        price = tariff.price_per_kwh(block.t_s, self.site.tariff, self.site.timezone)
        day = dt.datetime.fromtimestamp(float(block.t_s[-1]), self._tz).toordinal()
        self.ledger.add(
            day, p.grid_power_w, p.bess_power_w, price, self.site.tariff.export_price_per_kwh, self.twin.dt_s
        )
        g = p.grid_power_w
        w = self._grid_window
        if g.size >= w.size:
            w[:] = g[-w.size :]
            self._grid_next = 0
        else:
            idx = (self._grid_next + np.arange(g.size)) % w.size
            w[idx] = g
            self._grid_next = int((self._grid_next + g.size) % w.size)
        self._last_block = block
        self._last_price = float(price[-1])

    def _plant_context(self) -> dict[str, float]:
        b = self._last_block
        if b is None:
            return {}
        return {
            "grid_power_w": float(b.plant.grid_power_w[-1]),
            "frequency_hz": float(b.plant.frequency_hz[-1]),
            "islanded": float(bool(b.plant.islanded[-1])),
        }

    def _job_timeline(self, t_s: float) -> Any:
        return self.twin.workload.sched.expected_timeline(t_s)

    def _execute(self, cmd: OperatorCommand) -> tuple[str, dict[str, Any]]:
        return apply_command(self, cmd)

    # ------------------------------------------------------------------ publishing

    def _jobs_arrays(self) -> tuple[dict[str, Any], list[str]]:
        jobs = self.twin.workload.jobs
        state = jobs.view("state")
        sel = np.flatnonzero(state != State.DONE)
        out: dict[str, Any] = {"job": sel}
        for f in JOB_FIELDS:
            out[f] = jobs.view(f)[sel].copy()
        return out, [jobs.names[j] for j in sel.tolist()]

    def _site_view(self, snap: Snapshot) -> dict[str, Any]:
        assert self._last_block is not None
        return site_view(self, snap, self._last_block)

    def _bess_rows(self) -> list[dict[str, Any]]:
        assert self._last_block is not None
        return bess_rows(self, self._last_block)

    def _dr_view(self, t_s: float, site: dict[str, Any]) -> dict[str, Any]:
        return dr_view(self.policy, t_s, site)
