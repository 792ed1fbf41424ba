"""A simulated SunSpec battery served over Modbus TCP (pymodbus) on loopback, for tests, demos and benchmarks.

The register map (base 40000: 'SunS', models 1, 704, 713, 802) is laid out from pysunspec2's own model
definitions; PowerPlane's battery physics moves its SOC with the commanded power, and the 704 reversion watchdog
returns it to 0 W when no write arrives in time. The client and actuator are in :mod:`powerplane.actuators.sunspec`.
"""

from __future__ import annotations

import asyncio
import math
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from sunspec2 import device as ss_device

from powerplane.config.schema import BessUnitConfig
from powerplane.core.clock import perf_counter_s
from powerplane.core.errors import ActuatorError
from powerplane.physics.battery import BessParams, step

BASE_ADDR = 40000
MODEL_IDS = (1, 704, 713, 802)
_WSET_MOD_WATTS = 1
_ENABLED = 1
_FUNC_WRITE = {6, 16, 22, 23}


def _sf_for(max_abs: float, limit: int) -> int:
    """Smallest power-of-ten scale factor (>= 0) that fits ``max_abs`` into an integer register of ``limit``."""
    sf = 0
    while max_abs / 10.0**sf > limit:
        sf += 1
    return sf


def _to_regs(data: bytes) -> list[int]:
    return list(struct.unpack(f">{len(data) // 2}H", data))


def _to_bytes(regs: Sequence[int]) -> bytes:
    return struct.pack(f">{len(regs)}H", *regs)


def _iter_points(group: Any) -> Iterator[Any]:
    yield from group.points.values()
    for sub in group.groups.values():
        for g in sub if isinstance(sub, list) else [sub]:
            yield from _iter_points(g)


# ------------------------------------------------------------------------------------------------------- server


class _RegisterMap:
    """The device's holding registers from ``BASE_ADDR``, built from pysunspec2 models (one per model id)."""

    def __init__(self, model_ids: Sequence[int]) -> None:
        self.models: dict[int, Any] = {}
        self.addr: dict[int, int] = {}
        addr = BASE_ADDR + 2
        for mid in model_ids:
            model = ss_device.Model(model_id=mid)
            model.points["ID"].value = mid
            model.points["L"].value = model.len - 2
            self.models[mid] = model
            self.addr[mid] = addr
            addr += model.len
        self.regs = [0] * (addr + 2 - BASE_ADDR)
        self.regs[0:2] = _to_regs(b"SunS")
        self.regs[-2:] = [0xFFFF, 0]  # end model: ID 0xFFFF, L 0
        self.writable = [False] * len(self.regs)
        for mid, model in self.models.items():
            base = self.addr[mid] - BASE_ADDR
            for p in _iter_points(model):
                if p.pdef.get("access") == "RW":
                    self.writable[base + p.offset : base + p.offset + p.len] = [True] * p.len
            self.encode(mid)

    def encode(self, mid: int) -> None:
        """Model values -> registers."""
        start = self.addr[mid] - BASE_ADDR
        model = self.models[mid]
        self.regs[start : start + model.len] = _to_regs(model.get_mb())

    def decode(self, mid: int) -> None:
        """Registers -> model values."""
        start = self.addr[mid] - BASE_ADDR
        model = self.models[mid]
        model.set_mb(_to_bytes(self.regs[start : start + model.len]), dirty=False)

    def span(self, mid: int, point: str) -> range:
        p = self.models[mid].points[point]
        start = self.addr[mid] + p.offset
        return range(start, start + p.len)

    def touched(self, address: int, count: int) -> set[int]:
        """Model ids whose registers overlap ``[address, address + count)``."""
        return {
            mid
            for mid, m in self.models.items()
            if address < self.addr[mid] + m.len and self.addr[mid] < address + count
        }


