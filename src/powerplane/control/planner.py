"""The dispatch planner: a linear program over a rolling horizon, solved with HiGHS.

Per step t (length ``dt_h``) and battery unit u, in MW / MWh:

    minimise  sum_t price_t g_t dt - export_price x_t dt                          energy bill
              + demand_rate * (P - P_sofar)                                      demand charge on the new peak
              + over_rate * O                                                    contract billing (e.g. 105 % rule)
              + deg_cost * sum_tu (c_tu + d_tu) dt                               battery wear (throughput)
              + curtail_cost * r_t dt + shed_cost_t * s_t dt + dr_penalty * z_t dt
              - dr_credit * q_t dt                                               demand-response revenue
              - terminal_value * sum_u (e_T-1,u - e0_u)                           energy left (instead of e_final)
    s.t.      g_t - x_t + sum_u (d_tu - c_tu) + s_t - r_t = L_t - R_t            site balance
              e_tu = e_t-1,u + (eta_c c_tu - d_tu / eta_d) dt                    state of charge
              E_min_u <= e_tu <= E_max_u,  e_T-1,u >= e_final_u                  SOC window, reserve, terminal
              P >= mean of (g + h) over each demand window,  P >= P_sofar        peak demand (h: headroom)
              O >= P - threshold * contract                                      contract overrun
              hall_load_th + sum_{u in h} (c_tu - d_tu) <= busbar_h              hall busbars
              g_t - z_t <= dr_limit_t                                            demand-response commitments
              g_t + q_t <= dr_baseline_t,  0 <= q_t                              energy below the DR baseline
              g_t + h_t - y_t <= grid_cap                                        contract, with headroom (soft)
    or, with load scenarios eps_tk (probability p_k) instead of the headroom h:
              P >= mean of (g + eps_k - v_k) over each demand window, for each k  the peak in every scenario
              sum_u (d_tu - c_tu) + v_tk <= sum_u Pmax_u,  0 <= v_tk <= max(eps_tk, 0) recourse discharge
              e_tu -= share_u sum_k p_k v_tk dt / eta_d (expected use), worst case within the SOC window
              + sum_tk p_k (deg_cost - price_t) v_tk dt                          recourse paid when it happens
    and with the damping's power delta_tj around the plan, wear on max(|sum_u (d_tu - c_tu)|, E_j |delta_tj|).
              0 <= s_t <= shed_max_t                                             compute lever (GPU caps, deferral)

The balance rows' duals come back as the plan's marginal cost of load per step (``Plan.marginal_per_kwh``): what
one more kWh there costs, the price plus the demand charge where the plan holds its peak, as the batteries move
it. The scheduler defers flexible jobs to the cheap steps of that, not of the tariff.

Built from arrays in small ``_define_*`` steps (PyPSA/linopy style); no solver state is kept on the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import highspy
import numpy as np
from numpy.typing import NDArray
from scipy import sparse

F64 = NDArray[np.float64]
INF = highspy.kHighsInf


@dataclass(frozen=True)
class PlanInputs:
    """Everything the LP needs, in SI units (W, J, s) at the edges; converted to MW/MWh inside."""

    t_s: F64  # start of each step [s]
    dt_s: float
    load_w: F64  # facility load forecast without batteries [W]
    renewable_w: F64  # renewable available [W]
    price_per_kwh: F64
    hall_load_w: F64  # [T, H] IT load per hall (for busbars)
    busbar_w: F64  # [H]
    unit_hall: NDArray[np.int64]  # [U]
    power_max_w: F64  # [U]
    energy_j: F64  # [U]
    soc0: F64  # [U]
    soc_min: F64  # [U] (including the backup reserve)
    soc_max: F64  # [U]
    eta_charge: F64
    eta_discharge: F64
    soc_final: F64 | None = None  # [U] terminal SOC floor; default soc0
    export_price_per_kwh: float = 0.0
    export_limit_w: float = 0.0
    import_limit_w: float = np.inf
    demand_rate_per_kw: float = 0.0  # money per kW of new peak over the horizon's billing period
    demand_window_s: float = 900.0
    peak_so_far_w: float = 0.0
    contract_w: float | None = None
    contract_threshold: float = 1.05
    contract_over_rate_per_kw: float = 0.0
    degradation_cost_per_kwh: float = 0.0
    curtail_cost_per_kwh: float = 0.0
    shed_max_w: F64 | None = None  # [T] reducible compute load
    shed_cost_per_kwh: float = 1.0  # value of the throughput lost by capping/deferring
    dr_limit_w: F64 | None = None  # [T] grid import ceiling during demand-response events (inf elsewhere)
    dr_penalty_per_kwh: float = 10.0
    dr_baseline_w: F64 | None = None  # [T] the event's baseline (nan outside events): energy below it is credited
    dr_credit_per_kwh: float = 0.0  # demand-response revenue per kWh delivered below the baseline
    # Value of the energy left in the batteries at the end (money per kWh, e.g. the run's mean price, as the
    # bill's storage adjustment); when set it replaces the terminal SOC floor ``soc_final``.
    terminal_value_per_kwh: float | None = None
    grid_cap_w: float | None = None  # contracted demand the plan must not exceed (soft, at cap_penalty_per_kwh)
    cap_penalty_per_kwh: float = 10.0
    # [T] load above ``load_w`` to keep room for in the peak and the contract rows (e.g. forecast P90 - P50, with
    # ``load_w`` the P50: energy is planned on the median, demand on the upper band)
    peak_headroom_w: F64 | None = None
    # [T, K] facility load deviations from ``load_w`` in K scenarios per step, with probabilities
    # ``peak_scenario_p`` [K]: the peak and contract rows hold in every scenario, the batteries covering a
    # scenario's excess by recourse discharge that is paid for (energy, wear) only with the scenario's probability.
    # Replaces ``peak_headroom_w`` (which keeps the upper band's room in every step, as if it were certain).
    peak_scenarios_w: F64 | None = None
    peak_scenario_p: F64 | None = None
    # [T, J] battery power the fast loop's damping adds around the plan in each step (J equally likely values, e.g.
    # quantiles of the ramp limiter's residual): wear is then priced on max(|plan|, E|damping|) per step: the
    # damping's own throughput when the plan idles, none extra when the plan moves more than the swing.
    damping_w: F64 | None = None


@dataclass
class Plan:
    """A solved schedule. Battery power positive when discharging; all in W."""

    t_s: F64
    dt_s: float
    bess_w: F64  # [T, U]
    grid_w: F64  # [T]
    soc: F64  # [T, U] at the end of each step
    shed_w: F64  # [T]
    curtail_w: F64  # [T]
    peak_w: float
    objective: float
    status: str
    solve_s: float
    info: dict[str, float] = field(default_factory=dict)
    marginal_per_kwh: F64 | None = None  # [T] money/kWh: the balance rows' duals (None: the solver gave none)

    def bess_total_w(self, t_s: float) -> float:
        """Planned total battery power at time ``t_s`` (0 outside the plan)."""
        k = int((t_s - self.t_s[0]) // self.dt_s)
        if 0 <= k < self.t_s.size:
            return float(self.bess_w[k].sum())
        return 0.0

    def unit_w(self, t_s: float) -> F64:
        k = int((t_s - self.t_s[0]) // self.dt_s)
        if 0 <= k < self.t_s.size:
            return np.asarray(self.bess_w[k])
        return np.zeros(self.bess_w.shape[1])


_BANNER_SHOWN = False


def _new_highs() -> highspy.Highs:
    """A HiGHS instance; the first one of the process prints a banner on C stdout, which would corrupt JSON
    output of our commands, so it is built with fd 1 pointed at /dev/null."""
    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        return highspy.Highs()
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
        _BANNER_SHOWN = True
    return h


class PlanError(RuntimeError):
    """The LP could not be solved (infeasible, unbounded or a solver error)."""


class _Lp:
    """Columns and rows of a sparse LP being assembled."""

    def __init__(self) -> None:
        self.cost: list[F64] = []
        self.lo: list[F64] = []
        self.hi: list[F64] = []
        self.n_col = 0
        self.rows_lo: list[F64] = []
        self.rows_hi: list[F64] = []
        self.n_row = 0
        self.r: list[NDArray[np.int64]] = []
        self.c: list[NDArray[np.int64]] = []
        self.v: list[F64] = []

    def var(self, n: int, lo: F64 | float, hi: F64 | float, cost: F64 | float = 0.0) -> NDArray[np.int64]:
        idx = np.arange(self.n_col, self.n_col + n, dtype=np.int64)
        self.n_col += n
        self.lo.append(np.broadcast_to(np.asarray(lo, float), (n,)).copy())
        self.hi.append(np.broadcast_to(np.asarray(hi, float), (n,)).copy())
        self.cost.append(np.broadcast_to(np.asarray(cost, float), (n,)).copy())
        return idx

    def rows(self, n: int, lo: F64 | float, hi: F64 | float) -> NDArray[np.int64]:
        idx = np.arange(self.n_row, self.n_row + n, dtype=np.int64)
        self.n_row += n
        self.rows_lo.append(np.broadcast_to(np.asarray(lo, float), (n,)).copy())
        self.rows_hi.append(np.broadcast_to(np.asarray(hi, float), (n,)).copy())
        return idx

    def coef(self, rows: NDArray[np.int64], cols: NDArray[np.int64], vals: F64 | float) -> None:
        rows, cols = np.broadcast_arrays(rows, cols)
        self.r.append(rows.ravel())
        self.c.append(cols.ravel())
        self.v.append(np.broadcast_to(np.asarray(vals, float), rows.shape).ravel().copy())

    def solve(self, time_limit_s: float = 10.0) -> tuple[str, F64, float, F64]:
        """Status, column values, objective and row duals (the objective's change per unit of a row's bound)."""
        a = sparse.csc_matrix(
            (np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))), shape=(self.n_row, self.n_col)
        )
        lp = highspy.HighsLp()
        lp.num_col_ = self.n_col
        lp.num_row_ = self.n_row
        lp.col_cost_ = np.concatenate(self.cost)
        lp.col_lower_ = np.concatenate(self.lo)
        lp.col_upper_ = np.where(np.isinf(np.concatenate(self.hi)), INF, np.concatenate(self.hi))
        lp.row_lower_ = np.where(np.isinf(np.concatenate(self.rows_lo)), -INF, np.concatenate(self.rows_lo))
        lp.row_upper_ = np.where(np.isinf(np.concatenate(self.rows_hi)), INF, np.concatenate(self.rows_hi))
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = a.indptr
        lp.a_matrix_.index_ = a.indices
        lp.a_matrix_.value_ = a.data
        lp.a_matrix_.num_col_ = self.n_col
        lp.a_matrix_.num_row_ = self.n_row
        h = _new_highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", float(time_limit_s))
        h.passModel(lp)
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        sol = np.asarray(h.getSolution().col_value, dtype=np.float64)
        obj = float(h.getInfo().objective_function_value)
        duals = np.asarray(h.getSolution().row_dual, dtype=np.float64)
        return status, sol, obj, duals


def check_inputs(p: PlanInputs) -> None:
    """Validate shapes and values before a solve (PyPSA's check_* habit)."""
    t = p.t_s.size
    u = p.power_max_w.size
    for name in ("load_w", "renewable_w", "price_per_kwh"):
        arr = getattr(p, name)
        if arr.shape != (t,):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({t},)")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} holds NaN or infinite values")
    h = p.peak_headroom_w
    if h is not None and (h.shape != (t,) or not np.all(np.isfinite(h))):
        raise ValueError(f"peak_headroom_w must be {t} finite values")
    sc, sp = p.peak_scenarios_w, p.peak_scenario_p
    if (sc is None) != (sp is None):
        raise ValueError("peak_scenarios_w and peak_scenario_p go together")
    if sc is not None and sp is not None:
        if sc.ndim != 2 or sc.shape[0] != t or sp.shape != (sc.shape[1],) or not np.all(np.isfinite(sc)):
            raise ValueError(f"peak_scenarios_w must be ({t}, K) finite values with K probabilities")
        if np.any(sp < 0) or abs(float(sp.sum()) - 1.0) > 1e-6:
            raise ValueError("peak_scenario_p must be probabilities that sum to 1")
    dw = p.damping_w
    if dw is not None and (dw.ndim != 2 or dw.shape[0] != t or dw.shape[1] < 1 or not np.all(np.isfinite(dw))):
        raise ValueError(f"damping_w must be ({t}, J) finite values")
    if p.hall_load_w.shape != (t, p.busbar_w.size):
        raise ValueError(f"hall_load_w has shape {p.hall_load_w.shape}, expected ({t}, {p.busbar_w.size})")
    for name in ("energy_j", "soc0", "soc_min", "soc_max", "eta_charge", "eta_discharge", "unit_hall"):
        if getattr(p, name).shape != (u,):
            raise ValueError(f"{name} must have one entry per battery unit ({u})")
    if np.any(p.soc_min > p.soc_max):
        raise ValueError("soc_min above soc_max")
    if not p.dt_s > 0:
        raise ValueError("dt_s must be positive")


