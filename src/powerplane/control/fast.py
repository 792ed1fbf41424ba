"""The fast loop: small controllers in priority order, run every cycle (100 ms to 1 s) on the newest readings.

Each controller narrows the feasible interval of total battery power (a constraint a lower-priority controller
cannot override) or shapes the grid-power target; the plan follower supplies the slow target. In priority order:

1. limits guard   nameplate, SOC window, backup reserve, ramp rate, unit availability, export limit -> [lo, hi]
2. safe mode      stale or invalid readings: hold the last setpoint, then return the batteries to idle
3. backup         islanded: batteries carry the load (UPS role), compute is shed lowest class first
4. contract cap   grid power at most the contract, instantaneously and as the 15-minute average
5. demand resp.   grid power at most the committed level during an event
   peak target    (soft) the 15-minute average at most the plan's peak, within the batteries' limits, no shedding
6. damping        a ramp limiter on grid power: the grid follows the load as fast as the ramp limit allows, the
                  batteries take only what moves faster (not every swing: throughput is wear), and the limiter's
                  window drifts toward the low-passed load so that it centres on it instead of sticking
7. frequency      droop response with a deadband around nominal
8. plan follower  the planner's battery schedule for this slot (or its grid target), in the remaining headroom

Sign conventions: battery power positive when discharging; grid power positive when importing. The load the
batteries see is ``L = grid + battery`` (what the grid would carry without them).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from powerplane.physics.battery import BessParams

F64 = NDArray[np.float64]
RAMP_AIM = 0.9  # the limiter aims at this share of the ramp limit (frequency response and lags ride on top)
RAMP_WINDOW_S = 1.0  # the ramp limit is judged over windows of this length (the grid code's 1-s ramp)
RAMP_WINDOW_AIM = 0.95  # the share of the ramp limit the grid may move within any such window, jumps included


@dataclass
class Measurements:
    """What the fast loop reads each cycle (from the newest snapshot, or the simulated plant)."""

    t_s: float
    grid_w: float
    bess_w: F64  # per unit, actual
    soc: F64  # per unit
    frequency_hz: float
    islanded: bool = False
    hall_it_w: F64 | None = None
    reading_t_s: float | None = None  # when the readings were taken (staleness)
    valid: bool = True

    @property
    def load_w(self) -> float:
        return self.grid_w + float(self.bess_w.sum())


@dataclass
class FastSettings:
    contract_w: float
    contract_margin: float = 0.98
    contract_instant_factor: float = 1.1
    demand_window_s: float = 900.0
    poi_limit_w: float = np.inf
    export_limit_w: float = np.inf  # grid export allowed at the point of interconnection (0: none)
    ramp_limit_w_per_s: float = 1e6
    damping_tau_s: float = 15.0
    damping: bool = True
    damping_lowpass: bool = False  # True: the grid follows a low-passed target (every swing to the batteries)
    nominal_hz: float = 50.0
    deadband_hz: float = 0.02
    droop: float = 0.05
    frequency_share: float = 0.2
    backup_reserve: F64 | None = None  # per-unit SOC floor while the grid is up
    stale_after_s: float = 5.0
    safe_hold_s: float = 10.0
    busbar_w: F64 | None = None  # per hall
    unit_hall: NDArray[np.int64] | None = None


@dataclass
class Decision:
    """What the fast loop asks for this cycle, and why."""

    t_s: float
    mode: str  # normal | safe | backup
    bess_total_w: float
    bess_unit_w: F64
    grid_target_w: float
    shed_w: float  # compute power the batteries could not cover (to be capped or deferred), >= 0
    bounds_w: tuple[float, float]
    reasons: list[str] = field(default_factory=list)


class FastLoop:
    """The controllers with their state (filters, window energy, last command). One ``step`` per cycle."""

    def __init__(self, params: BessParams, settings: FastSettings) -> None:
        self.params = params
        self.s = settings
        u = params.n_units
        self.last_unit_w = np.zeros(u)
        self.available = np.ones(u, dtype=bool)
        self._grid_filtered: float | None = None
        self._grid_out: float | None = None
        # The grid as it ran over the last RAMP_WINDOW_S (time, W): the limiter keeps any window of that length
        # within the ramp limit, counting the jumps the batteries could not take (their own ramp or power limit).
        self._grid_hist: deque[tuple[float, float]] = deque()
        self._window_id = -1
        self._window_energy_j = 0.0
        self._last_t: float | None = None
        self._last_load_w: float | None = None
        self._load_smooth_w: float | None = None  # the load low-passed at damping_tau_s (the 15-min rows' view)
        self._stale_since: float | None = None
        self.plan_grid_w: float | None = None  # set by the plan follower's source each slot
        self.plan_bess_w: float | None = None
        self.peak_target_w: float | None = None  # the plan's 15-min peak: a soft cap on the window's average
        self.dr_limit_w: float | None = None  # set while a demand-response event is active

    # ------------------------------------------------------------------------------- 1. limits guard

    def unit_bounds(self, m: Measurements, dt_s: float) -> tuple[F64, F64]:
        """Per-unit feasible power [lo, hi] this cycle (negative: charge). Plain floats per unit: a site has a
        handful of units and this runs every cycle."""
        reserve = None if m.islanded or self.s.backup_reserve is None else self.s.backup_reserve.tolist()
        soc = np.asarray(m.soc, dtype=np.float64).tolist()
        last = self.last_unit_w.tolist()
        avail = self.available.tolist()
        horizon = max(dt_s, 1.0)  # keep a second of energy margin at the window edges
        lo_out, hi_out = [], []
        for u, (pmax, _tau, ramp, e, eta_c, eta_d, smin, smax) in enumerate(self.params.per_unit):
            floor = max(smin, reserve[u]) if reserve is not None else smin
            hi = min(pmax, max(soc[u] - floor, 0.0) * e * eta_d / horizon, last[u] + ramp * dt_s)
            lo = max(-min(pmax, max(smax - soc[u], 0.0) * e / (eta_c * horizon)), last[u] - ramp * dt_s)
            lo = min(lo, hi)
            if not avail[u]:
                lo = hi = 0.0
            lo_out.append(lo)
            hi_out.append(hi)
        return np.array(lo_out), np.array(hi_out)

    # ------------------------------------------------------------------------------- the cycle

    def step(self, m: Measurements, dt_s: float) -> Decision:
        s = self.s
        reasons: list[str] = []
        unit_lo, unit_hi = self.unit_bounds(m, dt_s)
        lo, hi = float(unit_lo.sum()), float(unit_hi.sum())
        load = m.load_w
        # 2. Safe mode on stale or invalid readings: hold, then go idle.
        age = m.t_s - (m.reading_t_s if m.reading_t_s is not None else m.t_s)
        if not m.valid or age > s.stale_after_s or not np.isfinite(load):
            if self._stale_since is None:
                self._stale_since = m.t_s
            held = m.t_s - self._stale_since
            target = float(self.last_unit_w.sum()) if held <= s.safe_hold_s else 0.0
            reasons.append(
                f"safe mode: readings {'invalid' if not m.valid else f'{age:.1f} s old'}; "
                f"{'hold' if held <= s.safe_hold_s else 'return to idle'}"
            )
            return self._finish(m, "safe", target, lo, hi, unit_lo, unit_hi, float("nan"), 0.0, reasons)
        self._stale_since = None
        # 3. Backup: islanded, the batteries carry what they can.
        if m.islanded:
            target = min(max(load, lo), hi)
            shed = max(load - hi, 0.0)
            reasons.append(f"backup: grid lost, batteries carry {target / 1e6:.2f} MW")
            self._grid_filtered = None
            self._grid_out = None
            self._grid_hist.clear()
            return self._finish(m, "backup", target, lo, hi, unit_lo, unit_hi, 0.0, shed, reasons, dt_s)
        # Export limit: discharge beyond the load would push power out through the point of interconnection (or
        # curtail the site's own renewables when export is not allowed): the batteries stop at it.
        if load + s.export_limit_w < hi:
            hi = max(load + s.export_limit_w, lo)
            reasons.append("export limit")
        # 4. Contract cap: instantaneous and what the rest of the 15-minute window allows.
        limit = min(s.contract_w * s.contract_instant_factor, s.poi_limit_w)
        window = int(m.t_s // s.demand_window_s)
        if window != self._window_id:
            self._window_id, self._window_energy_j = window, 0.0
        elapsed = m.t_s - window * s.demand_window_s
        remaining = max(s.demand_window_s - elapsed, dt_s)
        avg_room = (s.contract_w * s.contract_margin * s.demand_window_s - self._window_energy_j) / remaining
        grid_max = min(limit, avg_room) if elapsed > 0 else limit
        # The window's average room binds the load's mean over the rest of the window, not each second of a
        # training job's swing around it: it is held on the low-passed load (the swing is the damping's), the
        # instantaneous limit on the load itself. (Held per second, a battery at its SOC floor shed compute for
        # swings whose window average was well within the contract.)
        a = _lowpass_factor(dt_s, s.damping_tau_s)
        smooth = load if self._load_smooth_w is None else a * self._load_smooth_w + (1.0 - a) * load
        self._load_smooth_w = smooth
        # (min(smooth, load): at a swing's top the mean excess must go to the batteries, at its trough they may
        # charge as far as the second allows: held on the smoothed load there it would stop the damping charging.)
        need_lo = max(min(smooth, load) - grid_max, load - limit) if elapsed > 0 else load - limit
        # 5. Demand response.
        if self.dr_limit_w is not None:
            grid_max = min(grid_max, self.dr_limit_w)
            need_lo = max(need_lo, load - self.dr_limit_w)
        shed = 0.0
        if need_lo > lo:
            if need_lo > hi:
                shed = need_lo - hi
                reasons.append(f"contract/DR: {shed / 1e6:.2f} MW beyond the batteries, shed compute")
            lo = min(need_lo, hi)
        # 8. Plan follower (slow target) -> peak target -> 6. damping -> 7. frequency response.
        desired_grid = self._planned_grid(load)
        if self.peak_target_w is not None:
            # The plan's peak, as the rest of this window allows it (soft, within the batteries' limits): the grid
            # target comes down by the mean excess of the low-passed load over it, so that the damping still
            # carries the swing around the lowered mean (forcing each second under it would clip the swing's tops
            # and hand the grid its troughs, a ramp per swing).
            peak_room = (self.peak_target_w * s.demand_window_s - self._window_energy_j) / remaining
            excess = self._planned_grid(smooth) - min(peak_room, grid_max)
            if excess > 0:
                desired_grid -= excess
                reasons.append("peak target")
        if s.damping:
            if self._grid_out is not None and self._last_load_w is not None:
                # The grid as it really ran last cycle (the batteries' actual power, after their response lag).
                self._grid_out = self._last_load_w - float(np.sum(m.bess_w))
                if self._grid_hist:
                    self._grid_hist[-1] = (self._grid_hist[-1][0], self._grid_out)
            desired_grid = self._damp(desired_grid, dt_s, a, m.t_s)
        target = load - desired_grid
        df = m.frequency_hz - s.nominal_hz
        if abs(df) > s.deadband_hz:
            response = -(df - np.sign(df) * s.deadband_hz) / (s.nominal_hz * s.droop)
            target += float(np.clip(response, -1.0, 1.0)) * s.frequency_share * float(self.params.power_max_w.sum())
            reasons.append(f"frequency {m.frequency_hz:.3f} Hz: droop response")
        return self._finish(m, "normal", target, lo, hi, unit_lo, unit_hi, desired_grid, shed, reasons, dt_s)

    def _planned_grid(self, load_w: float) -> float:
        """The grid the plan asks for on this load: its grid target, else the load less its battery schedule."""
        if self.plan_grid_w is not None:
            return self.plan_grid_w
        return load_w - (self.plan_bess_w if self.plan_bess_w is not None else 0.0)

    def _damp(self, desired_grid: float, dt_s: float, a: float, t_s: float) -> float:
        """Ramp-limit the grid target: the grid takes ``desired_grid`` whenever that is within the ramp limit of
        the last grid power, else the nearest power that is. A plain limiter can sit off-centre under a fast
        symmetric swing (it moves up and down by the same step), so its window also drifts toward the
        low-passed target (time constant ``damping_tau_s``) by a share of that gap each cycle, within the ramp.
        With ``damping_lowpass`` the grid follows the low-passed target itself (every swing to the batteries).
        ``a`` is the low-pass's per-cycle factor exp(-dt / damping_tau_s), the same as the load's smoothing.

        Steps shorter than the ramp's window (``RAMP_WINDOW_S``) also keep the grid within the limit of every
        power it ran at over the last window (``t_s`` is this cycle's time): a jump the batteries could not take
        (a training swing's edge beyond their own ramp) would otherwise add to the limiter's full-rate steps
        within the same second."""
        s = self.s
        if self._grid_filtered is None or self._grid_out is None:
            self._grid_filtered = desired_grid
            self._grid_out = desired_grid
            self._remember(t_s, desired_grid, dt_s)
            return desired_grid
        self._grid_filtered = a * self._grid_filtered + (1.0 - a) * desired_grid
        step = s.ramp_limit_w_per_s * RAMP_AIM * dt_s
        last = self._grid_out
        if s.damping_lowpass:
            lo, hi = last - step, last + step
            want = self._grid_filtered
        else:
            centre = last + (1.0 - a) * (self._grid_filtered - last)
            lo, hi = max(centre, last) - step, min(centre, last) + step
            want = desired_grid
        if self._grid_hist and dt_s < RAMP_WINDOW_S:
            band_w = s.ramp_limit_w_per_s * RAMP_WINDOW_AIM * RAMP_WINDOW_S
            past = [g for _, g in self._grid_hist]
            w_lo, w_hi = max(past) - band_w, min(past) + band_w
            if w_lo > w_hi:  # the window already spans more than twice the band: its middle is the least breach
                w_lo = w_hi = 0.5 * (w_lo + w_hi)
            # The window's limits within the step's reach (the step's nearest end where they do not meet it).
            lo, hi = min(max(lo, w_lo), hi), max(min(hi, w_hi), lo)
        self._grid_out = float(min(max(want, lo), hi))
        self._remember(t_s, self._grid_out, dt_s)
        return self._grid_out

    def _remember(self, t_s: float, grid_w: float, dt_s: float) -> None:
        """Keep this cycle's grid power in the ramp window's history (``step`` puts the grid as it really ran in
        its place next cycle); entries a window old or more are dropped."""
        if dt_s >= RAMP_WINDOW_S:
            return
        hist = self._grid_hist
        hist.append((t_s, grid_w))
        while hist and hist[0][0] <= t_s - RAMP_WINDOW_S + 0.5 * dt_s:  # the next cycle's window starts a dt later
            hist.popleft()

    def _finish(
        self,
        m: Measurements,
        mode: str,
        target: float,
        lo: float,
        hi: float,
        unit_lo: F64,
        unit_hi: F64,
        grid_target: float,
        shed: float,
        reasons: list[str],
        dt_s: float = 1.0,
    ) -> Decision:
        total = float(np.clip(target, lo, hi)) if lo <= hi else hi
        if total != target and mode == "normal":
            reasons.append(f"limits: {target / 1e6:.2f} MW clipped to [{lo / 1e6:.2f}, {hi / 1e6:.2f}] MW")
        unit = allocate(total, unit_lo, unit_hi, m.soc, self.params, m.hall_it_w, self.s.busbar_w, self.s.unit_hall)
        self.last_unit_w = unit
        command = unit if mode == "safe" else self._lead(unit, np.asarray(m.bess_w, dtype=np.float64), dt_s)
        # The window's energy uses the grid power this decision implies.
        if self._last_t is not None:
            self._window_energy_j += max(m.load_w - float(unit.sum()), 0.0) * max(m.t_s - self._last_t, 0.0)
        self._last_t = m.t_s
        self._last_load_w = m.load_w  # the next cycle's damping takes the grid as it ran from it (and bess_w)
        return Decision(m.t_s, mode, float(unit.sum()), command, grid_target, shed, (lo, hi), reasons)

    def _lead(self, unit_w: F64, actual_w: F64, dt_s: float) -> F64:
        """The setpoints that bring the units to ``unit_w`` within this cycle through their first-order response
        (``response_time_s``): a 50 ms lag leaves 14 % of a change undone after a 100 ms cycle, which would put
        the batteries' share of a training swing on the grid. Within nameplate; unchanged at steps >> the lag."""
        tau = self.params.response_time_s
        alpha = np.where(tau > 0, -np.expm1(-dt_s / np.maximum(tau, 1e-12)), 1.0)
        if actual_w.shape != unit_w.shape or np.all(alpha > 1.0 - 1e-6):
            return unit_w
        pmax = self.params.power_max_w
        return np.asarray(np.clip(actual_w + (unit_w - actual_w) / alpha, -pmax, pmax), dtype=np.float64)


def _lowpass_factor(dt_s: float, tau_s: float) -> float:
    """A first-order low-pass's per-cycle factor exp(-dt / tau) (0 for tau 0: no memory)."""
    return float(np.exp(-dt_s / max(tau_s, 1e-9)))


def ramp_limited(grid_w: F64, params: BessParams, settings: FastSettings, dt_s: float) -> F64:
    """The grid power the damping (the ramp limiter of :meth:`FastLoop._damp`) lets through for a series of load
    ``grid_w`` (what the grid would carry with the batteries idle), with ideal batteries: ``grid_w`` minus it is
    what the batteries take for damping alone. One Python step per sample (the limiter is sequential)."""
    loop = FastLoop(params, settings)
    out = np.empty(grid_w.size)
    damp = loop._damp
    a = _lowpass_factor(dt_s, settings.damping_tau_s)
    for i, x in enumerate(np.asarray(grid_w, dtype=np.float64).tolist()):
        out[i] = damp(x, dt_s, a, i * dt_s)
    return out


def allocate(
    total_w: float,
    unit_lo: F64,
    unit_hi: F64,
    soc: F64,
    params: BessParams,
    hall_it_w: F64 | None = None,
    busbar_w: F64 | None = None,
    unit_hall: NDArray[np.int64] | None = None,
) -> F64:
    """Share a total battery power across units by headroom: discharge by available energy and power above the
    floor, charge by room below the ceiling. Hall busbars bound charging (it adds to the hall's load) and make a
    battery in an overloaded hall discharge first; a battery may buffer another hall's load through the site bus.

    >>> p = BessParams.from_config([])
    >>> allocate(0.0, np.zeros(0), np.zeros(0), np.zeros(0), p).shape
    (0,)
    """
    lo = unit_lo.copy()
    hi = unit_hi.copy()
    if hall_it_w is not None and busbar_w is not None and unit_hall is not None and lo.size:
        headroom = busbar_w[unit_hall] - hall_it_w[unit_hall]
        lo = np.maximum(lo, np.minimum(-headroom, hi))  # charging within the busbar; discharge if overloaded
    n = lo.size
    if n == 0:
        return np.zeros(0)
    lo_l, hi_l = lo.tolist(), hi.tolist()
    total = min(max(float(total_w), sum(lo_l)), sum(hi_l))
    base = [min(max(0.0, a), b) for a, b in zip(lo_l, hi_l, strict=True)]  # forced discharge/charge, else idle
    rest = total - sum(base)
    if abs(rest) < 1e-9:
        return np.array(base)
    soc_l = np.asarray(soc, dtype=np.float64).tolist()
    energy = params.energy_j.tolist()
    if rest > 0:  # more discharge: by available energy and power
        room = [h - b for h, b in zip(hi_l, base, strict=True)]
        fill = params.soc_min.tolist()
        weight = [r * (max(s - f, 0.0) * e + 1.0) for r, s, f, e in zip(room, soc_l, fill, energy, strict=True)]
    else:  # more charge: by room below the ceiling
        room = [b - lo_ for b, lo_ in zip(base, lo_l, strict=True)]
        ceil = params.soc_max.tolist()
        weight = [r * (max(c - s, 0.0) * e + 1.0) for r, s, c, e in zip(room, soc_l, ceil, energy, strict=True)]
    want = abs(rest)
    give = [0.0] * n
    for _ in range(n):  # water-filling: units that hit their limit pass the rest on
        free = [room[u] - give[u] > 1e-9 for u in range(n)]
        left = want - sum(give)
        if left <= 1e-6 or not any(free):
            break
        w = [weight[u] if free[u] else 0.0 for u in range(n)]
        if sum(w) <= 0:
            w = [1.0 if f else 0.0 for f in free]
        w_sum = sum(w)
        give = [min(give[u] + w[u] / w_sum * left, room[u]) for u in range(n)]
    sign = 1.0 if rest > 0 else -1.0
    return np.array([base[u] + sign * give[u] for u in range(n)])
