"""The ``mpc`` policy: the rolling-horizon planner on a load forecast, followed by the fast loop.

Every ``replan_min`` it solves the dispatch LP (control/planner.py) over ``planner_horizon_h`` on:

- the IT load's median per slot: the job-aware forecaster's P50 over the hour it covers when ``forecast_source``
  is set and fresh, the last hour's median (persistence) in the other slots; converted to facility load by the
  cooling model and the weather. (The live runtime and ``simulate --forecast`` set the source; note that the
  persistence median runs ~0.4 MW of IT above the mean on texas, a margin the peak has come to rely on:
  NOTES.md, seventh session);
- load scenarios for the peak: the demand charge is paid on the highest 15-min mean, so the plan holds its peak in
  every scenario of the 15-min load (from the forecaster's band where it forecasts, else from the spread of the
  last day's 15-min means around their median), the batteries covering a scenario's excess by recourse discharge
  that costs energy only with the scenario's probability. (Keeping the upper band's room in *every* slot, as if
  each slot were certain to reach it, spends the batteries all night on peaks that mostly do not come.) Until a
  few hours of history exist, the upper band's headroom is kept instead;
- a demand rate scaled by the share of the rest of the billing period the horizon covers: a peak set today binds
  every remaining day of the period, each of which pays again in energy to hold it, so one horizon's LP that
  priced it at the whole charge would hold it far too hard at the start of a period (and too loosely at its end
  with a fixed share). With ``billing_end_s`` unset, the period is the calendar month. (A coarse LP over the rest
  of the period, at 1-h steps, setting the 24-h plan's peak level was tried in the fifth and sixth sessions and
  removed in the seventh: on the last day's load it spent more energy than the peak it saved; see NOTES.md);
- the energy left at the horizon's end valued at the coming week's mean price (as delivered, less wear), not
  held to a terminal floor e_T >= e_0: with the floor, a plan made at midnight with the batteries half full must
  end the next midnight as full, so it recharges right after the dear hours, on top of the evening load, and
  the month's peak is set there (texas, 7 days at 1 s: 215.8k against 212.2k USD with the value);
- the wear of the fast loop's own work around the plan (damping and frequency response, measured over the last
  hour): a battery that idles pays the damping's throughput, one already charging or discharging mostly does not,
  so the plan keeps that in mind.

The first plan waits for the first reading of the load (rules alone until then: no plan on a made-up load).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from powerplane.config.schema import DemandResponseEvent
from powerplane.control.planner import PlanError, PlanInputs, solve_plan
from powerplane.forecast.planner_feed import planner_it_load
from powerplane.physics import tariff
from powerplane.runtime.energy import IT_FORECAST_QUANTILE, IT_HISTORY_BLOCKS, ManagedPolicy
from powerplane.runtime.energy_inputs import planner_inputs, wear_cost_per_kwh
from powerplane.twin.twin import Twin, TwinBlock

F64 = NDArray[np.float64]
SCENARIO_LEVELS = (np.arange(5) + 0.5) / 5  # equally likely 15-min load scenarios (their quantile levels)
SCENARIO_MIN_WINDOWS = 8  # demand windows of history before the scenarios replace the P90 headroom
DAMPING_LEVELS = (np.arange(8) + 0.5) / 8
DAMPING_MIN_SHARE = 0.1  # share of the residual ring filled before the planner prices the damping's wear
TERMINAL_VALUE_DAYS = 7.0  # the tariff's mean over this long prices the energy a plan leaves at its end


def month_end_s(t_s: float, timezone: str) -> float:
    """Start of the next calendar month in the site's time zone (the end of the billing period holding t_s)."""
    zone = ZoneInfo(timezone)
    now = dt.datetime.fromtimestamp(t_s, zone)
    nxt = dt.datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=zone)
    return nxt.timestamp()


