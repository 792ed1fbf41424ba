"""The site schema: one YAML file describes a whole site, validated before anything runs.

Units are in the field names (``_kw``, ``_kwh``, ``_c``, ``_s``, ``_h``). Power in the configuration is in kW
because that is how sites are specified; inside the code everything is converted to W.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------- topology


class HallConfig(_Strict):
    """One data hall: rows of racks of nodes of GPUs, one GPU model per hall (override per row with row_models)."""

    name: str
    rows: Annotated[int, Field(ge=1)]
    racks_per_row: Annotated[int, Field(ge=1)]
    nodes_per_rack: Annotated[int, Field(ge=1)]
    gpus_per_node: Annotated[int, Field(ge=1, le=16)] = 8
    gpu_model: str = "H100"
    row_models: list[str] | None = Field(
        default=None, description="GPU model of each row; overrides gpu_model when given"
    )
    busbar_limit_kw: PositiveFloat = Field(description="hall busbar (switchboard) rating [kW]")
    cooling_units: Annotated[int, Field(ge=1)] = Field(
        default=4, description="CRAH/CDU units; each cools a contiguous share of the hall's racks"
    )

    @model_validator(mode="after")
    def _rows_match(self) -> HallConfig:
        if self.row_models is not None and len(self.row_models) != self.rows:
            raise ValueError(f"row_models has {len(self.row_models)} entries, expected one per row ({self.rows})")
        return self


class TopologyConfig(_Strict):
    halls: Annotated[list[HallConfig], Field(min_length=1)]

    @field_validator("halls")
    @classmethod
    def _unique_names(cls, halls: list[HallConfig]) -> list[HallConfig]:
        names = [h.name for h in halls]
        if len(set(names)) != len(names):
            raise ValueError(f"hall names must be unique, got {names}")
        return halls


# ------------------------------------------------------------------------------------------- electrical


class GeneratorConfig(_Strict):
    power_kw: NonNegFloat = 0.0
    start_delay_s: NonNegFloat = 10.0


class UpsConfig(_Strict):
    chemistry: Literal["LFP", "VRLA"] = "VRLA"
    autonomy_min: PositiveFloat = 5.0
    efficiency: Annotated[float, Field(gt=0.5, le=1.0)] = 0.96


class ElectricalConfig(_Strict):
    contract_demand_kw: PositiveFloat = Field(description="contracted demand at the point of interconnection [kW]")
    poi_limit_kw: PositiveFloat | None = Field(default=None, description="hard import limit of the connection [kW]")
    export_limit_kw: NonNegFloat = Field(default=0.0, description="largest export to the grid [kW]")
    ups: UpsConfig = UpsConfig()
    generator: GeneratorConfig = GeneratorConfig()


# ---------------------------------------------------------------------------------------------- cooling


class CoolingConfig(_Strict):
    kind: Literal["chiller", "free_cooling", "liquid", "hybrid"] = "chiller"
    cop_curve: Annotated[list[tuple[float, PositiveFloat]], Field(min_length=1)] = Field(
        description="(outdoor temperature [C], COP) points, interpolated linearly, held flat beyond the ends"
    )
    supply_temp_c: float = 20.0
    other_load_fraction: Annotated[float, Field(ge=0.0, le=0.5)] = Field(
        default=0.04, description="lighting, UPS and distribution losses as a share of IT power"
    )
    thermal_resistance_c_per_w: PositiveFloat = Field(
        default=0.055, description="GPU die rise over rack inlet per watt of GPU power [C/W]"
    )
    gpu_time_constant_s: PositiveFloat = 20.0
    inlet_time_constant_s: PositiveFloat = 120.0
    failures: list[CoolingFailureConfig] = Field(default_factory=list)

    @field_validator("cop_curve")
    @classmethod
    def _sorted(cls, curve: list[tuple[float, float]]) -> list[tuple[float, float]]:
        temps = [p[0] for p in curve]
        if temps != sorted(temps):
            raise ValueError("cop_curve must be sorted by outdoor temperature")
        return curve


class CoolingFailureConfig(_Strict):
    """A cooling unit fails at ``at_h`` hours into the run for ``duration_h`` hours: its racks heat up."""

    hall: str
    unit: Annotated[int, Field(ge=0)]
    at_h: NonNegFloat
    duration_h: PositiveFloat
    inlet_rise_c: PositiveFloat = 12.0


CoolingConfig.model_rebuild()


# --------------------------------------------------------------------------------------------- batteries


class BessUnitConfig(_Strict):
    name: str
    hall: str
    chemistry: Literal["LFP", "VRLA"] = "LFP"
    power_kw: PositiveFloat
    energy_kwh: PositiveFloat
    charge_efficiency: Annotated[float, Field(gt=0.5, le=1.0)] = 0.95
    discharge_efficiency: Annotated[float, Field(gt=0.5, le=1.0)] = 0.95
    soc_min: Fraction = 0.10
    soc_max: Fraction = 0.95
    soc_initial: Fraction = 0.60
    response_time_s: NonNegFloat = Field(default=0.05, description="first-order lag of the power response [s]")
    ramp_kw_per_s: PositiveFloat | None = Field(default=None, description="largest change of power per second")
    aux_power_kw: NonNegFloat = Field(default=0.0, description="HVAC and control load, always drawn [kW]")
    backup_reserve: Fraction = Field(default=0.0, description="SOC kept for ride-through; planners stay above it")

    @model_validator(mode="after")
    def _window(self) -> BessUnitConfig:
        if not self.soc_min < self.soc_max:
            raise ValueError(f"soc_min ({self.soc_min}) must be below soc_max ({self.soc_max})")
        if not self.soc_min <= self.soc_initial <= self.soc_max:
            raise ValueError(f"soc_initial ({self.soc_initial}) must lie in [soc_min, soc_max]")
        return self


# -------------------------------------------------------------------------------------------- renewables


class WeatherConfig(_Strict):
    """A year of real hourly weather. ``kind`` says how to read ``file``.

    - ``tmy3``: a TMY3 CSV (pvlib ``read_tmy3``); ``file`` may be ``pvlib:723170TYA.CSV`` for one shipped in pvlib.
    - ``windpowerlib``: the two-header-row CSV format of windpowerlib's example weather.
    Relative paths are resolved against the scenario file's folder, then against the package's ``data`` folder.
    """

    kind: Literal["tmy3", "windpowerlib"]
    file: str
    temp_offset_c: float = Field(default=0.0, description="added to air temperature (a stand-in site's climate)")
    wind_file: str | None = Field(default=None, description="a windpowerlib-format file for wind when kind is tmy3")


class RenewablesConfig(_Strict):
    solar_kw_dc: NonNegFloat = 0.0
    solar_tilt_deg: Annotated[float, Field(ge=0, le=90)] = 25.0
    solar_azimuth_deg: Annotated[float, Field(ge=0, lt=360)] = 180.0
    wind_kw: NonNegFloat = 0.0
    turbine_type: str = "E-126/4200"
    hub_height_m: PositiveFloat = 135.0
    weather: WeatherConfig


# ------------------------------------------------------------------------------------------------ tariff


class TouPeriod(_Strict):
    """A named time-of-use period: local-time hour ranges [start, end) and the months it applies to."""

    name: str
    hours: Annotated[list[tuple[int, int]], Field(min_length=1)]
    months: list[int] = Field(default_factory=lambda: list(range(1, 13)))
    price_per_kwh: NonNegFloat

    @field_validator("hours")
    @classmethod
    def _hour_ranges(cls, hours: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for start, end in hours:
            if not (0 <= start < end <= 24):
                raise ValueError(f"hour range ({start}, {end}) must satisfy 0 <= start < end <= 24")
        return hours

    @field_validator("months")
    @classmethod
    def _months(cls, months: list[int]) -> list[int]:
        if any(not 1 <= m <= 12 for m in months):
            raise ValueError("months must be 1..12")
        return months


class ContractBillingConfig(_Strict):
    """Contract-demand billing: demand above ``threshold`` x contract is billed at ``over_multiplier`` x rate."""

    threshold: PositiveFloat = 1.05
    over_multiplier: PositiveFloat = 2.0


class TariffConfig(_Strict):
    currency: str = "USD"
    default_price_per_kwh: NonNegFloat = Field(description="price outside every listed period")
    periods: list[TouPeriod] = Field(default_factory=list)
    critical_peak_uplift: NonNegFloat = Field(default=0.0, description="fractional uplift in critical-peak hours")
    critical_peak_hours: list[tuple[int, int]] = Field(default_factory=list)
    critical_peak_months: list[int] = Field(default_factory=list)
    demand_charge_per_kw_month: NonNegFloat = 0.0
    demand_window_min: PositiveFloat = 15.0
    contract_billing: ContractBillingConfig | None = None
    export_price_per_kwh: NonNegFloat = 0.0


# -------------------------------------------------------------------------------------------------- grid


class OutageConfig(_Strict):
    at_h: NonNegFloat
    duration_s: PositiveFloat


class GridConfig(_Strict):
    frequency_hz: Literal[50, 60]
    frequency_sigma_hz: NonNegFloat = 0.015
    frequency_reversion_s: PositiveFloat = 60.0
    frequency_events_per_day: NonNegFloat = 1.0
    frequency_event_depth_hz: PositiveFloat = 0.25
    outages: list[OutageConfig] = Field(default_factory=list)
    outage_rate_per_year: NonNegFloat = 0.0


# ---------------------------------------------------------------------------------------------- workload


class TrainingMix(_Strict):
    count: Annotated[int, Field(ge=0)]
    gpus: tuple[int, int] = Field(description="smallest and largest job size [GPUs]")
    duration_h: tuple[float, float]
    iteration_s: tuple[float, float] = (0.3, 10.0)
    compute_fraction: tuple[Fraction, Fraction] = (0.6, 0.85)
    checkpoint_interval_min: tuple[float, float] = (20.0, 60.0)
    checkpoint_duration_s: tuple[float, float] = (20.0, 90.0)
    startup_s: tuple[float, float] = (60.0, 300.0)
    arrivals_per_day: NonNegFloat | None = Field(
        default=None,
        description="arrivals per day; by default enough to keep `count` jobs running (Little's law)",
    )


class InferenceMix(_Strict):
    share_of_gpus: Fraction = 0.15
    replica_gpus: Annotated[int, Field(ge=1)] = 8
    trace: Literal["conv", "code"] = "conv"
    peak_hour_local: Annotated[float, Field(ge=0, lt=24)] = 15.0
    trough_fraction: Fraction = Field(default=0.35, description="night-time load relative to the daily peak")


class BatchMix(_Strict):
    share_of_gpus: Fraction = 0.10
    arrivals_per_hour: NonNegFloat | None = Field(
        default=None,
        description="arrivals per hour; by default enough to keep `share_of_gpus` busy (Little's law)",
    )


class WorkloadConfig(_Strict):
    target_utilization: Fraction = 0.85
    pretraining: TrainingMix
    finetune: TrainingMix
    inference: InferenceMix = InferenceMix()
    batch: BatchMix = BatchMix()
    priority_shares: dict[Literal["core", "normal", "low"], Fraction] = Field(
        default_factory=lambda: {"core": 0.4, "normal": 0.4, "low": 0.2}  # type: ignore[arg-type]
    )
    failure_rate_per_gpu_day: NonNegFloat = Field(
        default=0.0006, description="job-stalling faults per GPU-day (Llama 3: 466 in 54 days on 16K GPUs)"
    )
    restart_delay_s: tuple[float, float] = (300.0, 900.0)
    straggler_rate_per_job_hour: NonNegFloat = 2.0
    straggler_slowdown: tuple[float, float] = (0.1, 0.5)
    straggler_duration_s: tuple[float, float] = (5.0, 60.0)


# ------------------------------------------------------------------------------------------------ energy


class DemandResponseEvent(_Strict):
    """A committed reduction of grid import: ``reduction`` of the baseline for ``duration_h`` from ``start`` (local)."""

    start: str = Field(description="local start time, ISO 8601 without offset, e.g. 2026-07-15T15:00")
    duration_h: PositiveFloat
    reduction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25


class EnergyConfig(_Strict):
    """Energy-management settings: fast controllers, planner and compute levers."""

    contract_margin: Annotated[float, Field(gt=0.5, le=1.0)] = Field(
        default=0.98, description="aim at this share of the contract demand (headroom for metering error)"
    )
    contract_instant_factor: Annotated[float, Field(ge=1.0, le=2.0)] = Field(
        default=1.1,
        description="instantaneous grid power allowed up to this multiple of the contract (the 15-minute"
        " average, which is billed, is held at contract x margin)",
    )
    ramp_limit_mw_per_s: PositiveFloat = Field(default=1.0, description="grid-side ramp-rate limit [MW/s]")
    damping_time_constant_s: PositiveFloat = Field(
        default=15.0, description="smoothing of grid power; swings faster than ~1/(2 pi tau) go to the batteries"
    )
    frequency_deadband_hz: NonNegFloat = 0.02
    frequency_droop: Annotated[float, Field(gt=0.0, le=0.2)] = Field(
        default=0.05, description="droop: full response power at this per-unit frequency deviation"
    )
    frequency_response_share: Fraction = Field(
        default=0.2, description="share of battery power reserved for frequency response"
    )
    planner_step_min: PositiveFloat = 15.0
    planner_horizon_h: PositiveFloat = 24.0
    replan_min: PositiveFloat = 15.0
    battery_capex_per_kwh: NonNegFloat = Field(default=250.0, description="replacement cost for wear pricing")
    shed_cost_per_kwh: NonNegFloat = Field(
        default=0.5, description="value of compute lost per kWh of GPU energy capped or deferred"
    )
    cap_classes: list[Literal["low", "normal", "core"]] = Field(default_factory=lambda: ["low", "normal"])  # type: ignore[arg-type]
    stale_after_s: PositiveFloat = Field(default=5.0, description="older telemetry puts the controllers in safe mode")
    safe_hold_s: NonNegFloat = Field(default=10.0, description="in safe mode, hold the last setpoint this long")
    threshold_peak_fraction: Annotated[float, Field(gt=0.0, le=1.5)] = Field(
        default=0.95, description="threshold policy: shave grid power above this share of the contract"
    )
    threshold_recharge_fraction: Annotated[float, Field(gt=0.0, le=1.5)] = Field(
        default=0.8, description="threshold policy: recharge while grid power is below this share of the contract"
    )
    demand_response: list[DemandResponseEvent] = Field(default_factory=list)


# -------------------------------------------------------------------------------------------------- site


class SiteConfig(_Strict):
    name: str
    description: str = ""
    timezone: str = Field(description="IANA timezone of the site, e.g. America/Chicago")
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    start: str = Field(description="local start time of simulations, ISO 8601 without offset")
    topology: TopologyConfig
    electrical: ElectricalConfig
    cooling: CoolingConfig
    bess: list[BessUnitConfig] = Field(default_factory=list)
    renewables: RenewablesConfig
    tariff: TariffConfig
    grid: GridConfig
    workload: WorkloadConfig
    energy: EnergyConfig = EnergyConfig()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, tz: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {tz!r}") from exc
        return tz

    @model_validator(mode="after")
    def _cross_references(self) -> SiteConfig:
        halls = {h.name for h in self.topology.halls}
        for unit in self.bess:
            if unit.hall not in halls:
                raise ValueError(f"bess unit {unit.name!r} names unknown hall {unit.hall!r}; halls: {sorted(halls)}")
        for failure in self.cooling.failures:
            hall = next((h for h in self.topology.halls if h.name == failure.hall), None)
            if hall is None:
                raise ValueError(f"cooling failure names unknown hall {failure.hall!r}; halls: {sorted(halls)}")
            if failure.unit >= hall.cooling_units:
                raise ValueError(f"cooling failure unit {failure.unit} >= hall {hall.name}'s {hall.cooling_units}")
        names = [u.name for u in self.bess]
        if len(set(names)) != len(names):
            raise ValueError(f"bess unit names must be unique, got {names}")
        return self
