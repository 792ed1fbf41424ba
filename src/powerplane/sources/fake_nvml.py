"""A stand-in for the ``pynvml`` module: fake GPUs behind the same function names, error class and constants.

Pass a :class:`FakeNvml` where :class:`~powerplane.sources.nvml.NvmlSource` or
:class:`~powerplane.sources.nvml_caps.NvmlPowerCapper` take ``nvml=``; nothing here loads a driver or touches a
real GPU, so tests run in CI and ``powerplane track --source nvml --fake-nvml`` demos run anywhere.

What it models (numbers as NVML reports them: power in mW, energy in mJ, limits in mW):

- power ``min(idle + load * (peak - idle), limit)``, where ``load`` is a number or a function of clock time;
- an energy counter that advances with the injected clock (integrated at each query with the power in force
  since the previous one: exact for constant loads, left-rectangle otherwise);
- utilization, SM clock, GPU and memory temperature (the ``NVML_FI_DEV_MEMORY_TEMP`` field) that follow the load;
- clocks-event reasons: ``SW_POWER_CAP`` when the limit binds, ``GPU_IDLE`` when idle;
- power limits with min/max constraints and a default; setting one outside them is ``INVALID_ARGUMENT``, and
  without ``root`` it is ``NO_PERMISSION``, as on a real node;
- faults: a GPU without an energy counter (``NOT_SUPPORTED``), without a memory sensor, and a GPU that falls off
  the bus at a given time (every call then raises ``GPU_IS_LOST``); a driver that is not loaded
  (``nvmlInit`` raises ``DRIVER_NOT_LOADED``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from powerplane.core.clock import Clock, SimClock

# Return codes, the same numbers as pynvml's NVML_ERROR_* constants.
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

_ERROR_TEXT = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class FakeNVMLError(Exception):
    """Shaped like ``pynvml.NVMLError``: the NVML return code is in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _ERROR_TEXT.get(self.value, f"NVML Error with code {self.value}")


@dataclass(frozen=True)
class FakeHandle:
    index: int


@dataclass(frozen=True)
class FakeUtilization:
    """Shaped like ``pynvml.c_nvmlUtilization_t``: percentages."""

    gpu: int
    memory: int


@dataclass
class FakeValue:
    """Shaped like ``pynvml.c_nvmlValue_t`` (a C union: every member holds the value)."""

    dVal: float = 0.0
    uiVal: int = 0
    ulVal: int = 0
    ullVal: int = 0
    sllVal: int = 0
    siVal: int = 0
    usVal: int = 0


@dataclass
class FakeFieldValue:
    """Shaped like ``pynvml.c_nvmlFieldValue_t``."""

    fieldId: int
    scopeId: int = 0
    timestamp: int = 0
    latencyUsec: int = 0
    valueType: int = 1  # NVML_VALUE_TYPE_UNSIGNED_INT
    nvmlReturn: int = NVML_SUCCESS
    value: FakeValue = field(default_factory=FakeValue)


Load = float | Callable[[float], float]


@dataclass
class FakeGpu:
    """One fake GPU. Powers in W, temperatures in C, clocks in MHz, the energy counter in mJ.

    ``load`` is the busy share in [0, 1], constant or a function of clock time [s]. ``lost_at_s``: from this
    clock time on, every call on the GPU raises ``GPU_IS_LOST`` (``-inf``: lost from the start).
    """

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = ""
    load: Load = 0.0
    idle_w: float = 70.0
    peak_w: float = 590.0
    min_limit_w: float = 200.0
    max_limit_w: float = 700.0
    default_limit_w: float = 700.0
    limit_w: float = math.nan  # NaN: the default limit
    idle_temp_c: float = 35.0
    busy_temp_rise_c: float = 35.0
    mem_temp_offset_c: float | None = 6.0  # None: no memory temperature sensor (field NOT_SUPPORTED)
    base_sm_clock_mhz: float = 1590.0
    max_sm_clock_mhz: float = 1980.0
    energy_supported: bool = True
    energy_mj: float = 0.0
    lost_at_s: float = math.inf
    _t_s: float = field(default=math.nan, init=False, repr=False)  # clock time the energy counter is integrated up to

    def load_at(self, t_s: float) -> float:
        raw = self.load(t_s) if callable(self.load) else self.load
        return min(max(float(raw), 0.0), 1.0)

    def demand_w(self, t_s: float) -> float:
        """What the GPU would draw without a power limit."""
        return self.idle_w + self.load_at(t_s) * (self.peak_w - self.idle_w)

    def power_w(self, t_s: float) -> float:
        return min(self.demand_w(t_s), self.limit_w)