def solve_plan(p: PlanInputs, time_limit_s: float = 10.0) -> Plan:
    """Build and solve the dispatch LP. Raises PlanError when HiGHS finds no optimal plan."""
    import time

    check_inputs(p)
    start = time.perf_counter()
    t_n, u_n = p.t_s.size, p.power_max_w.size
    dt_h = p.dt_s / 3600.0
    mw = 1e-6
    lp = _Lp()
    kwh = 1000.0 * dt_h  # kWh per MW held for one step
    # Columns.
    g = lp.var(t_n, 0.0, min(p.import_limit_w, 1e15) * mw, p.price_per_kwh * kwh)
    x = lp.var(t_n, 0.0, p.export_limit_w * mw, -p.export_price_per_kwh * kwh)
    pmax = np.repeat(p.power_max_w[None, :] * mw, t_n, axis=0).ravel()
    unit_wear = p.degradation_cost_per_kwh * kwh if p.damping_w is None else 0.0
    c = lp.var(t_n * u_n, 0.0, pmax, unit_wear).reshape(t_n, u_n)
    d = lp.var(t_n * u_n, 0.0, pmax, unit_wear).reshape(t_n, u_n)
    net = _define_net(lp, c, d) if p.damping_w is not None or p.peak_scenarios_w is not None else None
    if p.damping_w is not None and net is not None:
        _define_damped_wear(lp, p, net, kwh)
    e_cap = p.energy_j / 3.6e9  # MWh
    e_lo = np.repeat((p.soc_min * e_cap)[None, :], t_n, axis=0)
    e_hi = np.repeat((p.soc_max * e_cap)[None, :], t_n, axis=0)
    e_cost = np.zeros((t_n, u_n))
    if p.terminal_value_per_kwh is None:
        final = p.soc0 if p.soc_final is None else p.soc_final
        e_lo[-1] = np.maximum(e_lo[-1], np.minimum(final, p.soc_max) * e_cap)
    else:
        e_cost[-1] = -p.terminal_value_per_kwh * 1000.0  # per MWh left at the end (the constant e0 term is dropped)
    e = lp.var(t_n * u_n, e_lo.ravel(), e_hi.ravel(), e_cost.ravel()).reshape(t_n, u_n)
    r = lp.var(t_n, 0.0, p.renewable_w * mw, p.curtail_cost_per_kwh * kwh)
    shed_hi = np.zeros(t_n) if p.shed_max_w is None else p.shed_max_w * mw
    s = lp.var(t_n, 0.0, shed_hi, p.shed_cost_per_kwh * kwh)
    peak = lp.var(1, p.peak_so_far_w * mw, INF, p.demand_rate_per_kw * 1000.0)
    # Balance: g - x + sum d - sum c + s - r = L - R.
    balance = lp.rows(t_n, (p.load_w - p.renewable_w) * mw, (p.load_w - p.renewable_w) * mw)
    lp.coef(balance, g, 1.0)
    lp.coef(balance, x, -1.0)
    lp.coef(balance[:, None], d, 1.0)
    lp.coef(balance[:, None], c, -1.0)
    lp.coef(balance, s, 1.0)
    lp.coef(balance, r, -1.0)
    soc_rows = _define_soc(lp, p, c, d, e, e_cap, dt_h)
    scen = p.peak_scenarios_w is not None and p.peak_scenario_p is not None
    v, v_top = (
        _define_recourse(lp, p, g, net, e, peak, soc_rows, e_cap, dt_h) if scen and net is not None else (None, None)
    )
    if not scen:
        _define_peak(lp, p, g, peak, t_n)
    if p.contract_w is not None and p.contract_over_rate_per_kw > 0:
        over = lp.var(1, 0.0, INF, p.contract_over_rate_per_kw * 1000.0)
        row = lp.rows(1, -INF, p.contract_threshold * p.contract_w * mw)
        lp.coef(row, peak, 1.0)
        lp.coef(row, over, -1.0)
    _define_busbars(lp, p, c, d, t_n)
    headroom = np.zeros(t_n) if p.peak_headroom_w is None else p.peak_headroom_w
    if p.grid_cap_w is not None and np.isfinite(p.grid_cap_w):
        over = lp.var(t_n, 0.0, INF, p.cap_penalty_per_kwh * kwh)
        if v_top is not None and p.peak_scenarios_w is not None:  # the highest scenario, with its recourse
            rows = lp.rows(t_n, -INF, (p.grid_cap_w - p.peak_scenarios_w.max(axis=1)) * mw)
            lp.coef(rows[v_top >= 0], v_top[v_top >= 0], -1.0)
        else:
            rows = lp.rows(t_n, -INF, (p.grid_cap_w - headroom) * mw)
        lp.coef(rows, g, 1.0)
        lp.coef(rows, over, -1.0)
    if p.dr_limit_w is not None:
        finite = np.flatnonzero(np.isfinite(p.dr_limit_w))
        if finite.size:
            z = lp.var(finite.size, 0.0, INF, p.dr_penalty_per_kwh * kwh)
            rows = lp.rows(finite.size, -INF, p.dr_limit_w[finite] * mw)
            lp.coef(rows, g[finite], 1.0)
            lp.coef(rows, z, -1.0)
    q = _define_dr_credit(lp, p, g, kwh)
    status, sol, obj, duals = lp.solve(time_limit_s)
    if status != "Optimal":
        raise PlanError(f"planner LP not solved: {status}")
    if p.terminal_value_per_kwh is not None:
        obj += p.terminal_value_per_kwh * 1000.0 * float((p.soc0 * e_cap).sum())  # back to value of the change
    return Plan(
        t_s=p.t_s,
        dt_s=p.dt_s,
        bess_w=(sol[d] - sol[c]) / mw,
        grid_w=(sol[g] - sol[x]) / mw,
        soc=sol[e] / e_cap,
        shed_w=sol[s] / mw,
        curtail_w=sol[r] / mw,
        peak_w=float(sol[peak][0] / mw),
        objective=obj,
        # The balance rows' duals: what one more kWh of load in a slot costs the plan (its price, plus the demand
        # charge where the plan holds its peak, less what the batteries can move), money per kWh.
        marginal_per_kwh=duals[balance] / kwh if duals.size == lp.n_row else None,
        status=status,
        solve_s=time.perf_counter() - start,
        info={
            "columns": float(lp.n_col),
            "rows": float(lp.n_row),
            "dr_credited_kwh": float(sol[q].sum() * kwh) if q.size else 0.0,
            "recourse_expected_kwh": _expected_recourse_kwh(sol, v, p.peak_scenario_p, kwh),
        },
    )


