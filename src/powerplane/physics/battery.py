"""Battery energy storage (BESS) plant: power response, limits and state of charge, vectorized over units.

Sign convention: battery power is positive when discharging (AC side), negative when charging.
A command is clipped, never obeyed blindly: nameplate power, ramp rate, a first-order response lag and the
SOC window all bound what the plant actually does, and the function reports what it did.

Efficiencies are one-way AC/DC: discharging ``P`` for ``dt`` removes ``P dt / eta_d`` from the cells; charging
``P`` stores ``eta_c P dt``. LFP round trip ~85-92 % AC, VRLA 80-85 % (FACTS.md: NREL ATB, vendor guides).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import BessUnitConfig

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class BessParams:
    """Per-unit parameters as arrays (one entry per unit)."""

    power_max_w: F64
    energy_j: F64
    eta_charge: F64
    eta_discharge: F64
    soc_min: F64
    soc_max: F64
    response_time_s: F64
    ramp_w_per_s: F64  # inf when unlimited
    aux_power_w: F64

    @classmethod
    def from_config(cls, units: list[BessUnitConfig]) -> BessParams:
        def arr(values: list[float]) -> F64:
            return np.array(values, dtype=np.float64)

        return cls(
            power_max_w=arr([u.power_kw * 1e3 for u in units]),
            energy_j=arr([u.energy_kwh * 3.6e6 for u in units]),
            eta_charge=arr([u.charge_efficiency for u in units]),
            eta_discharge=arr([u.discharge_efficiency for u in units]),
            soc_min=arr([u.soc_min for u in units]),
            soc_max=arr([u.soc_max for u in units]),
            response_time_s=arr([u.response_time_s for u in units]),
            ramp_w_per_s=arr([u.ramp_kw_per_s * 1e3 if u.ramp_kw_per_s else np.inf for u in units]),
            aux_power_w=arr([u.aux_power_kw * 1e3 for u in units]),
        )

    @property
    def n_units(self) -> int:
        return int(self.power_max_w.size)

    @cached_property
    def per_unit(self) -> list[tuple[float, float, float, float, float, float, float, float]]:
        """(power max, response time, ramp, energy, eta charge, eta discharge, soc min, soc max) per unit."""
        return list(
            zip(
                self.power_max_w.tolist(),
                self.response_time_s.tolist(),
                self.ramp_w_per_s.tolist(),
                self.energy_j.tolist(),
                self.eta_charge.tolist(),
                self.eta_discharge.tolist(),
                self.soc_min.tolist(),
                self.soc_max.tolist(),
                strict=True,
            )
        )


def power_limits_w(soc: F64, params: BessParams, dt_s: float) -> tuple[F64, F64]:
    """Largest discharge and charge power [W] (both >= 0) this step allows, from nameplate and the SOC window."""
    e = params.energy_j
    max_dis = np.minimum(params.power_max_w, np.maximum(soc - params.soc_min, 0.0) * e * params.eta_discharge / dt_s)
    max_chg = np.minimum(params.power_max_w, np.maximum(params.soc_max - soc, 0.0) * e / (params.eta_charge * dt_s))
    return max_dis, max_chg


def step(setpoint_w: F64, power_w: F64, soc: F64, params: BessParams, dt_s: float) -> tuple[F64, F64]:
    """Advance the plant one step. Returns (actual power [W], new SOC [-]).

    The response follows the setpoint with a first-order lag (``response_time_s``; 0 means immediate), limited by
    the ramp rate, then clipped to what nameplate and the SOC window allow over ``dt_s``.

    >>> p = BessParams.from_config([BessUnitConfig(name="b", hall="h", power_kw=100, energy_kwh=100,
    ...     charge_efficiency=1.0, discharge_efficiency=1.0, soc_initial=0.5, response_time_s=0)])
    >>> pw, soc = step(np.array([1e6]), np.zeros(1), np.array([0.5]), p, 3600.0)
    >>> float(pw[0]), round(float(soc[0]), 3)
    (40000.0, 0.1)
    """
    # A site has a handful of units: plain floats per unit are ~10x faster than NumPy calls on 4-element arrays,
    # and this runs every step of a closed-loop simulation.
    sp = np.broadcast_to(np.asarray(setpoint_w, dtype=np.float64), params.power_max_w.shape).tolist()
    pw = np.asarray(power_w, dtype=np.float64).tolist()
    sc = np.asarray(soc, dtype=np.float64).tolist()
    new_p = [0.0] * len(pw)
    new_s = [0.0] * len(pw)
    for u, (pmax, tau, ramp, e, eta_c, eta_d, lo, hi) in enumerate(params.per_unit):
        target = min(max(sp[u], -pmax), pmax)
        alpha = 1.0 - math.exp(-dt_s / tau) if tau > 0 else 1.0
        p = pw[u] + alpha * (target - pw[u])
        step_max = ramp * dt_s
        p = min(max(p, pw[u] - step_max), pw[u] + step_max)
        max_dis = min(pmax, max(sc[u] - lo, 0.0) * e * eta_d / dt_s)
        max_chg = min(pmax, max(hi - sc[u], 0.0) * e / (eta_c * dt_s))
        p = min(max(p, -max_chg), max_dis)
        stored = -p * dt_s / eta_d if p >= 0.0 else -p * dt_s * eta_c
        new_p[u] = p
        new_s[u] = min(max(sc[u] + stored / e, lo), hi)
    return np.array(new_p), np.array(new_s)