def default_gpus(
    n: int = 8, name: str = "NVIDIA H100 80GB HBM3", load: Load = 0.6, start_s: float = 0.0
) -> list[FakeGpu]:
    """``n`` identical GPUs of which, when ``n >= 3``, the second-to-last has no energy counter and the last
    falls off the bus 60 s after ``start_s`` (clock time): the faults NVML polling has to live with."""
    gpus = [FakeGpu(name=name, load=load) for _ in range(n)]
    if n >= 3:
        gpus[-2].energy_supported = False
        gpus[-1].lost_at_s = start_s + 60.0
    return gpus


def training_load(period_s: float = 10.0, compute_share: float = 0.7, busy: float = 0.95, idle: float = 0.1) -> Load:
    """A synchronized training step: ``busy`` for ``compute_share`` of each period, then ``idle`` (collectives).

    >>> f = training_load(10.0, 0.7)
    >>> f(3.0), f(8.0)
    (0.95, 0.1)
    """

    def load(t_s: float) -> float:
        return busy if (t_s % period_s) < compute_share * period_s else idle

    return load


class FakeNvml:
    """A ``pynvml``-shaped object over fake GPUs on an injected clock (a :class:`SimClock` at 0 s by default).

    >>> nv = FakeNvml([FakeGpu(load=1.0)])
    >>> nv.nvmlInit()
    >>> h = nv.nvmlDeviceGetHandleByIndex(0)
    >>> nv.nvmlDeviceGetPowerUsage(h)
    590000
    >>> nv.advance(2.0)
    >>> nv.nvmlDeviceGetTotalEnergyConsumption(h)
    1180000
    """

    NVMLError = FakeNVMLError
    NVML_SUCCESS = NVML_SUCCESS
    NVML_ERROR_UNINITIALIZED = NVML_ERROR_UNINITIALIZED
    NVML_ERROR_INVALID_ARGUMENT = NVML_ERROR_INVALID_ARGUMENT
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = NVML_ERROR_NO_PERMISSION
    NVML_ERROR_NOT_FOUND = NVML_ERROR_NOT_FOUND
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_UNKNOWN = NVML_ERROR_UNKNOWN
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_GRAPHICS = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_FI_DEV_MEMORY_TEMP = 82
    NVML_VALUE_TYPE_DOUBLE = 0
    NVML_VALUE_TYPE_UNSIGNED_INT = 1
    NVML_VALUE_TYPE_UNSIGNED_LONG = 2
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
    NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
    NVML_VALUE_TYPE_SIGNED_INT = 5
    nvmlClocksEventReasonGpuIdle = 0x1
    nvmlClocksEventReasonSwPowerCap = 0x4

    def __init__(
        self,
        gpus: Sequence[FakeGpu] | None = None,
        clock: Clock | None = None,
        *,
        driver_loaded: bool = True,
        root: bool = True,
        driver_version: str = "550.54.15",
    ) -> None:
        self.gpus = list(default_gpus() if gpus is None else gpus)
        self.clock: Clock = SimClock(0.0) if clock is None else clock
        self.driver_loaded = driver_loaded
        self.root = root
        self.driver_version = driver_version
        self.init_count = 0  # nvmlInit is reference counted, as in the real library
        self.set_calls: list[tuple[int, int]] = []  # every accepted nvmlDeviceSetPowerManagementLimit(index, mW)
        now = self.clock.now_s()
        for i, g in enumerate(self.gpus):
            if not g.uuid:
                g.uuid = f"GPU-fa4e0000-0000-4000-8000-{i:012d}"
            if math.isnan(g.limit_w):
                g.limit_w = g.default_limit_w
            g._t_s = now

    @classmethod
    def demo(cls, clock: Clock, n: int = 8) -> FakeNvml:
        """A live demo node on ``clock`` (e.g. a WallClock): ``n`` H100s in a synchronized 10-s training step,
        with :func:`default_gpus`' faults counted from now.

        >>> from powerplane.core.clock import SimClock
        >>> nv = FakeNvml.demo(SimClock(1e9))
        >>> len(nv.gpus), nv.gpus[-1].lost_at_s - 1e9
        (8, 60.0)
        """
        return cls(default_gpus(n, load=training_load(), start_s=clock.now_s()), clock)

    # ------------------------------------------------------------------ test helpers (not in pynvml)

    def advance(self, dt_s: float) -> None:
        """Move a :class:`SimClock` forward (the fake's own default clock)."""
        if not isinstance(self.clock, SimClock):
            raise TypeError("advance() needs the fake's SimClock; move the injected clock instead")
        self.clock.advance(dt_s)

    def lose(self, index: int) -> None:
        """Make GPU ``index`` fall off the bus now."""
        self.gpus[index].lost_at_s = self.clock.now_s()

    # ------------------------------------------------------------------ internals

    def _check_init(self) -> None:
        if self.init_count <= 0:
            raise FakeNVMLError(NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: Any) -> FakeGpu:
        self._check_init()
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(self.gpus):
            raise FakeNVMLError(NVML_ERROR_INVALID_ARGUMENT)
        g = self.gpus[handle.index]
        if self.clock.now_s() >= g.lost_at_s:
            raise FakeNVMLError(NVML_ERROR_GPU_IS_LOST)
        return g

    def _sync(self, g: FakeGpu) -> float:
        """Integrate the energy counter up to now; returns now."""
        now = self.clock.now_s()
        if now > g._t_s:
            g.energy_mj += g.power_w(g._t_s) * (now - g._t_s) * 1e3
            g._t_s = now
        return now

    # ------------------------------------------------------------------ library

    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise FakeNVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._check_init()
        self.init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init()
        return self.driver_version

    def nvmlErrorString(self, result: int) -> str:
        return str(FakeNVMLError(result))

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._check_init()
        if not 0 <= index < len(self.gpus):
            raise FakeNVMLError(NVML_ERROR_INVALID_ARGUMENT)
        h = FakeHandle(index)
        self._gpu(h)  # a lost GPU has no handle
        return h

    # ------------------------------------------------------------------ device queries

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        self._gpu(handle)
        return int(handle.index)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        g = self._gpu(handle)
        return round(g.power_w(self.clock.now_s()) * 1e3)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        g = self._gpu(handle)
        if not g.energy_supported:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        self._sync(g)
        return int(g.energy_mj)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> FakeUtilization:
        g = self._gpu(handle)
        load = g.load_at(self.clock.now_s())
        return FakeUtilization(gpu=round(load * 100), memory=round(load * 70))

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> int:
        g = self._gpu(handle)
        if clock_type != self.NVML_CLOCK_SM:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        now = self.clock.now_s()
        load = g.load_at(now)
        top = g.base_sm_clock_mhz if g.demand_w(now) > g.limit_w else g.max_sm_clock_mhz
        return round(0.35 * g.base_sm_clock_mhz + load * (top - 0.35 * g.base_sm_clock_mhz))

    def _temp_c(self, g: FakeGpu) -> float:
        now = self.clock.now_s()
        return g.idle_temp_c + g.busy_temp_rise_c * (g.power_w(now) - g.idle_w) / max(g.peak_w - g.idle_w, 1.0)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        g = self._gpu(handle)
        if sensor != self.NVML_TEMPERATURE_GPU:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        return round(self._temp_c(g))

    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: Sequence[int]) -> list[FakeFieldValue]:
        g = self._gpu(handle)
        out = []
        for fid in field_ids:
            if fid == self.NVML_FI_DEV_MEMORY_TEMP and g.mem_temp_offset_c is not None:
                t = round(self._temp_c(g) + g.mem_temp_offset_c)
                out.append(FakeFieldValue(fid, value=FakeValue(dVal=t, uiVal=t, ulVal=t, ullVal=t, sllVal=t, siVal=t)))
            else:
                out.append(FakeFieldValue(fid, nvmlReturn=NVML_ERROR_NOT_SUPPORTED))
        return out

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        g = self._gpu(handle)
        now = self.clock.now_s()
        reasons = 0
        if g.demand_w(now) >= g.limit_w:
            reasons |= self.nvmlClocksEventReasonSwPowerCap
        if g.load_at(now) < 0.05:
            reasons |= self.nvmlClocksEventReasonGpuIdle
        return reasons

    nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons

    # ------------------------------------------------------------------ power limits (mW)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return round(self._gpu(handle).limit_w * 1e3)

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        return round(self._gpu(handle).limit_w * 1e3)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: Any) -> int:
        return round(self._gpu(handle).default_limit_w * 1e3)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Any) -> list[int]:
        g = self._gpu(handle)
        return [round(g.min_limit_w * 1e3), round(g.max_limit_w * 1e3)]

    def nvmlDeviceSetPowerManagementLimit(self, handle: Any, limit_mw: int) -> None:
        g = self._gpu(handle)
        if not self.root:
            raise FakeNVMLError(NVML_ERROR_NO_PERMISSION)
        if not round(g.min_limit_w * 1e3) <= limit_mw <= round(g.max_limit_w * 1e3):
            raise FakeNVMLError(NVML_ERROR_INVALID_ARGUMENT)
        self._sync(g)  # energy so far was drawn under the old limit
        g.limit_w = limit_mw / 1e3
        self.set_calls.append((int(handle.index), int(limit_mw)))
