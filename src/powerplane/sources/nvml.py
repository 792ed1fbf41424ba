"""NVIDIA GPUs of this node through NVML (``nvidia-ml-py``, imported as ``pynvml``), as a :class:`Source`.

One read polls every device once. Energy comes from the hardware counter (``nvmlDeviceGetTotalEnergyConsumption``,
mJ since the driver loaded, Volta and newer) where it exists: NVML power is a 1-s average on Ampere and newer and
integrating sampled power misestimates energy (FACTS.md, GPU power). Where the counter is not supported the
frame carries NaN and telemetry integrates power instead.

Errors: an NVML failure at start-up is a :class:`SourceError`. A failing call on one device at read time leaves
NaN for that value and is counted in :attr:`NvmlSource.errors` by NVML error name; a ``NOT_SUPPORTED`` capability
is remembered and not asked again, and a ``GPU_IS_LOST`` device is not polled again (a lost GPU needs a reset,
which this source never does).

The last Xid is not readable by NVML polling (Xids arrive as events through ``nvmlEventSetWait`` or in the
kernel log), so ``last_xid`` is always 0 here; the log-mining side of ops supplies Xids.
"""

from __future__ import annotations

import contextlib
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.core.clock import Clock, WallClock
from powerplane.core.errors import PowerPlaneError, SourceError
from powerplane.core.frames import Frame
from powerplane.physics import gpu_power
from powerplane.sources.base import single_node_topology
from powerplane.topology.tree import Topology

# NVML device-name tokens -> GPU_PROFILES key. Variants of a family map to its closest profile.
NVML_MODEL_TOKENS: dict[str, str] = {
    "H100": "H100",
    "H800": "H100",  # export variant of H100 (same board, less NVLink bandwidth)
    "H20": "H100",  # reduced Hopper; closest shipped profile
    "H200": "H200",
    "GH200": "H200",
    "B100": "B200",
    "B200": "B200",
    "GB200": "B200",
    "B300": "B200",
    "GB300": "B200",
    "MI300X": "MI300X",  # AMD parts are not seen through NVML; kept for names from other sources
}
# An NVIDIA part we have no profile for is treated as an H100: a generic data-centre GPU (700 W TDP,
# 200-700 W cap range). Its real name stays in NvmlSource.device_names, and its power-limit constraints come
# from the device itself, so only the profile-derived model parameters (idle/peak, node overhead) are guesses.
FALLBACK_MODEL = "H100"

GPU_FLOAT_METRICS = (
    "power_w",
    "energy_mj",
    "util_pct",
    "mem_util_pct",
    "sm_clock_mhz",
    "temp_c",
    "mem_temp_c",
    "power_cap_w",
    "throttle_reasons",  # a bitmask, carried as float64 so that an unreadable value can be NaN
)

_INIT_REASONS = {
    "DRIVER_NOT_LOADED": "driver not loaded",
    "LIBRARY_NOT_FOUND": "libnvidia-ml.so not found (is the NVIDIA driver installed?)",
    "NO_PERMISSION": "permission denied opening the GPU devices",
    "LIB_RM_VERSION_MISMATCH": "NVML library and kernel driver versions differ (reload the driver or reboot)",
}


def gpu_model(nvml_name: str) -> tuple[str, bool]:
    """The ``GPU_PROFILES`` key for an NVML device name, and whether the name was recognised.

    >>> gpu_model("NVIDIA H100 80GB HBM3"), gpu_model("NVIDIA H200"), gpu_model("NVIDIA GB200")
    (('H100', True), ('H200', True), ('B200', True))
    >>> gpu_model("NVIDIA A100-SXM4-80GB")
    ('H100', False)
    """
    for token in nvml_name.upper().replace("-", " ").replace("_", " ").split():
        if token in NVML_MODEL_TOKENS:
            return NVML_MODEL_TOKENS[token], True
    return FALLBACK_MODEL, False


def load_pynvml() -> Any:
    """Import ``pynvml`` (the ``nvidia-ml-py`` package); importing loads no driver."""
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise SourceError("NVML not available: the nvidia-ml-py package is not installed") from exc
    return pynvml