def _expected_recourse_kwh(sol: F64, v: NDArray[np.int64] | None, prob: F64 | None, kwh: float) -> float:
    if v is None or prob is None:
        return 0.0
    return float((np.where(v >= 0, sol[np.maximum(v, 0)], 0.0) @ prob).sum() * kwh)


def _define_dr_credit(lp: _Lp, p: PlanInputs, g: NDArray[np.int64], kwh: float) -> NDArray[np.int64]:
    """q_t <= baseline_t - g_t during events, credited at ``dr_credit_per_kwh`` (q_t >= 0)."""
    if p.dr_baseline_w is None or p.dr_credit_per_kwh <= 0:
        return np.zeros(0, dtype=np.int64)
    inside = np.flatnonzero(np.isfinite(p.dr_baseline_w))
    if inside.size == 0:
        return np.zeros(0, dtype=np.int64)
    base_mw = np.maximum(p.dr_baseline_w[inside], 0.0) * 1e-6
    q = lp.var(inside.size, 0.0, base_mw, -p.dr_credit_per_kwh * kwh)
    rows = lp.rows(inside.size, -INF, base_mw)
    lp.coef(rows, g[inside], 1.0)
    lp.coef(rows, q, 1.0)
    return q


def _define_soc(
    lp: _Lp, p: PlanInputs, c: NDArray[np.int64], d: NDArray[np.int64], e: NDArray[np.int64], e_cap: F64, dt_h: float
) -> NDArray[np.int64]:
    """e_t - e_{t-1} - eta_c c_t dt + d_t / eta_d dt = 0; e_{-1} = soc0 E. Returns the rows [T, U]."""
    t_n, u_n = c.shape
    rhs = np.zeros((t_n, u_n))
    rhs[0] = p.soc0 * e_cap
    rows = lp.rows(t_n * u_n, rhs.ravel(), rhs.ravel()).reshape(t_n, u_n)
    lp.coef(rows, e, 1.0)
    lp.coef(rows[1:], e[:-1], -1.0)
    lp.coef(rows, c, -p.eta_charge[None, :] * dt_h)
    lp.coef(rows, d, 1.0 / p.eta_discharge[None, :] * dt_h)
    return rows