class SunSpecBatteryServer:
    """A SunSpec battery served by pymodbus on loopback; its SOC moves with the power it is commanded.

    Power follows ``WSet`` (when ``WSetEna`` is enabled; ``WSetMod`` watts or percent of nameplate) through the plant
    model :func:`powerplane.physics.battery.step` every ``tick_s`` of real time; ``time_scale`` multiplies the plant's
    time step so a test sees SOC move by whole percent in a second. The watchdog runs on real time (it guards the
    link, not the cells). The server runs its own asyncio loop in one background thread; every register change
    happens there, so no locks are needed.

    Fault knobs, safe to flip from any thread: ``refuse_writes`` (answer writes with Modbus exception 4, device
    failure), ``misreport_scale`` (accept a ``WSet`` write but hold and report ``WSet * misreport_scale``),
    ``silent`` (stop answering; requests hang until the client times out).

    >>> unit = BessUnitConfig(name="b1", hall="h1", power_kw=100, energy_kwh=10)
    >>> with SunSpecBatteryServer(unit) as srv:
    ...     srv.port > 0
    True
    """

    def __init__(
        self,
        unit: BessUnitConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        time_scale: float = 1.0,
        tick_s: float = 0.1,
        soh: float = 1.0,
        dc_voltage_v: float = 800.0,
        serial: str | None = None,
        clock: Callable[[], float] = perf_counter_s,
    ) -> None:
        self.unit = unit
        self.host = host
        self.port = port
        self.time_scale = float(time_scale)
        self.tick_s = float(tick_s)
        self.soh = float(soh)
        self.dc_voltage_v = float(dc_voltage_v)
        self.serial = serial or f"PP-{unit.name}"
        self._clock = clock
        self._params = BessParams.from_config([unit])
        self._soc = np.array([unit.soc_initial])
        self._power = np.zeros(1)
        self.refuse_writes = False
        self.misreport_scale = 1.0
        self._silent = False
        self.writes = 0  # accepted write requests
        self.reverts = 0  # watchdog reversions
        self._map = _RegisterMap(MODEL_IDS)
        self._init_points()
        self._last_ctl_s: float | None = None
        self._t_last_s = 0.0
        self._hb_s = 0.0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_ev: asyncio.Event | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ---- state seen from outside (read from the test thread; floats are replaced atomically)
    @property
    def soc(self) -> float:
        return float(self._soc[0])

    @property
    def power_w(self) -> float:
        return float(self._power[0])

    @property
    def setpoint_w(self) -> float:
        return self._setpoint_w()

    @property
    def silent(self) -> bool:
        return self._silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self._silent = bool(value)

    def _init_points(self) -> None:
        u, m = self.unit, self._map.models
        pmax_w, energy_wh = u.power_kw * 1e3, u.energy_kwh * 1e3
        ah = energy_wh / self.dc_voltage_v
        common = m[1].points
        common["Mn"].value, common["Md"].value = "PowerPlane", "SimBESS"
        common["Vr"].value, common["SN"].value, common["DA"].value = "1.0", self.serial, 1
        ctl = m[704].points
        for name, value in [("WSetEna", 0), ("WSetMod", _WSET_MOD_WATTS), ("WSet", 0), ("WSetRvrt", 0)]:
            ctl[name].value = value
        for name, value in [("WSetEnaRvrt", 0), ("WSetRvrtTms", 0), ("WSetRvrtRem", 0), ("WSetPct", 0)]:
            ctl[name].value = value
        for name, value in [("WSet_SF", 0), ("WSetPct_SF", -2), ("WMaxLimPct_SF", -2), ("PF_SF", -3)]:
            ctl[name].value = value
        ctl["VarSet_SF"].value, ctl["VarSetPct_SF"].value = 0, -2
        cap = m[713].points
        cap["WH_SF"].value, cap["Pct_SF"].value = _sf_for(energy_wh, 65534), -2
        cap["WHRtg"].cvalue = energy_wh
        bat = m[802].points
        sfs = {
            "AHRtg_SF": _sf_for(ah, 65534), "WHRtg_SF": _sf_for(energy_wh, 65534),
            "WChaDisChaMax_SF": _sf_for(pmax_w, 65534), "SoC_SF": -2, "SoH_SF": -2, "DoD_SF": -2, "V_SF": -1,
            "CellV_SF": -3, "A_SF": _sf_for(pmax_w / self.dc_voltage_v * 10, 32767) - 1,
            "AMax_SF": _sf_for(pmax_w / self.dc_voltage_v, 65534), "W_SF": _sf_for(pmax_w, 32767),
        }  # fmt: skip
        for name, value in sfs.items():
            bat[name].value = value
        bat["AHRtg"].cvalue, bat["WHRtg"].cvalue = ah, energy_wh
        bat["WChaRteMax"].cvalue = bat["WDisChaRteMax"].cvalue = pmax_w
        bat["SoCMin"].cvalue, bat["SoCMax"].cvalue = 100 * u.soc_min, 100 * u.soc_max
        bat["AChaMax"].cvalue = bat["ADisChaMax"].cvalue = pmax_w / self.dc_voltage_v
        bat["V"].cvalue = self.dc_voltage_v
        for name, value in [("LocRemCtl", 0), ("Typ", 4 if u.chemistry == "LFP" else 1), ("State", 3)]:
            bat[name].value = value
        for name in ("Evt1", "Evt2", "EvtVnd1", "EvtVnd2", "AlmRst", "Hb", "CtrlHb", "NCyc"):
            bat[name].value = 0
        bat["SetOp"].value, bat["SetInvState"].value = 1, 3
        for mid in MODEL_IDS:
            self._map.encode(mid)
        self._publish_state()

    def _setpoint_w(self) -> float:
        ctl = self._map.models[704].points
        if ctl["WSetEna"].value != _ENABLED:
            return 0.0
        if ctl["WSetMod"].value == _WSET_MOD_WATTS:
            return float(ctl["WSet"].cvalue or 0.0)
        return float(ctl["WSetPct"].cvalue or 0.0) / 100.0 * self.unit.power_kw * 1e3

    def _publish_state(self) -> None:
        """Plant state -> 713 and 802 points -> registers."""
        u, soc, p = self.unit, self.soc, self.power_w
        energy_wh = u.energy_kwh * 1e3
        cap = self._map.models[713].points
        cap["WHAvail"].cvalue = max(soc - u.soc_min, 0.0) * energy_wh
        cap["SoC"].cvalue, cap["SoH"].cvalue = 100 * soc, 100 * self.soh
        cap["Sta"].value = 0
        bat = self._map.models[802].points
        bat["SoC"].cvalue, bat["SoH"].cvalue, bat["DoD"].cvalue = 100 * soc, 100 * self.soh, 100 * (1 - soc)
        bat["W"].cvalue = p
        bat["A"].cvalue = p / self.dc_voltage_v
        full, empty = soc >= u.soc_max - 1e-6, soc <= u.soc_min + 1e-6
        bat["ChaSt"].value = 3 if p > 0.5 else 4 if p < -0.5 else 5 if full else 2 if empty else 6
        self._map.encode(713)
        self._map.encode(802)

    # ---- the device's behaviour, all on the server loop
    def _tick(self) -> None:
        now = self._clock()
        dt_real = now - self._t_last_s
        self._t_last_s = now
        ctl = self._map.models[704].points
        tms = int(ctl["WSetRvrtTms"].value or 0)
        if tms > 0 and self._last_ctl_s is not None:
            remaining = tms - (now - self._last_ctl_s)
            if remaining <= 0:
                ctl["WSetEna"].value = ctl["WSetEnaRvrt"].value or 0
                ctl["WSetMod"].value = _WSET_MOD_WATTS
                ctl["WSet"].value = ctl["WSetRvrt"].value or 0
                self._last_ctl_s = None
                self.reverts += 1
            ctl["WSetRvrtRem"].value = max(math.ceil(remaining), 0)
            self._map.encode(704)
        if dt_real > 0:
            self._power, self._soc = step(
                np.array([self._setpoint_w()]), self._power, self._soc, self._params, dt_real * self.time_scale
            )
        if now - self._hb_s >= 1.0:
            self._hb_s = now
            hb = self._map.models[802].points["Hb"]
            hb.value = (int(hb.value or 0) + 1) % 65536
        self._publish_state()

    def _on_write(self, address: int, values: list[int]) -> ExcCodes | None:
        m = self._map
        lo = address - BASE_ADDR
        if lo < 0 or lo + len(values) > len(m.regs) or not all(m.writable[lo : lo + len(values)]):
            return ExcCodes.ILLEGAL_ADDRESS
        if self.refuse_writes:
            return ExcCodes.DEVICE_FAILURE
        m.regs[lo : lo + len(values)] = values
        touched = m.touched(address, len(values))
        for mid in touched:
            m.decode(mid)
        span = range(address, address + len(values))
        ctl_points = ("WSetEna", "WSetMod", "WSet", "WSetPct")
        if 704 in touched and any(set(span) & set(m.span(704, p)) for p in ctl_points):
            self._last_ctl_s = self._clock()
            if self.misreport_scale != 1.0 and set(span) & set(m.span(704, "WSet")):
                wset = m.models[704].points["WSet"]
                wset.value = round((wset.value or 0) * self.misreport_scale)
                m.encode(704)
        if 802 in touched and set(span) & set(m.span(802, "CtrlHb")):
            self._last_ctl_s = self._clock()
        self.writes += 1
        return None

    async def _action(
        self,
        func_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        while self._silent and not self._stopping:
            await asyncio.sleep(0.005)
        if set_values is not None and func_code in _FUNC_WRITE:
            result = self._on_write(address, [int(v) for v in set_values])
            if result is not None:
                return result
            # The device may hold something other than what was written (misreport): write its view.
            lo = address - BASE_ADDR
            cast(list[int], set_values)[:] = self._map.regs[lo : lo + len(set_values)]
            return None
        off = address - start_address
        lo = address - BASE_ADDR
        registers[off : off + count] = self._map.regs[lo : lo + count]
        return None

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self._tick()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_ev = asyncio.Event()
        image = SimData(address=BASE_ADDR, values=list(self._map.regs), datatype=DataType.REGISTERS)
        server = ModbusTcpServer(SimDevice(id=0, simdata=[image], action=self._action), address=(self.host, self.port))
        await server.serve_forever(background=True)
        self.port = int(cast(asyncio.Server, server.transport).sockets[0].getsockname()[1])
        self._t_last_s = self._hb_s = self._clock()
        ticker = asyncio.create_task(self._ticker())
        self._ready.set()
        try:
            await self._stop_ev.wait()
        finally:
            ticker.cancel()
            self._stopping = True
            await server.shutdown()
            await asyncio.sleep(0)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    def start(self, timeout_s: float = 5.0) -> SunSpecBatteryServer:
        """Start serving; returns once the port is bound (``self.port`` is then the real port)."""
        self._thread = threading.Thread(target=self._run, name=f"sunspec-sim-{self.serial}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            raise ActuatorError(f"SunSpec simulator {self.serial} did not start: {self._error!r}")
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listener and every connection, and join the thread."""
        if self._loop is not None and self._stop_ev is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop_ev.set)
            self._thread.join(timeout_s)
        self._thread = None

    def __enter__(self) -> SunSpecBatteryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------------- client