def error_name(nvml: Any, err: BaseException) -> str:
    """NVML's name for an error (``NOT_SUPPORTED``, ``GPU_IS_LOST``), from the module's ``NVML_ERROR_*`` constants."""
    code = getattr(err, "value", None)
    for attr in dir(nvml):
        if attr.startswith("NVML_ERROR_") and getattr(nvml, attr) == code:
            return attr.removeprefix("NVML_ERROR_")
    return f"NVML_ERROR_{code}"


def nvml_init(nvml: Any, error: type[PowerPlaneError] = SourceError) -> None:
    """``nvmlInit`` with failures mapped onto ``error`` (:class:`SourceError` for sources)."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        name = error_name(nvml, exc)
        raise error(f"NVML not available: {_INIT_REASONS.get(name, str(exc) or name)}") from exc
    except OSError as exc:
        raise error(f"NVML not available: {exc}") from exc


def nvml_shutdown(nvml: Any) -> None:
    """``nvmlShutdown``, ignoring NVML's complaints: there is nothing left to release when it fails."""
    with contextlib.suppress(nvml.NVMLError):
        nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field_number(fv: Any, nvml: Any) -> float:
    """The number in an ``nvmlFieldValue_t``, read from the union member its ``valueType`` names."""
    if fv.nvmlReturn != getattr(nvml, "NVML_SUCCESS", 0):
        raise nvml.NVMLError(fv.nvmlReturn)
    member = {
        getattr(nvml, "NVML_VALUE_TYPE_DOUBLE", 0): "dVal",
        getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_INT", 1): "uiVal",
        getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_LONG", 2): "ulVal",
        getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", 3): "ullVal",
        getattr(nvml, "NVML_VALUE_TYPE_SIGNED_LONG_LONG", 4): "sllVal",
        getattr(nvml, "NVML_VALUE_TYPE_SIGNED_INT", 5): "siVal",
    }.get(fv.valueType, "uiVal")
    return float(getattr(fv.value, member))


Reader = Callable[[Any], dict[str, float]]