class MpcPolicy(ManagedPolicy):
    """Replans every ``replan_min`` over ``planner_horizon_h`` (see the module docstring).

    ``forecast_source``: a callable ``now_s -> forecast dict`` of the job-aware forecaster (see
    :meth:`powerplane.forecast.LiveForecaster.forecast`; the live runtime sets it): its P50 and P90 per planner slot
    (``forecast.planner_feed.planner_it_load``; the last forecast minute is held past its hour). Without one, or
    when the forecast is missing, stale or empty: persistence."""

    name = "mpc"

    def __init__(self, twin: Twin, events: list[DemandResponseEvent]) -> None:
        super().__init__(twin, events)
        self._next_plan_s = -np.inf
        self._it_recent: list[float] = []
        self._block_s = 60.0  # length of the blocks whose means _it_recent holds [s]
        self._hall_recent: F64 | None = None
        # 15-min means of the IT load over the last day (aligned to the epoch, like the bill's windows).
        self._it_windows: deque[float] = deque(maxlen=96)
        self._it_win_id = -1
        self._it_win_sum = 0.0
        self._it_win_s = 0.0
        self.forecast_source: Callable[[float], Mapping[str, Any] | None] | None = None
        # Energy left at the horizon's end: "value" prices it at the coming week's mean price (terminal_value),
        # "floor" holds e_T >= e_0 instead; an explicit value in money per kWh overrides both.
        self.terminal: Literal["value", "floor"] = "value"
        self.terminal_value_per_kwh: float | None = None
        # Deferrable jobs start in the plan's cheap windows (False: the scheduler gets no windows, the workload runs
        # as without energy management; the like-for-like case against the oracle, which defers nothing)
        self.defer = True
        self._wear_per_kwh = wear_cost_per_kwh(self.site)
        self.it_source = "persistence"  # what the last plan's IT load came from: "forecast <model>" or persistence
        self.forecast_plans = 0  # plans made on the forecaster's load (the rest on persistence)
        # What the last plan stood on: demand-rate share, where its scenarios came from, the damping's mean |power|.
        self.plan_basis: dict[str, float | str] = {}
        self._facility_now_w = float("nan")
        self._it_now_w = float("nan")

    def after_block(self, block: TwinBlock) -> None:
        self._block_s = float(block.t_s.size * self.twin.dt_s)
        it = float(block.plant.it_power_w.mean())
        self._it_recent.append(it)
        self._it_recent = self._it_recent[-IT_HISTORY_BLOCKS:]
        self._add_it_window(float(block.t_s[0]), it, self._block_s)
        self._hall_recent = block.fleet.hall_it_power_w.mean(axis=0)
        # (block means: the forecast's facility power is per-minute means; one step's reading swings with training)
        self._facility_now_w = float(block.plant.facility_power_w.mean())
        self._it_now_w = it
        super().after_block(block)

    def _add_it_window(self, t_s: float, it_w: float, span_s: float) -> None:
        window_s = self.site.tariff.demand_window_min * 60.0
        w = int(t_s // window_s)
        if w != self._it_win_id:
            if self._it_win_s >= 0.5 * window_s:  # a window mostly seen (the first may be partial)
                self._it_windows.append(self._it_win_sum / self._it_win_s)
            self._it_win_id, self._it_win_sum, self._it_win_s = w, 0.0, 0.0
        self._it_win_sum += it_w * span_s
        self._it_win_s += span_s

    def before_block(self, t_s: float) -> None:
        super().before_block(t_s)
        if t_s >= self._next_plan_s and self._it_recent:
            self._next_plan_s = t_s + self.site.energy.replan_min * 60.0
            self._replan(t_s)

    def demand_rate_share(self, t_s: float) -> float:
        """The demand rate's scale for a plan made at ``t_s``: the bill's share times the share of the rest of the
        billing period that the horizon covers (1 in its last horizon)."""
        end = self.billing_end_s if self.billing_end_s is not None else month_end_s(t_s, self.site.timezone)
        horizon_s = self.site.energy.planner_horizon_h * 3600.0
        return self.demand_rate_scale * min(1.0, horizon_s / max(end - t_s, 1.0))

    def _replan(self, t_s: float) -> None:
        e = self.site.energy
        step = e.planner_step_min * 60.0
        start = np.floor(t_s / step) * step
        t = start + step * np.arange(round(e.planner_horizon_h * 3600.0 / step))
        # IT load: energy is planned on the median (P50); the peak on scenarios around it (or the P90 headroom).
        recent = np.asarray(self._it_recent)
        per_window = max(round(self.site.tariff.demand_window_min * 60.0 / self._block_s), 1)
        kernel = np.full(min(per_window, recent.size), 1.0 / min(per_window, recent.size))
        windows = np.convolve(recent, kernel, "valid")
        p50 = float(np.quantile(recent, 0.5))
        p90 = max(float(np.quantile(windows, IT_FORECAST_QUANTILE)), p50)
        n_halls = self.twin.topo.n_halls
        halls = self._hall_recent if self._hall_recent is not None else np.full(n_halls, p90 / n_halls)
        bands = self._forecast_bands(t_s, t, step)
        self.forecast_plans += bands is not None
        if bands is None:
            it_w, it_hi_w = np.full(t.size, p50), np.full(t.size, p90)
            self.it_source = "persistence"
            ahead = np.zeros(t.size, dtype=bool)
        else:  # the forecast where it reaches, persistence after it
            ahead = np.isfinite(bands[0])
            it_w, it_hi_w = np.where(ahead, bands[0], p50), np.where(ahead, bands[1], p90)
        scenarios, source = self._scenarios(it_w, it_hi_w, ahead)
        damping = self._damping_quantiles()
        # The halls keep their present shares of the upper band (busbars are limits: plan them on P90).
        total = float(halls.sum())
        share = halls / total if total > 0 else np.full(halls.size, 1.0 / halls.size)
        args = (it_w, it_hi_w, share, scenarios, damping)
        rate = self.demand_rate_share(t_s)
        floor = self.month_peak_w
        self.plan_basis = {
            "demand_rate_share": rate,
            "peak_floor_w": floor,
            "scenarios": source,
            "damping_mean_abs_w": float(np.mean(np.abs(damping))) if damping is not None else 0.0,
        }
        terminal = self.terminal_value(t_s)
        self.plan_basis["terminal_value_per_kwh"] = terminal if terminal is not None else "floor"
        inputs = self._inputs(t_s, t, floor, rate, *args, terminal)
        try:
            self.plan = solve_plan(inputs)
            # Deferrable jobs start in the plan's cheaper windows. A slot's cost is what one more kWh of load there
            # costs the plan (the LP's marginal cost: the price, plus the demand charge where the plan sits at its
            # peak, as moved by the batteries), not the tariff's price: by price alone they all start when the
            # night tariff begins, on top of the batteries' charging, and set the month's peak (texas, 7 days:
            # 215,990 -> 215,826 USD at 1 s; at 60 s without damping 214.6k -> 210.8k).
            marginal = self.plan.marginal_per_kwh
            cost = marginal if marginal is not None else inputs.price_per_kwh
            if self.defer:
                self.twin.workload.sched.set_plan(
                    [(float(a), float(a + inputs.dt_s), float(c)) for a, c in zip(t, cost, strict=True)]
                )
            self.stats.plan_solves += 1
            self.stats.plan_solve_s.append(self.plan.solve_s)
            self.stats.plan_t_s.extend(t.tolist())
            self.stats.plan_grid_w.extend(self.plan.grid_w.tolist())
            self.planner_failed = False
        except (PlanError, ValueError) as exc:
            # Keep following the last valid plan; without one the fast loop runs on rules alone.
            self.stats.plan_failures += 1
            self.planner_failed = True
            keep = "keeping the last plan" if self.plan is not None else "rule-based control only"
            self.stats.audit.append(
                {"t_s": t_s, "actor": "planner", "mode": "plan", "why": f"solve failed: {exc}; {keep}"}
            )

    def terminal_value(self, t_s: float) -> float | None:
        """What a kWh left in the batteries at the plan's end is worth: the tariff's mean price over the next
        ``TERMINAL_VALUE_DAYS``, as the batteries deliver it (discharge efficiency), less the wear of delivering it;
        None for the terminal floor (``terminal == "floor"``). An explicit ``terminal_value_per_kwh`` wins."""
        if self.terminal_value_per_kwh is not None:
            return self.terminal_value_per_kwh
        if self.terminal == "floor":
            return None
        t = t_s + 900.0 * (np.arange(round(TERMINAL_VALUE_DAYS * 96)) + 0.5)
        price = float(np.mean(tariff.price_per_kwh(t, self.site.tariff, self.site.timezone)))
        return max(price * float(np.mean(self.params.eta_discharge)) - self._wear_per_kwh, 0.0)

    def _inputs(
        self,
        now_s: float,
        t: F64,
        floor_w: float,
        rate: float,
        it_w: F64,
        it_hi_w: F64,
        share: F64,
        scenarios: F64 | None,
        damping: F64 | None,
        terminal_value_per_kwh: float | None,
    ) -> PlanInputs:
        """The planner's inputs over steps ``t`` from this policy's state."""
        return planner_inputs(
            self.twin,
            t,
            it_w,
            it_hi_w[:, None] * share[None, :],
            floor_w,
            self.events,
            self.baseline_w,
            rate,
            self.dr_credit_per_kwh,
            self._reducible_compute_w(now_s),
            it_hi_w,
            scenarios,
            None if scenarios is None else np.full(scenarios.shape[1], 1.0 / scenarios.shape[1]),
            None if damping is None else np.repeat(damping[None, :], t.size, axis=0),
            terminal_value_per_kwh,
        )

    def _scenarios(self, it_w: F64, it_hi_w: F64, from_forecast: NDArray[np.bool_]) -> tuple[F64 | None, str]:
        """[T, K] IT-load deviations from the median for the peak rows, and where they came from: the forecaster's
        band in the slots it covers (``from_forecast``), the last day's demand windows in the others."""
        # The forecaster's band, read as a normal spread: P90 - P50 is 1.28 sigma.
        sigma = np.maximum(it_hi_w - it_w, 0.0) / norm.ppf(0.9)
        banded = sigma[:, None] * norm.ppf(SCENARIO_LEVELS)[None, :]
        if len(self._it_windows) < SCENARIO_MIN_WINDOWS:
            if np.all(from_forecast):
                return banded, "forecast band"
            return None, "P90 headroom (too little history)"
        w = np.fromiter(self._it_windows, np.float64)
        eps = np.repeat(np.quantile(w - np.median(w), SCENARIO_LEVELS)[None, :], it_w.size, axis=0)
        source = f"last {w.size} demand windows"
        if np.any(from_forecast):
            eps[from_forecast] = banded[from_forecast]
            source = f"forecast band for {int(from_forecast.sum())} slots, then {source}"
        return eps, source

    def _damping_quantiles(self) -> F64 | None:
        """Quantiles of what the fast loop added to the plan over the last hour, or None with too few cycles."""
        r = self.residual_w[np.isfinite(self.residual_w)]
        if r.size < DAMPING_MIN_SHARE * self.residual_w.size:
            return None
        return np.asarray(np.quantile(r, DAMPING_LEVELS), dtype=np.float64)

    def _forecast_bands(self, t_s: float, t: F64, step_s: float) -> tuple[F64, F64] | None:
        """IT load per slot from the forecaster (P50, P90), or None (no source, no forecast, stale, not finite)."""
        if self.forecast_source is None:
            return None
        fc = self.forecast_source(t_s)
        if not fc or fc.get("stale") or not fc.get("t_s"):
            return None
        if float(fc["t_s"][-1]) < t_s:  # a forecast whose hour has passed says nothing about what comes
            return None
        res = planner_it_load(fc, t, step_s, self._facility_now_w, self._it_now_w)
        if res is None or not all(np.all(np.isfinite(x)) and np.all(x > 0) for x in res):
            return None
        self.it_source = f"forecast {fc.get('model', '')}".strip()
        p50 = np.asarray(res[0], np.float64)
        p90 = np.maximum(np.asarray(res[1], np.float64), p50)
        # Past the forecast's hour: NaN, for persistence to fill (the forecast's last minute held for a day would
        # plan the whole day on one minute's job events: texas, 7 days at 60 s, 17.28 MW of peak against 16.75).
        beyond = t >= float(fc["t_s"][-1])
        return np.where(beyond, np.nan, p50), np.where(beyond, np.nan, p90)
