"""Batteries over Modbus TCP with SunSpec models: the client and the BESS actuator (the simulated device they are
tested against is in :mod:`powerplane.actuators.sunspec_device`).

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

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sunspec2 import device as ss_device
from sunspec2.modbus import modbus as ss_modbus
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP, SunSpecModbusClientError, SunSpecModbusValueError

from powerplane.actuators.sunspec_device import (  # noqa: F401  (SunSpecBatteryServer is re-exported)
    _ENABLED,
    _WSET_MOD_WATTS,
    BASE_ADDR,
    MODEL_IDS,
    SunSpecBatteryServer,
)
from powerplane.core.clock import perf_counter_s
from powerplane.core.commands import BessSetpoint, CommandResult
from powerplane.core.errors import ActuatorError


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