class NvmlSource:
    """This node's NVIDIA GPUs as a one-node :class:`Source` (site, hall, row and rack ``local``).

    ``hostname`` names the node (default: this host's name). ``nvml`` is the NVML module: ``pynvml`` by default,
    or a :class:`~powerplane.sources.fake_nvml.FakeNvml` in tests. ``clock`` stamps the frames.

    Attributes: ``device_names`` (NVML's names), ``model_exact`` (False where :data:`FALLBACK_MODEL` stood in),
    ``errors`` (failed calls by NVML error name), ``unsupported`` ((GPU index, reading) pairs NVML refused),
    ``lost`` (GPU indices that fell off the bus).
    """

    name = "nvml"

    def __init__(self, hostname: str | None = None, nvml: Any = None, clock: Clock | None = None) -> None:
        self._nvml = load_pynvml() if nvml is None else nvml
        self._clock: Clock = WallClock() if clock is None else clock
        self.errors: Counter[str] = Counter()
        self.unsupported: set[tuple[int, str]] = set()
        self.lost: set[int] = set()
        self._closed = False
        nv = self._nvml
        nvml_init(nv)
        try:
            n = int(nv.nvmlDeviceGetCount())
            if n < 1:
                raise SourceError("NVML found no GPUs on this node")
            self._handles: list[Any] = []
            uuids: list[str] = []
            self.device_names: list[str] = []
            max_w: list[float] = []
            for i in range(n):
                handle, uuid, dev_name, cap_max = self._describe(i)
                self._handles.append(handle)
                uuids.append(uuid)
                self.device_names.append(dev_name)
                max_w.append(cap_max)
            self.driver_version = self._call_or(lambda: _text(nv.nvmlSystemGetDriverVersion()), "")
        except nv.NVMLError as exc:
            self._shutdown()
            raise SourceError(f"NVML failed while listing GPUs: {error_name(nv, exc)} ({exc})") from exc
        except BaseException:
            self._shutdown()
            raise
        models = [gpu_model(d) for d in self.device_names]
        self.model_exact = [exact for _, exact in models]
        profile_names = [m for m, _ in models]
        profiles = [gpu_power.profile(m) for m in profile_names]
        caps = np.array([c if np.isfinite(c) else p.max_cap_w for c, p in zip(max_w, profiles, strict=True)])
        limit_w = float(gpu_power.node_power_w(caps.sum(), profiles[0].node_base_w, profiles[0].node_gpu_share))
        self._topology = single_node_topology(
            hostname or socket.gethostname(), uuids, profile_names, limit_w=limit_w, site_name="local"
        )
        self._readers = self._make_readers()

    # ------------------------------------------------------------------ set-up

    def _call_or(self, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except self._nvml.NVMLError as exc:
            self.errors[error_name(self._nvml, exc)] += 1
            return default

    def _describe(self, i: int) -> tuple[Any, str, str, float]:
        """Handle, UUID, name and maximum power limit [W] of device ``i``; a device that cannot be opened keeps
        its slot (so NVML indices stay topology indices) under a placeholder UUID and is marked lost."""
        nv = self._nvml
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(i)
        except nv.NVMLError as exc:
            self.errors[error_name(nv, exc)] += 1
            self.lost.add(i)
            return None, f"GPU-unavailable-nvml-index-{i}", "unknown", float("nan")
        uuid = self._call_or(lambda: _text(nv.nvmlDeviceGetUUID(handle)), f"GPU-unknown-nvml-index-{i}")
        dev_name = self._call_or(lambda: _text(nv.nvmlDeviceGetName(handle)), "unknown")
        limits = self._call_or(lambda: nv.nvmlDeviceGetPowerManagementLimitConstraints(handle), None)
        return handle, uuid, dev_name, float(limits[1]) / 1e3 if limits is not None else float("nan")

    def _make_readers(self) -> dict[str, Reader]:
        nv = self._nvml
        # The "throttle reasons" call was renamed "clocks event reasons" in driver 535; older bindings lack it.
        events = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if events is None:
            events = nv.nvmlDeviceGetCurrentClocksThrottleReasons
        mem_temp_field = getattr(nv, "NVML_FI_DEV_MEMORY_TEMP", 82)

        def utilization(h: Any) -> dict[str, float]:
            u = nv.nvmlDeviceGetUtilizationRates(h)
            return {"util_pct": float(u.gpu), "mem_util_pct": float(u.memory)}

        return {
            "power": lambda h: {"power_w": nv.nvmlDeviceGetPowerUsage(h) / 1e3},
            "energy": lambda h: {"energy_mj": float(nv.nvmlDeviceGetTotalEnergyConsumption(h))},
            "utilization": utilization,
            "sm_clock": lambda h: {"sm_clock_mhz": float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))},
            "temp": lambda h: {"temp_c": float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))},
            "mem_temp": lambda h: {
                "mem_temp_c": _field_number(nv.nvmlDeviceGetFieldValues(h, [mem_temp_field])[0], nv)
            },
            "power_cap": lambda h: {"power_cap_w": nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3},
            "throttle": lambda h: {"throttle_reasons": float(events(h))},
        }

    # ------------------------------------------------------------------ Source

    @property
    def topology(self) -> Topology:
        return self._topology

    def read(self) -> Frame:
        """Poll every GPU once. Values NVML could not give are NaN; see :attr:`errors`."""
        if self._closed:
            raise SourceError("the NVML source is closed")
        nv = self._nvml
        n = len(self._handles)
        gpu: dict[str, NDArray[np.generic]] = {m: np.full(n, np.nan) for m in GPU_FLOAT_METRICS}
        lost_code = getattr(nv, "NVML_ERROR_GPU_IS_LOST", 15)
        unsupported_code = getattr(nv, "NVML_ERROR_NOT_SUPPORTED", 3)
        for i, handle in enumerate(self._handles):
            if i in self.lost:
                self.errors["GPU_IS_LOST"] += 1
                continue
            for what, reader in self._readers.items():
                if (i, what) in self.unsupported:
                    continue
                try:
                    values = reader(handle)
                except nv.NVMLError as exc:
                    self.errors[error_name(nv, exc)] += 1
                    code = getattr(exc, "value", None)
                    if code == unsupported_code:
                        self.unsupported.add((i, what))
                    elif code == lost_code:
                        self.lost.add(i)
                        break
                    continue
                for metric, v in values.items():
                    gpu[metric][i] = v
        gpu["last_xid"] = np.zeros(n, dtype=np.int64)  # not readable by polling; see the module docstring
        return Frame(t_s=self._clock.now_s(), source=self.name, levels={"gpu": gpu})

    def _shutdown(self) -> None:
        nvml_shutdown(self._nvml)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shutdown()

    def __enter__(self) -> NvmlSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
