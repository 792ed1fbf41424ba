"""The facility around the GPUs: cooling, renewables, batteries, generator, grid meter, frequency and outages.

Energy balance at the point of interconnection, every step:

    grid = facility - bess - renewables_used - generator - unserved      (import positive, discharge positive)

``facility = IT x (1 + other losses) + cooling + BESS auxiliaries``. When the grid is lost, the batteries pick up
the load (UPS role), then the UPS strings bridge until the generator has started; whatever is left is unserved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.signal import lfilter

from powerplane.config.schema import SiteConfig
from powerplane.physics import battery, cooling, grid, solar, thermal, weather, wind
from powerplane.topology import Topology

F64 = NDArray[np.float64]
# controller(t_s, grid_w, bess_w[U], soc[U], frequency_hz, islanded, hall_it_w[H] | None) -> setpoint_w[U]:
# readings as the step begins (grid with the batteries still at their last power).
StepController = Callable[[float, float, F64, F64, float, bool, F64 | None], F64]

SUPPLY_TEMP_RANGE_C = (16.0, 32.0)
COOLING_TIME_CONSTANT_S = 120.0  # response of cooling power to IT heat (estimate)
COP_GAIN_PER_C = 0.03  # chiller COP gain per degree of warmer supply temperature (estimate)


@dataclass
class PlantBlock:
    outdoor_temp_c: F64
    it_power_w: F64
    cooling_power_w: F64
    other_power_w: F64
    bess_aux_w: F64
    facility_power_w: F64
    solar_power_w: F64
    wind_power_w: F64
    renewable_power_w: F64  # used on site
    curtailed_power_w: F64
    bess_power_w: F64  # total, discharge positive
    bess_unit_power_w: F64  # [T, U]
    bess_soc: F64  # [T, U]
    ups_power_w: F64
    generator_power_w: F64
    unserved_power_w: F64
    grid_power_w: F64
    frequency_hz: F64
    islanded: NDArray[np.bool_]


class Plant:
    def __init__(
        self,
        site: SiteConfig,
        site_file: Path | None,
        topo: Topology,
        rng: np.random.Generator,
        dt_s: float,
        t0_s: float,
        design_it_w: float,
    ) -> None:
        self.site = site
        self.topo = topo
        self.dt_s = dt_s
        self.t0_s = t0_s
        self.rng = rng
        ren = site.renewables
        wy = weather.load_weather_year(ren.weather, site_file, site.latitude, site.longitude, site.timezone)
        self.weather_source = wy.source
        self.temp_hourly = np.asarray(wy.temp_air_c, dtype=np.float64)
        self.solar_hourly = (
            solar.pvwatts_ac_w(
                wy,
                site.latitude,
                site.longitude,
                site.timezone,
                ren.solar_kw_dc,
                ren.solar_tilt_deg,
                ren.solar_azimuth_deg,
            )
            if ren.solar_kw_dc > 0
            else np.zeros(8760)
        )
        self.wind_hourly = (
            wind.farm_power_w(wy, ren.turbine_type, ren.hub_height_m, ren.wind_kw)
            if ren.wind_kw > 0
            else np.zeros(8760)
        )
        self.cop_curve: list[tuple[float, float]] = [(float(a), float(b)) for a, b in site.cooling.cop_curve]
        self.supply_temp_c = site.cooling.supply_temp_c
        self.cooling_w = np.nan
        self._cool_a = float(np.exp(-dt_s / COOLING_TIME_CONSTANT_S))
        self.other_fraction = site.cooling.other_load_fraction
        # Batteries.
        self.bess = battery.BessParams.from_config(site.bess)
        self.bess_soc = np.array([u.soc_initial for u in site.bess], dtype=np.float64)
        self.bess_power_w = np.zeros(self.bess.n_units)
        self.bess_setpoint_w = np.zeros(self.bess.n_units)
        self.bess_unit_hall = np.array([topo.hall_names.index(u.hall) for u in site.bess], dtype=np.int64)
        # Grid, UPS and generator.
        g = site.grid
        self.nominal_hz = float(g.frequency_hz)
        self.freq_dev_hz = 0.0
        self._freq_events: list[float] = []
        self._next_freq_event_s = (
            t0_s + rng.exponential(86_400.0 / g.frequency_events_per_day) if g.frequency_events_per_day > 0 else np.inf
        )
        self.outages = [(t0_s + o.at_h * 3600.0, t0_s + o.at_h * 3600.0 + o.duration_s) for o in g.outages]
        self._next_random_outage_s = (
            t0_s + rng.exponential(365 * 86_400.0 / g.outage_rate_per_year) if g.outage_rate_per_year > 0 else np.inf
        )
        el = site.electrical
        self.export_limit_w = el.export_limit_kw * 1e3
        self.generator_w = el.generator.power_kw * 1e3
        self.generator_delay_s = el.generator.start_delay_s
        self.ups_energy_j = design_it_w * el.ups.autonomy_min * 60.0
        self.ups_capacity_j = self.ups_energy_j
        self.ups_power_max_w = design_it_w
        self.outage_start_s = np.nan
        # Rack inlet temperatures and cooling failures.
        self.inlet_c = np.full(topo.n_racks, self.supply_temp_c + 1.0)
        self.inlet_tau_s = site.cooling.inlet_time_constant_s
        hall_unit0 = np.concatenate([[0], np.cumsum(np.bincount(topo.cooling_unit_hall, minlength=topo.n_halls))[:-1]])
        self.cooling_failures = [
            (
                t0_s + f.at_h * 3600.0,
                t0_s + (f.at_h + f.duration_h) * 3600.0,
                int(hall_unit0[topo.hall_names.index(f.hall)] + f.unit),
                f.inlet_rise_c,
            )
            for f in site.cooling.failures
        ]

    # --------------------------------------------------------------------------------- levers

    def set_supply_temp(self, temp_c: float) -> tuple[float, bool]:
        applied = float(np.clip(temp_c, *SUPPLY_TEMP_RANGE_C))
        self.supply_temp_c = applied
        return applied, applied != temp_c

    # --------------------------------------------------------------------------------- pieces

    def outdoor_temp_c(self, t_s: F64) -> F64:
        return weather.interpolate_hourly(self.temp_hourly, weather.hour_of_year(t_s, self.site.timezone))

    def rack_inlet(self, t_s: F64, rack_power_w: F64, rack_peak_w: F64) -> F64:
        """Advance rack inlet temperatures over a block (mean rack load) and return them [C]."""
        rise = np.zeros(self.topo.n_racks)
        t_mid = float(t_s[len(t_s) // 2])
        for start, end, unit, rise_c in self.cooling_failures:
            if start <= t_mid < end:
                rise[self.topo.rack_cooling_unit == unit] += rise_c
        target = thermal.rack_inlet_c(self.supply_temp_c, rack_power_w / rack_peak_w, failure_rise_c=rise)
        a = thermal.lag_coefficient(self.dt_s * len(t_s), self.inlet_tau_s)
        self.inlet_c = target + (self.inlet_c - target) * a
        return self.inlet_c

    def _frequency(self, t_s: F64) -> F64:
        g = self.site.grid
        dev = grid.ou_block(
            self.freq_dev_hz, t_s.size, self.dt_s, g.frequency_sigma_hz, g.frequency_reversion_s, self.rng
        )
        self.freq_dev_hz = float(dev[-1])
        while self._next_freq_event_s <= t_s[-1]:
            self._freq_events.append(self._next_freq_event_s)
            self._next_freq_event_s += self.rng.exponential(86_400.0 / g.frequency_events_per_day)
        recovery_s = 30.0
        self._freq_events = [e for e in self._freq_events if t_s[0] - e < 20 * recovery_s]
        if self._freq_events:
            dev = dev + grid.event_profile(t_s, np.array(self._freq_events), g.frequency_event_depth_hz, recovery_s)
        return self.nominal_hz + dev

    def _islanded(self, t_s: F64) -> NDArray[np.bool_]:
        while self._next_random_outage_s <= t_s[-1]:
            start = self._next_random_outage_s
            self.outages.append((start, start + self.rng.uniform(1.0, 600.0)))
            self._next_random_outage_s += self.rng.exponential(365 * 86_400.0 / self.site.grid.outage_rate_per_year)
        out = np.zeros(t_s.size, dtype=bool)
        for start, end in self.outages:
            out |= (t_s >= start) & (t_s < end)
        return out

    # --------------------------------------------------------------------------------- block

    def advance(
        self, t_s: F64, it_power_w: F64, controller: StepController | None = None, hall_it_w: F64 | None = None
    ) -> PlantBlock:
        """Advance the facility over a block. With a ``controller`` the batteries are commanded step by step from
        the readings as each step begins (grid with the batteries at their last power, battery power, SOC,
        frequency, island, hall IT power), as a fast PCS-level loop would; without one they hold their setpoints."""
        n = t_s.size
        temp = self.outdoor_temp_c(t_s)
        cop = cooling.cop(temp, self.cop_curve) * (
            1.0 + COP_GAIN_PER_C * (self.supply_temp_c - self.site.cooling.supply_temp_c)
        )
        # Cooling follows the heat load through the thermal mass of water loops and air: a first-order lag
        # (chillers and CRAH fans do not swing at the 0.1-3 Hz of training iterations).
        cool_target = it_power_w / np.maximum(cop, 0.5)
        if np.isnan(self.cooling_w):
            self.cooling_w = float(cool_target[0])
        cool, _zf = lfilter([1.0 - self._cool_a], [1.0, -self._cool_a], cool_target, zi=[self._cool_a * self.cooling_w])
        self.cooling_w = float(cool[-1])
        other = it_power_w * self.other_fraction
        aux = np.full(n, float(self.bess.aux_power_w.sum()))
        facility = it_power_w + other + cool + aux
        hour = weather.hour_of_year(t_s, self.site.timezone)
        sol = weather.interpolate_hourly(self.solar_hourly, hour)
        wnd = weather.interpolate_hourly(self.wind_hourly, hour)
        renewable = sol + wnd
        islanded = self._islanded(t_s)
        frequency = self._frequency(t_s)
        ups = np.zeros(n)
        gen = np.zeros(n)
        unserved = np.zeros(n)
        if self.bess.n_units == 0:
            unit_p = np.zeros((n, 0))
            soc = np.zeros((n, 0))
        elif controller is not None:
            unit_p, soc, ups, gen, unserved = self._stepwise_block(
                t_s, facility, renewable, islanded, frequency, controller, hall_it_w
            )
        elif not islanded.any() and not self.bess_setpoint_w.any() and not self.bess_power_w.any():
            unit_p = np.zeros((n, self.bess.n_units))
            soc = np.broadcast_to(self.bess_soc, (n, self.bess.n_units))
        elif not islanded.any():
            unit_p, self.bess_power_w, self.bess_soc, soc = self._bess_block(
                np.broadcast_to(self.bess_setpoint_w, (n, self.bess.n_units))
            )
        else:
            unit_p, soc, ups, gen, unserved = self._stepwise_block(
                t_s, facility, renewable, islanded, frequency, None, hall_it_w
            )
        bess_total = unit_p.sum(axis=1)
        residual = facility - bess_total - renewable - gen - ups - unserved
        # Renewables beyond load and the export limit (no export at all in island) are curtailed.
        export_limit = np.where(islanded, 0.0, self.export_limit_w)
        curtailed = np.minimum(np.maximum(-residual - export_limit, 0.0), renewable)
        grid_w = np.where(islanded, 0.0, residual + curtailed)
        used = renewable - curtailed
        if not islanded.any():
            self.outage_start_s = np.nan
        return PlantBlock(
            outdoor_temp_c=temp,
            it_power_w=it_power_w,
            cooling_power_w=cool,
            other_power_w=other,
            bess_aux_w=aux,
            facility_power_w=facility,
            solar_power_w=sol,
            wind_power_w=wnd,
            renewable_power_w=used,
            curtailed_power_w=curtailed,
            bess_power_w=bess_total,
            bess_unit_power_w=unit_p,
            bess_soc=np.asarray(soc),
            ups_power_w=ups,
            generator_power_w=gen,
            unserved_power_w=unserved,
            grid_power_w=grid_w,
            frequency_hz=frequency,
            islanded=islanded,
        )

    def _bess_block(self, setpoints: F64) -> tuple[F64, F64, F64, F64]:
        n = setpoints.shape[0]
        out = np.empty((n, self.bess.n_units))
        socs = np.empty((n, self.bess.n_units))
        p, s = self.bess_power_w, self.bess_soc
        for k in range(n):
            p, s = battery.step(setpoints[k], p, s, self.bess, self.dt_s)
            out[k] = p
            socs[k] = s
        return out, p, s, socs

    def _stepwise_block(
        self,
        t_s: F64,
        facility: F64,
        renewable: F64,
        islanded: NDArray[np.bool_],
        frequency: F64,
        controller: StepController | None,
        hall_it_w: F64 | None,
    ) -> tuple[F64, F64, F64, F64, F64]:
        """Step by step: in island the batteries carry the load (UPS role), the UPS strings bridge and the
        generator takes over; grid-connected, the batteries follow the controller (or hold their setpoints)."""
        n = t_s.size
        u = self.bess.n_units
        unit_p = np.zeros((n, u))
        socs = np.zeros((n, u))
        ups = np.zeros(n)
        gen = np.zeros(n)
        unserved = np.zeros(n)
        share = self.bess.power_max_w / max(float(self.bess.power_max_w.sum()), 1.0)
        for k in range(n):
            if islanded[k]:
                if np.isnan(self.outage_start_s):
                    self.outage_start_s = float(t_s[k])
                need = max(float(facility[k] - renewable[k]), 0.0)
                if t_s[k] - self.outage_start_s >= self.generator_delay_s:
                    gen[k] = min(need, self.generator_w)
                    need -= gen[k]
                setpoint = need * share
                # UPS role: respond at once, whatever the configured lag.
                p, s = battery.step(setpoint, setpoint, self.bess_soc, self.bess, self.dt_s)
                need -= float(p.sum())
                ups_p = min(max(need, 0.0), self.ups_power_max_w, self.ups_energy_j / self.dt_s)
                self.ups_energy_j -= ups_p * self.dt_s
                ups[k] = ups_p
                unserved[k] = max(need - ups_p, 0.0)
            else:
                self.outage_start_s = np.nan
                if controller is not None:
                    # The meter is read as the step begins: the grid as it stands with the batteries still at their
                    # last power (a PCS-speed loop, milliseconds, against steps of 100 ms to 1 s).
                    hall = None if hall_it_w is None else hall_it_w[k]
                    grid_now_before = float(facility[k] - renewable[k] - self.bess_power_w.sum())
                    self.bess_setpoint_w = np.asarray(
                        controller(
                            float(t_s[k]),
                            grid_now_before,
                            self.bess_power_w,
                            self.bess_soc,
                            float(frequency[k]),
                            bool(islanded[k]),
                            hall,
                        ),
                        dtype=np.float64,
                    )
                p, s = battery.step(self.bess_setpoint_w, self.bess_power_w, self.bess_soc, self.bess, self.dt_s)
                # UPS strings recharge slowly from the grid (10 % of rating); counted in other losses.
                self.ups_energy_j = min(self.ups_capacity_j, self.ups_energy_j + 0.1 * self.ups_power_max_w * self.dt_s)
            self.bess_power_w, self.bess_soc = p, s
            unit_p[k] = p
            socs[k] = s
        return unit_p, socs, ups, gen, unserved