def _define_recourse(
    lp: _Lp,
    p: PlanInputs,
    g: NDArray[np.int64],
    net: NDArray[np.int64],
    e: NDArray[np.int64],
    peak: NDArray[np.int64],
    soc_rows: NDArray[np.int64],
    e_cap: F64,
    dt_h: float,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The peak held in every load scenario (two-stage: the schedule is planned on ``load_w``, the batteries cover
    a scenario's excess when it comes). Returns the recourse columns v [T, K] (MW; -1: none) and the highest
    scenario's column per step [T]."""
    assert p.peak_scenarios_w is not None and p.peak_scenario_p is not None
    eps = p.peak_scenarios_w * 1e-6
    prob = p.peak_scenario_p
    t_n, k_n = eps.shape
    kwh = 1000.0 * dt_h
    # Paid with the scenario's probability: wear, less the grid energy it saves; a hair more than planned
    # discharge, so that the plan does its arbitrage in d and leaves v to the peak.
    cost = prob[None, :] * (p.degradation_cost_per_kwh - p.price_per_kwh[:, None] + 1e-4) * kwh
    # Scenarios never above the median need no recourse and only the highest of them binds the peak: one row per
    # window stands for them all (the LP is the same, smaller).
    active = np.flatnonzero(np.any(eps > 0.0, axis=0))
    idle = np.flatnonzero(~np.any(eps > 0.0, axis=0))
    k_a = active.size
    # (an active scenario may still sit below the median in some steps: no recourse there)
    va = lp.var(t_n * k_a, 0.0, np.maximum(eps[:, active], 0.0).ravel(), cost[:, active].ravel()).reshape(t_n, k_a)
    # Peak in every scenario, per demand window.
    inverse, counts = _demand_windows(p)
    w_n = counts.size
    cols = [eps[:, k] for k in active.tolist()]
    if idle.size:
        cols.append(eps[:, idle].max(axis=1))
    rhs = -np.stack([np.bincount(inverse, weights=c, minlength=w_n) for c in cols], axis=1) / counts[:, None]
    rows = lp.rows(w_n * len(cols), -INF, rhs.ravel()).reshape(w_n, len(cols))
    lp.coef(rows[inverse], g[:, None], (1.0 / counts[inverse])[:, None])
    lp.coef(rows[inverse][:, :k_a], va, -(1.0 / counts[inverse])[:, None])
    lp.coef(rows, peak[0], -1.0)
    v = np.full((t_n, k_n), -1, dtype=np.int64)  # recourse columns per scenario; -1: none (never above median)
    v[:, active] = va
    # Discharge power: planned plus the highest scenario's recourse within nameplate (the others need less).
    top = np.argmax(eps, axis=1)
    pmax = float(p.power_max_w.sum()) * 1e-6
    rows = lp.rows(t_n, -INF, pmax)
    lp.coef(rows, net, 1.0)
    v_top = v[np.arange(t_n), top]
    has = v_top >= 0
    lp.coef(rows[has], v_top[has], 1.0)
    # Expected energy of the recourse (one column per step), shared by the units as their capacity.
    ev = lp.var(t_n, 0.0, INF)
    rows = lp.rows(t_n, 0.0, 0.0)
    lp.coef(rows, ev, 1.0)
    lp.coef(rows[:, None], va, -prob[None, active])
    share = e_cap / max(float(e_cap.sum()), 1e-12)
    lp.coef(soc_rows, ev[:, None], share[None, :] * dt_h / p.eta_discharge[None, :])
    # The worst scenario's recourse must find its energy above the SOC floor (beyond the expected use).
    eta = float(np.mean(p.eta_discharge))
    rows = lp.rows(t_n, float((p.soc_min * e_cap).sum()), INF)
    lp.coef(rows[:, None], e, 1.0)
    lp.coef(rows[has], v_top[has], -dt_h / eta)
    lp.coef(rows, ev, dt_h / eta)
    return v, v_top


def _define_net(lp: _Lp, c: NDArray[np.int64], d: NDArray[np.int64]) -> NDArray[np.int64]:
    """n_t = sum_u (d_tu - c_tu): the plan's net battery power per step (MW), one column the rows below share."""
    t_n = c.shape[0]
    net = lp.var(t_n, -INF, INF)
    rows = lp.rows(t_n, 0.0, 0.0)
    lp.coef(rows, net, 1.0)
    lp.coef(rows[:, None], d, -1.0)
    lp.coef(rows[:, None], c, 1.0)
    return net


def _define_damped_wear(lp: _Lp, p: PlanInputs, net: NDArray[np.int64], kwh: float) -> None:
    """Wear on max(|n_t|, E_j |delta_tj|): a_t >= +-n_t with a_t >= the damping's mean throughput. It is the
    convex E|n_t + delta| where that is tight (idle, where the damping's own throughput is paid; and past the
    swing, where it adds none) and a lower bound between, with 2 rows per step instead of 2 J."""
    assert p.damping_w is not None
    floor_mw = np.abs(p.damping_w * 1e-6).mean(axis=1)
    t_n = floor_mw.size
    a = lp.var(t_n, floor_mw, INF, p.degradation_cost_per_kwh * kwh)
    for sign in (1.0, -1.0):
        rows = lp.rows(t_n, 0.0, INF)  # a - sign n >= 0
        lp.coef(rows, a, 1.0)
        lp.coef(rows, net, -sign)
    # Charging and discharging at once is no longer priced: the efficiency loss still rules it out.


def _demand_windows(p: PlanInputs) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Each step's demand window (aligned to the epoch, like the bill) as an index 0..W-1, and the steps per window."""
    window = np.floor(p.t_s / p.demand_window_s).astype(np.int64)
    _, inverse, counts = np.unique(window, return_inverse=True, return_counts=True)
    return inverse, counts


def _define_peak(lp: _Lp, p: PlanInputs, g: NDArray[np.int64], peak: NDArray[np.int64], t_n: int) -> None:
    """peak >= mean of grid import (plus the headroom) over each demand window (aligned to the epoch, like the
    bill)."""
    if p.demand_rate_per_kw <= 0 and p.contract_w is None:
        return
    inverse, counts = _demand_windows(p)
    headroom = np.zeros(t_n) if p.peak_headroom_w is None else p.peak_headroom_w
    rhs = -np.bincount(inverse, weights=headroom * 1e-6, minlength=counts.size) / counts
    rows = lp.rows(counts.size, -INF, rhs)
    lp.coef(rows[inverse], g, 1.0 / counts[inverse])
    lp.coef(rows, peak, -1.0)


def _define_busbars(lp: _Lp, p: PlanInputs, c: NDArray[np.int64], d: NDArray[np.int64], t_n: int) -> None:
    """Hall load plus the charging of the hall's batteries (minus their discharge) within the busbar rating."""
    for h in range(p.busbar_w.size):
        units = np.flatnonzero(p.unit_hall == h)
        if units.size == 0:
            continue
        rows = lp.rows(t_n, -INF, (p.busbar_w[h] - p.hall_load_w[:, h]) * 1e-6)
        lp.coef(rows[:, None], c[:, units], 1.0)
        lp.coef(rows[:, None], d[:, units], -1.0)
