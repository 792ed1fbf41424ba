"""Battery aging: NREL BLAST-Lite's LFP model and rainflow cycle counting, reduced to a cost of use.

The planner needs a linear price for wear. We calibrate one against BLAST-Lite (``Lfp_Gr_250AhPrismatic``,
valid 10-45 C): simulate a year of daily cycling and a year at rest at the same temperature; the extra capacity fade
of cycling, divided by the energy throughput, priced at the cost of replacing the fade (end of life at 80 %
capacity), gives money per kWh of throughput. After a run, the same model ages the battery on the run's actual
SOC series, and rainflow counts its cycles (ASTM E1049-85).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

END_OF_LIFE_CAPACITY = 0.8

# Wear cost per kWh of throughput at a capex of 250 per kWh, computed with BLAST-Lite 1.1.1
# (Lfp_Gr_250AhPrismatic, a year of daily 80 % cycles minus a year at rest at 50 % SOC), 2026-11-23, by
# `python benchmarks/calibrate_aging.py`. Used when BLAST-Lite is not installed (it pins numpy<2).
CALIBRATED_COST_PER_KWH_AT_250 = {15.0: 0.031201, 25.0: 0.023471, 35.0: 0.017159, 45.0: 0.011250}


def blast_available() -> bool:
    """Whether NREL BLAST-Lite can be imported (it is an optional extra: ``pip install blast-lite --no-deps``)."""
    try:
        _import_blast()
    except ImportError:
        return False
    return True


def _import_blast() -> type:
    if not hasattr(np, "trapz"):  # BLAST-Lite 1.1 calls np.trapz, removed in NumPy 2.4
        setattr(np, "trapz", np.trapezoid)  # noqa: B010
    from blast.models import Lfp_Gr_250AhPrismatic

    cls: type = Lfp_Gr_250AhPrismatic
    return cls


def _blast_fade(t_s: np.ndarray, soc: np.ndarray, temp_c: float) -> float:
    Lfp_Gr_250AhPrismatic = _import_blast()

    cell = Lfp_Gr_250AhPrismatic()
    cell.simulate_battery_life({"Time_s": t_s, "SOC": soc, "Temperature_C": np.full(t_s.size, temp_c)})
    return float(1.0 - cell.outputs["q"][-1])


@lru_cache(maxsize=32)
def throughput_cost_per_kwh(capex_per_kwh: float = 250.0, temp_c: float = 25.0, depth: float = 0.8) -> float:
    """Wear cost of one kWh of battery throughput (charge or discharge) [money/kWh], calibrated on BLAST-Lite.

    ``capex_per_kwh``: replacement cost of a kWh of capacity; ``depth``: depth of the daily calibration cycle.

    Without BLAST-Lite installed, the shipped calibration table is interpolated over temperature.

    >>> 0.005 < throughput_cost_per_kwh(250.0) < 0.2
    True
    """
    if not blast_available():
        temps = np.array(sorted(CALIBRATED_COST_PER_KWH_AT_250))
        costs = np.array([CALIBRATED_COST_PER_KWH_AT_250[k] for k in temps])
        return float(np.interp(temp_c, temps, costs) * capex_per_kwh / 250.0)
    t = np.arange(0.0, 365 * 86_400.0, 900.0)
    cycling = 0.5 + 0.5 * depth * np.sin(2 * np.pi * t / 86_400.0)
    rest = np.full(t.size, 0.5)
    extra_fade = max(_blast_fade(t, cycling, temp_c) - _blast_fade(t, rest, temp_c), 1e-9)
    throughput_per_kwh_capacity = 365 * 2 * depth
    return capex_per_kwh * (extra_fade / (1.0 - END_OF_LIFE_CAPACITY)) / throughput_per_kwh_capacity


@dataclass(frozen=True)
class AgingReport:
    equivalent_full_cycles: float
    cycles_by_depth: dict[str, float]  # rainflow count per depth band
    capacity_fade: float  # BLAST-Lite fade over the run [-]
    calendar_fade: float  # the same time at the run's mean SOC, without cycling [-]
    cost: float  # (fade - calendar fade) priced at replacement cost

    def to_dict(self) -> dict[str, object]:
        return {
            "equivalent_full_cycles": self.equivalent_full_cycles,
            "cycles_by_depth": self.cycles_by_depth,
            "capacity_fade": self.capacity_fade,
            "calendar_fade": self.calendar_fade,
            "cost": self.cost,
        }


def age_run(
    t_s: ArrayLike, soc: ArrayLike, energy_kwh: float, capex_per_kwh: float = 250.0, temp_c: float = 25.0
) -> AgingReport:
    """Age one battery on a run's SOC series (resampled to 15 min for BLAST-Lite) and count its cycles."""
    import rainflow

    t = np.asarray(t_s, dtype=np.float64)
    s = np.asarray(soc, dtype=np.float64)
    if t.size < 2:
        return AgingReport(0.0, {}, 0.0, 0.0, 0.0)
    step = max(1, round(900.0 / max(float(t[1] - t[0]), 1e-9)))
    t15 = t[::step] - t[0]
    s15 = s[::step]
    bands = {"<10%": 0.0, "10-50%": 0.0, ">50%": 0.0}
    for rng, _mean, count, _i0, _i1 in rainflow.extract_cycles(s15):
        key = "<10%" if rng < 0.1 else ("10-50%" if rng < 0.5 else ">50%")
        bands[key] += count
    efc = float(np.abs(np.diff(s)).sum() / 2.0)
    if t15.size < 2:
        return AgingReport(efc, bands, 0.0, 0.0, 0.0)
    if not blast_available():  # linear wear price calibrated on BLAST-Lite; no fade simulation
        cost = efc * 2.0 * energy_kwh * throughput_cost_per_kwh(capex_per_kwh, temp_c)
        fade = cost / (capex_per_kwh * energy_kwh) * (1.0 - END_OF_LIFE_CAPACITY) if energy_kwh > 0 else 0.0
        return AgingReport(efc, bands, fade, 0.0, cost)
    fade = _blast_fade(t15, np.clip(s15, 0.0, 1.0), temp_c)
    calendar = _blast_fade(t15, np.full(t15.size, float(np.clip(s15.mean(), 0.0, 1.0))), temp_c)
    cost = max(fade - calendar, 0.0) / (1.0 - END_OF_LIFE_CAPACITY) * capex_per_kwh * energy_kwh
    return AgingReport(efc, bands, fade, calendar, cost)
