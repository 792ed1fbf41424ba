"""Batteries over Modbus TCP with SunSpec models: a simulated device, a client, and the BESS actuator.

Register map (SunSpec base address 40000): ``'SunS'``, then model 1 (common), 704 (DER AC controls: ``WSetEna``,
``WSetMod``, ``WSet``, reversion ``WSetRvrt``/``WSetEnaRvrt``/``WSetRvrtTms``), 713 (DER storage capacity: ``WHRtg``,
``WHAvail``, ``SoC``, ``SoH``, ``Sta``) and 802 (battery base: nameplate ``WChaRteMax``/``WDisChaRteMax``, the SOC
window ``SoCMin``/``SoCMax``, measured ``W``, heartbeats ``Hb``/``CtrlHb``), then the end marker. Point offsets, types
and "not implemented" encodings all come from pysunspec2's bundled model definitions (``sunspec2/models/json``), on
both sides, so server and client agree with the standard by construction.

Signs: ``WSet`` and 802 ``W`` are positive when discharging, like every battery power in PowerPlane.

Watchdog: the standard 704 reversion. The client writes ``WSetRvrtTms`` (whole seconds), ``WSetRvrt = 0`` and
``WSetEnaRvrt = 1``; the device reverts to 0 W when neither the ``WSetEna``/``WSetMod``/``WSet`` block nor 802
``CtrlHb`` has been written for ``WSetRvrtTms`` seconds (``WSetRvrtRem`` counts down). The client's heartbeat thread
rewrites the setpoint well within that time, so the device only reverts when PowerPlane goes silent.

- :class:`SunSpecBatteryServer`: a pymodbus TCP server on loopback that behaves like a battery: its power follows
  ``WSet`` through :func:`powerplane.physics.battery.step` and its SOC moves with it (time can be sped up), with
  fault knobs (refuse writes, misreport the setpoint, stop answering). For tests, benchmarks and the twin.
- :class:`SunSpecBattery`: the client. It discovers the models with pysunspec2's own Modbus client
  (``SunSpecModbusClientDeviceTCP``: plain sockets, so it does not depend on the pymodbus version), reads state,
  writes setpoints within limits and verifies them by read-back; a unit that refuses, misreports or stops answering
  is marked faulted.
- :class:`SunSpecBessActuator`: applies :class:`~powerplane.core.commands.BessSetpoint` commands across units and moves
  a faulted unit's share to the healthy ones by headroom.

The server uses pymodbus' ``SimDevice`` with an ``action`` hook (pymodbus >= 3.16; the older ``ModbusDeviceContext``
data blocks are copied once into the new runtime there, so they cannot be updated live).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from sunspec2 import device as ss_device
from sunspec2.modbus import modbus as ss_modbus
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP, SunSpecModbusClientError, SunSpecModbusValueError

from powerplane.config.schema import BessUnitConfig
from powerplane.core.clock import perf_counter_s
from powerplane.core.commands import BessSetpoint, CommandResult
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


@dataclass(frozen=True)
class BatteryState:
    """One reading of a unit: SOC and SoH as fractions, power [W] positive when discharging."""

    soc: float
    soh: float
    power_w: float
    energy_wh: float
    available_wh: float
    t_s: float


@dataclass(frozen=True)
class SetpointResult:
    """What a setpoint write did: ``target_w`` after limits, ``readback_w`` what the device holds."""

    requested_w: float
    target_w: float
    readback_w: float
    clipped: bool
    detail: str = ""


class SunSpecBattery:
    """One battery unit over Modbus TCP (SunSpec 704 control, 713 and 802 state), via pysunspec2's client.

    ``set_power_w`` clips to the nameplate read from the device (802 ``WDisChaRteMax``/``WChaRteMax``), the SOC
    window (802 ``SoCMin``/``SoCMax`` and reserves, tightened by ``soc_min``/``soc_max`` when given) and the configured
    ramp, writes ``WSetEna``/``WSetMod``/``WSet`` in one request and reads the block back; a refusal, a read-back
    beyond ``tolerance_w`` or no answer marks the unit faulted and raises :class:`ActuatorError`. A faulted unit takes
    no setpoints until :meth:`reset_fault`. All device I/O goes through one lock (heartbeat thread included).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str = "",
        unit_id: int = 1,
        timeout_s: float = 0.5,
        revert_s: int = 5,
        heartbeat_s: float | None = None,
        ramp_w_per_s: float | None = None,
        soc_min: float | None = None,
        soc_max: float | None = None,
        tolerance_w: float | None = None,
        state_max_age_s: float = 1.0,
        clock: Callable[[], float] = perf_counter_s,
    ) -> None:
        if revert_s < 1:
            raise ValueError("revert_s must be a whole number of seconds >= 1 (SunSpec WSetRvrtTms)")
        self.host, self.port = host, port
        self.name = name or f"{host}:{port}"
        self.revert_s = int(revert_s)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else self.revert_s / 3.0
        self.ramp_w_per_s = ramp_w_per_s
        self._soc_min_cfg, self._soc_max_cfg = soc_min, soc_max
        self._tolerance_cfg = tolerance_w
        self.state_max_age_s = state_max_age_s
        self._clock = clock
        self._dev: Any = SunSpecModbusClientDeviceTCP(slave_id=unit_id, ipaddr=host, ipport=port, timeout=timeout_s)
        self._lock = threading.RLock()
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self.faulted = False
        self.fault_reason = ""
        self.discharge_max_w = self.charge_max_w = 0.0
        self.soc_min, self.soc_max = 0.0, 1.0
        self.tolerance_w = 1.0
        self.setpoint_w = 0.0  # last verified target
        self._t_setpoint_s = clock()
        self.state: BatteryState | None = None
        self.models: dict[int, Any] = {}

    # ---- connection and discovery
    def connect(self) -> SunSpecBattery:
        """Open the link, walk the models from 40000, read nameplate and state, arm the device's watchdog."""
        with self._lock:
            self._io("connect", self._discover)
            self.faulted, self.fault_reason = False, ""
        self.read_state()
        return self

    def _discover(self) -> None:
        self._dev.connect()
        self._dev.scan(connect=False)
        missing = [mid for mid in (704, 713, 802) if mid not in self._dev.models]
        if missing:
            raise ActuatorError(f"{self.name}: SunSpec models {missing} not found (need 704, 713, 802)")
        self.models = {mid: self._dev.models[mid][0] for mid in (1, 704, 713, 802) if mid in self._dev.models}
        bat, ctl = self.models[802], self.models[704]
        self.discharge_max_w = float(bat.WDisChaRteMax.cvalue)
        self.charge_max_w = float(bat.WChaRteMax.cvalue)
        lows = [v / 100.0 for v in (bat.SoCMin.cvalue, bat.SoCRsvMin.cvalue) if v is not None]
        highs = [v / 100.0 for v in (bat.SoCMax.cvalue, bat.SocRsvMax.cvalue) if v is not None]
        self.soc_min = max([*lows, self._soc_min_cfg or 0.0])
        self.soc_max = min([*highs, self._soc_max_cfg if self._soc_max_cfg is not None else 1.0])
        lsb = 10.0 ** float(ctl.WSet_SF.value or 0)
        self.tolerance_w = self._tolerance_cfg if self._tolerance_cfg is not None else lsb
        ctl.WSetRvrt.cvalue = 0
        ctl.WSetEnaRvrt.value = _ENABLED
        ctl.WSetRvrtTms.value = self.revert_s
        ctl.write()

    @property
    def model_ids(self) -> list[int]:
        """Model ids found on the device, in address order."""
        return [int(m.model_id) for m in self._dev.model_list]

    def close(self) -> None:
        self.stop_heartbeat()
        with self._lock:
            self._dev.disconnect()

    def __enter__(self) -> SunSpecBattery:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _io(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run device I/O; map pysunspec2 errors onto ActuatorError and mark the unit faulted."""
        try:
            return fn()
        except ActuatorError as exc:
            self._fault(str(exc))
            raise
        except ss_modbus.ModbusClientException as exc:
            self._fault(f"{self.name}: {what} refused: {exc}")
        except (ss_device.ModelError, SunSpecModbusValueError) as exc:
            self._fault(f"{self.name}: {what} got data that does not fit its SunSpec model: {exc}")
        except (ss_modbus.ModbusClientError, SunSpecModbusClientError, OSError) as exc:
            self._fault(f"{self.name}: {what} got no answer: {exc}")
            self._dev.disconnect()  # a late answer must not be taken for the next one
        raise ActuatorError(self.fault_reason)

    def _fault(self, reason: str) -> None:
        self.faulted, self.fault_reason = True, reason

    def reset_fault(self) -> None:
        """Reconnect and rediscover; clears the fault when the device answers again."""
        with self._lock:
            self._dev.disconnect()
        self.connect()

    # ---- state and limits
    def read_state(self) -> BatteryState:
        with self._lock:
            if not self.models:
                raise ActuatorError(f"{self.name}: not connected")
            cap, bat = self.models[713], self.models[802]

            def read() -> BatteryState:
                cap.read()
                bat.read()
                return BatteryState(
                    soc=float(cap.SoC.cvalue) / 100.0,
                    soh=float(cap.SoH.cvalue if cap.SoH.cvalue is not None else 100.0) / 100.0,
                    power_w=float(bat.W.cvalue),
                    energy_wh=float(cap.WHRtg.cvalue),
                    available_wh=float(cap.WHAvail.cvalue),
                    t_s=self._clock(),
                )

            self.state = self._io("state read", read)
            return self.state

    def limits_w(self) -> tuple[float, float]:
        """Lowest and highest power [W] the next setpoint may have (charge negative).

        Nameplate and the SOC window bound it hard; the ramp bounds it around the last setpoint, inside those. The SOC
        is the last reading, read again first when older than ``state_max_age_s`` (the heartbeat keeps it fresh).
        """
        with self._lock:
            if self.state is None or self._clock() - self.state.t_s > self.state_max_age_s:
                self.read_state()
            soc = self.state.soc if self.state is not None else self.soc_min
            hi = self.discharge_max_w if soc > self.soc_min else 0.0
            lo = -self.charge_max_w if soc < self.soc_max else 0.0
            if self.ramp_w_per_s is not None:
                reach = self.ramp_w_per_s * max(self._clock() - self._t_setpoint_s, 0.0)
                lo, hi = min(max(self.setpoint_w - reach, lo), hi), max(min(self.setpoint_w + reach, hi), lo)
            return lo, hi

    # ---- setpoints
    def set_power_w(self, power_w: float) -> SetpointResult:
        """Command ``power_w`` [W] (discharge positive) within limits and verify it by read-back."""
        with self._lock:
            if self.faulted:
                raise ActuatorError(f"{self.name} is faulted: {self.fault_reason}")
            lo, hi = self.limits_w()
            target = min(max(float(power_w), lo), hi)
            readback = self._write_verified(target)
            self.setpoint_w, self._t_setpoint_s = target, self._clock()
            clipped = abs(target - power_w) > self.tolerance_w
            detail = f"clipped to [{lo:.0f}, {hi:.0f}] W" if clipped else ""
            return SetpointResult(float(power_w), target, readback, clipped, detail)

    def _write_verified(self, target_w: float) -> float:
        ctl = self.models[704]

        def write_and_read() -> float:
            ctl.WSetEna.value = _ENABLED
            ctl.WSetMod.value = _WSET_MOD_WATTS
            ctl.WSet.cvalue = target_w
            ctl.write()
            ctl.read()
            return float(ctl.WSet.cvalue) if ctl.WSetEna.value == _ENABLED else float("nan")

        readback = self._io("setpoint write", write_and_read)
        if not abs(readback - target_w) <= self.tolerance_w:
            self._fault(f"{self.name}: setpoint read-back {readback:.0f} W, commanded {target_w:.0f} W")
            self._disable_quietly()
            raise ActuatorError(self.fault_reason)
        return readback

    def _disable_quietly(self) -> None:
        """Best effort: ask a misreporting device to drop its setpoint (its watchdog does it otherwise)."""
        ctl = self.models[704]
        try:
            ctl.WSetEna.value = 0
            ctl.WSetEna.write()
        except Exception:  # the unit is already faulted; nothing more to report
            self._dev.disconnect()

    # ---- heartbeat
    def heartbeat(self) -> None:
        """Refresh the setpoint (feeds the device's watchdog), verify it, and refresh the state reading."""
        with self._lock:
            if self.faulted:
                return
            self._write_verified(self.setpoint_w)
            self.read_state()

    def start_heartbeat(self) -> None:
        if self._hb_thread is not None:
            return
        self._hb_stop.clear()
        self._hb_thread = threading.Thread(target=self._heartbeat_loop, name=f"sunspec-hb-{self.name}", daemon=True)
        self._hb_thread.start()

    def stop_heartbeat(self) -> None:
        if self._hb_thread is None:
            return
        self._hb_stop.set()
        self._hb_thread.join()
        self._hb_thread = None

    def _heartbeat_loop(self) -> None:
        while not self._hb_stop.wait(self.heartbeat_s):
            with contextlib.suppress(ActuatorError):  # recorded as the unit's fault; the actuator moves its share
                self.heartbeat()


# ------------------------------------------------------------------------------------------------------ actuator


class SunSpecBessActuator:
    """Applies :class:`BessSetpoint` commands to SunSpec units (``command.unit`` indexes ``units``).

    Each command is clipped to its unit's limits. A unit that is faulted, refuses or misreports gets nothing; its
    (clipped) share is spread over the healthy units in proportion to their remaining headroom in that direction,
    never beyond any unit's limits. What each unit finally holds is in :attr:`applied_w`.
    """

    def __init__(self, units: list[SunSpecBattery]) -> None:
        self.units = units
        self.applied_w: dict[int, float] = {}

    def apply(self, commands: list[BessSetpoint]) -> list[CommandResult]:
        n = len(self.units)
        limits: dict[int, tuple[float, float]] = {}
        for i, u in enumerate(self.units):
            if not u.faulted:
                with contextlib.suppress(ActuatorError):  # a unit that cannot be read is now faulted
                    limits[i] = u.limits_w()
        target: dict[int, float] = {}
        notes: dict[int, list[str]] = {i: [] for i in range(n)}
        clipped: dict[int, bool] = {}
        shortfall = 0.0
        for c in commands:
            if not 0 <= c.unit < n:
                continue
            if c.unit not in limits:
                notes[c.unit].append(f"faulted: {self.units[c.unit].fault_reason}")
                shortfall += c.power_w
                continue
            lo, hi = limits[c.unit]
            target[c.unit] = min(max(c.power_w, lo), hi)
            clipped[c.unit] = abs(target[c.unit] - c.power_w) > self.units[c.unit].tolerance_w
            if clipped[c.unit]:
                notes[c.unit].append(f"clipped to [{lo:.0f}, {hi:.0f}] W")
        failed: set[int] = set()
        pending = dict(target)
        while pending:
            for i, w in pending.items():
                try:
                    self.units[i].set_power_w(w)
                    self.applied_w[i] = w
                except ActuatorError as exc:
                    failed.add(i)
                    notes[i].append(f"faulted: {exc}")
                    shortfall += w
                    target.pop(i)
            pending, shortfall = self._spread(shortfall, target, limits, failed, notes)
        if abs(shortfall) > 1e-3:
            for i in failed | {c.unit for c in commands if 0 <= c.unit < n and c.unit not in limits}:
                notes[i].append(f"{shortfall:.0f} W could not be placed on healthy units")
        return [self._result(c, n, target, clipped, notes, failed, limits) for c in commands]

    def _spread(
        self,
        shortfall: float,
        target: dict[int, float],
        limits: dict[int, tuple[float, float]],
        failed: set[int],
        notes: dict[int, list[str]],
    ) -> tuple[dict[int, float], float]:
        """New targets for healthy units that take ``shortfall`` [W] by headroom, and what is left over."""
        if abs(shortfall) <= 1e-3:
            return {}, 0.0
        healthy = [i for i in limits if i not in failed]
        current = {i: target.get(i, self.applied_w.get(i, self.units[i].setpoint_w)) for i in healthy}
        room = {i: (limits[i][1] - current[i]) if shortfall > 0 else (current[i] - limits[i][0]) for i in healthy}
        room = {i: r for i, r in room.items() if r > 1e-3}
        total = sum(room.values())
        if total <= 0:
            return {}, shortfall
        moved = min(abs(shortfall), total)
        sign = 1.0 if shortfall > 0 else -1.0
        out = {}
        for i, r in room.items():
            extra = sign * moved * r / total
            out[i] = target[i] = current[i] + extra
            notes[i].append(f"took {extra:+.0f} W from faulted units")
        return out, shortfall - sign * moved

    def _result(
        self,
        c: BessSetpoint,
        n: int,
        target: dict[int, float],
        clipped: dict[int, bool],
        notes: dict[int, list[str]],
        failed: set[int],
        limits: dict[int, tuple[float, float]],
    ) -> CommandResult:
        if not 0 <= c.unit < n:
            return CommandResult(c, applied=False, detail=f"no unit {c.unit} (have {n})")
        applied = c.unit in limits and c.unit not in failed
        held = f"holds {target[c.unit]:.0f} W" if applied else "holds nothing new"
        detail = "; ".join([held, *notes[c.unit]])
        return CommandResult(c, applied=applied, clipped=clipped.get(c.unit, False), detail=detail)
