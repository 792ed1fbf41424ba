"""SunSpec/Modbus batteries on loopback: a pymodbus server that behaves like a battery, the pysunspec2 client, and the
actuator that moves a faulted unit's share to the others. Every server binds an ephemeral port on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import sunspec2
from pymodbus.client import ModbusTcpClient

from powerplane.actuators.sunspec import (
    BASE_ADDR,
    SunSpecBattery,
    SunSpecBatteryServer,
    SunSpecBessActuator,
)
from powerplane.config.schema import BessUnitConfig
from powerplane.core.commands import BessSetpoint
from powerplane.core.errors import ActuatorError

KW = 1e3


def unit_cfg(name: str = "b1", **kw: float) -> BessUnitConfig:
    cfg: dict[str, object] = {"name": name, "hall": "h1", "power_kw": 100, "energy_kwh": 10, "response_time_s": 0.0}
    cfg.update(kw)
    return BessUnitConfig(**cfg)


def wait_for(cond: Callable[[], bool], timeout_s: float) -> bool:
    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith("sunspec-")]
    assert not left, f"threads left running: {left}"


@pytest.fixture
def server() -> Iterator[SunSpecBatteryServer]:
    with SunSpecBatteryServer(unit_cfg(), time_scale=20.0) as srv:
        yield srv


@pytest.fixture
def battery(server: SunSpecBatteryServer) -> Iterator[SunSpecBattery]:
    with SunSpecBattery("127.0.0.1", server.port, name="b1", timeout_s=0.3, revert_s=5) as bat:
        yield bat


# --------------------------------------------------------------------------------------------- register map


def test_register_map_follows_sunspec_definitions(server: SunSpecBatteryServer) -> None:
    """Read raw registers with pymodbus' own client: 'SunS', then each model's ID and L from pysunspec2's JSON."""
    json_dir = Path(sunspec2.__file__).parent / "models" / "json"
    client = ModbusTcpClient("127.0.0.1", port=server.port, timeout=1)
    assert client.connect()
    try:
        regs = client.read_holding_registers(BASE_ADDR, count=2).registers
        assert bytes.fromhex("".join(f"{r:04x}" for r in regs)) == b"SunS"
        addr, found = BASE_ADDR + 2, {}
        while True:
            mid, length = client.read_holding_registers(addr, count=2).registers
            if mid == 0xFFFF:
                break
            points = json.loads((json_dir / f"model_{mid}.json").read_text())["group"]["points"]
            assert length >= sum(p["size"] for p in points) - 2
            found[mid] = addr
            addr += 2 + length
        assert list(found) == [1, 704, 713, 802]
        # 713 SoC sits at the offset the standard gives it, scaled by Pct_SF (-2).
        offsets, off = {}, 0
        for p in json.loads((json_dir / "model_713.json").read_text())["group"]["points"]:
            offsets[p["name"]] = off
            off += p["size"]
        a713 = found[713]
        soc_raw = client.read_holding_registers(a713 + offsets["SoC"], count=1).registers[0]
        assert soc_raw == round(100 * 100 * server.soc)
        # A write to a read-only point is refused with a Modbus exception.
        assert client.write_register(a713 + offsets["SoC"], 1).isError()
    finally:
        client.close()


def test_discovery_reads_nameplate_and_soc_window(battery: SunSpecBattery) -> None:
    assert battery.model_ids == [1, 704, 713, 802]
    assert battery.models[1].Mn.value == "PowerPlane"
    assert battery.discharge_max_w == battery.charge_max_w == 100 * KW
    assert (battery.soc_min, battery.soc_max) == pytest.approx((0.10, 0.95))
    state = battery.state
    assert state is not None
    assert state.soc == pytest.approx(0.60) and state.soh == pytest.approx(1.0)
    assert state.energy_wh == pytest.approx(10_000) and state.available_wh == pytest.approx(5_000)


def test_missing_device_is_an_actuator_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bat = SunSpecBattery("127.0.0.1", port, timeout_s=0.2)
    with pytest.raises(ActuatorError, match="no answer"):
        bat.connect()
    assert bat.faulted


# --------------------------------------------------------------------------------------------- physics


def test_soc_moves_with_commanded_power(server: SunSpecBatteryServer, battery: SunSpecBattery) -> None:
    battery.set_power_w(100 * KW)
    t0, soc0 = time.perf_counter(), server.soc
    assert wait_for(lambda: battery.read_state().power_w == pytest.approx(100 * KW), 1.0)
    time.sleep(0.8)
    state = battery.read_state()
    elapsed_sim_s = (time.perf_counter() - t0) * server.time_scale
    # Discharging 100 kW from 10 kWh at eta 0.95: dSOC = P t / (eta E).
    expected = 100 * KW * elapsed_sim_s / (0.95 * 10 * 3.6e6)
    assert soc0 - state.soc == pytest.approx(expected, rel=0.2)
    assert state.available_wh == pytest.approx((state.soc - 0.10) * 10_000, abs=1)

    battery.set_power_w(-50 * KW)
    soc1 = battery.read_state().soc
    assert wait_for(lambda: battery.read_state().soc > soc1 + 0.01, 2.0)
    assert battery.read_state().power_w == pytest.approx(-50 * KW)


# --------------------------------------------------------------------------------------------- limits


def test_nameplate_and_soc_window_clip(battery: SunSpecBattery) -> None:
    r = battery.set_power_w(150 * KW)
    assert r.clipped and r.target_w == r.readback_w == 100 * KW
    r = battery.set_power_w(-30 * KW)
    assert not r.clipped and r.readback_w == -30 * KW

    with (
        SunSpecBatteryServer(unit_cfg(soc_initial=0.10)) as empty,
        SunSpecBattery("127.0.0.1", empty.port, timeout_s=0.3) as bat,
    ):
        assert bat.limits_w() == (-100 * KW, 0.0)
        r = bat.set_power_w(40 * KW)
        assert r.clipped and r.target_w == 0.0
        assert bat.set_power_w(-40 * KW).target_w == -40 * KW


def test_ramp_limits_the_step_from_the_last_setpoint(server: SunSpecBatteryServer) -> None:
    now = [0.0]
    with SunSpecBattery("127.0.0.1", server.port, timeout_s=0.3, ramp_w_per_s=10 * KW, clock=lambda: now[0]) as bat:
        now[0] = 2.0
        r = bat.set_power_w(80 * KW)
        assert r.clipped and r.target_w == 20 * KW
        now[0] = 3.0
        assert bat.limits_w() == (10 * KW, 30 * KW)
        assert bat.set_power_w(-80 * KW).target_w == 10 * KW
        assert server.setpoint_w == 10 * KW


# --------------------------------------------------------------------------------------------- faults


def test_misreported_setpoint_marks_the_unit_faulted(server: SunSpecBatteryServer, battery: SunSpecBattery) -> None:
    assert battery.set_power_w(20 * KW).readback_w == 20 * KW
    server.misreport_scale = 0.5
    with pytest.raises(ActuatorError, match="read-back 15000 W, commanded 30000 W"):
        battery.set_power_w(30 * KW)
    assert battery.faulted
    assert server.setpoint_w == 0.0  # the client asked the untrusted device to drop its setpoint
    with pytest.raises(ActuatorError, match="faulted"):
        battery.set_power_w(10 * KW)
    server.misreport_scale = 1.0
    battery.reset_fault()
    assert not battery.faulted and battery.set_power_w(10 * KW).readback_w == 10 * KW


def test_refused_and_unanswered_writes_fault(server: SunSpecBatteryServer, battery: SunSpecBattery) -> None:
    server.refuse_writes = True
    with pytest.raises(ActuatorError, match="refused"):
        battery.set_power_w(10 * KW)
    assert battery.faulted
    server.refuse_writes = False
    battery.reset_fault()

    server.silent = True
    t0 = time.perf_counter()
    with pytest.raises(ActuatorError, match="no answer"):
        battery.set_power_w(10 * KW)
    assert time.perf_counter() - t0 < 1.0
    server.silent = False
    battery.reset_fault()
    assert battery.set_power_w(10 * KW).readback_w == 10 * KW


# --------------------------------------------------------------------------------------------- watchdog


def test_heartbeat_keeps_the_setpoint_and_silence_reverts_it(server: SunSpecBatteryServer) -> None:
    with SunSpecBattery("127.0.0.1", server.port, timeout_s=0.3, revert_s=1, heartbeat_s=0.2) as bat:
        bat.set_power_w(50 * KW)
        bat.start_heartbeat()
        time.sleep(1.5)
        assert server.reverts == 0 and server.setpoint_w == 50 * KW
        assert bat.state is not None and bat.state.power_w == pytest.approx(50 * KW)
        bat.stop_heartbeat()  # PowerPlane goes silent
        assert wait_for(lambda: server.setpoint_w == 0.0, 2.0)
        assert server.reverts == 1
        assert wait_for(lambda: server.power_w == 0.0, 0.5)


# --------------------------------------------------------------------------------------------- actuator


@pytest.fixture
def fleet() -> Iterator[tuple[list[SunSpecBatteryServer], list[SunSpecBattery]]]:
    with ExitStack() as stack:
        servers = [stack.enter_context(SunSpecBatteryServer(unit_cfg(f"b{i}"))) for i in range(3)]
        units = [
            stack.enter_context(SunSpecBattery("127.0.0.1", s.port, name=f"b{i}", timeout_s=0.3))
            for i, s in enumerate(servers)
        ]
        yield servers, units


def test_actuator_clips_and_reports(fleet: tuple[list[SunSpecBatteryServer], list[SunSpecBattery]]) -> None:
    servers, units = fleet
    act = SunSpecBessActuator(units)
    res = act.apply([BessSetpoint(0, 150 * KW), BessSetpoint(1, -20 * KW), BessSetpoint(7, 1.0)])
    assert [r.applied for r in res] == [True, True, False]
    assert [r.clipped for r in res] == [True, False, False]
    assert "clipped" in res[0].detail and "no unit 7" in res[2].detail
    assert [s.setpoint_w for s in servers] == [100 * KW, -20 * KW, 0.0]


def test_refusing_unit_share_moves_to_the_others_by_headroom(
    fleet: tuple[list[SunSpecBatteryServer], list[SunSpecBattery]],
) -> None:
    servers, units = fleet
    act = SunSpecBessActuator(units)
    servers[1].refuse_writes = True
    res = act.apply([BessSetpoint(0, 80 * KW), BessSetpoint(1, 60 * KW), BessSetpoint(2, 40 * KW)])
    assert units[1].faulted and not res[1].applied and "refused" in res[1].detail
    # Headroom 20 kW and 60 kW: the 60 kW share splits 15 / 45.
    assert servers[0].setpoint_w == pytest.approx(95 * KW, abs=1)
    assert servers[2].setpoint_w == pytest.approx(85 * KW, abs=1)
    assert act.applied_w[0] + act.applied_w[2] == pytest.approx(180 * KW, abs=2)
    assert "took" in res[0].detail

    # Next cycle: the faulted unit is skipped up front; what does not fit stays unplaced, no unit goes past its limit.
    res = act.apply([BessSetpoint(i, 90 * KW) for i in range(3)])
    assert servers[0].setpoint_w == servers[2].setpoint_w == 100 * KW
    assert not res[1].applied and "70000 W could not be placed" in res[1].detail


def test_misreporting_unit_share_moves_too(fleet: tuple[list[SunSpecBatteryServer], list[SunSpecBattery]]) -> None:
    servers, units = fleet
    servers[2].misreport_scale = 0.0
    res = SunSpecBessActuator(units).apply([BessSetpoint(i, -30 * KW) for i in range(3)])
    assert units[2].faulted and "read-back" in res[2].detail
    assert servers[0].setpoint_w == servers[1].setpoint_w == pytest.approx(-45 * KW, abs=1)


def test_unit_that_stops_answering_is_faulted_and_covered(
    fleet: tuple[list[SunSpecBatteryServer], list[SunSpecBattery]],
) -> None:
    servers, units = fleet
    servers[0].silent = True
    res = SunSpecBessActuator(units).apply([BessSetpoint(i, 20 * KW) for i in range(3)])
    servers[0].silent = False
    assert units[0].faulted and not res[0].applied and "no answer" in res[0].detail
    assert servers[1].setpoint_w == servers[2].setpoint_w == pytest.approx(30 * KW, abs=1)


# --------------------------------------------------------------------------------------------- latency, shutdown


def test_setpoint_round_trip_latency(battery: SunSpecBattery) -> None:
    times = []
    for k in range(200):
        t0 = time.perf_counter()
        battery.set_power_w((k % 21 - 10) * KW)
        times.append(time.perf_counter() - t0)
    p50 = statistics.median(times)
    print(f"setpoint write + read-back round trip: p50 {p50 * 1e3:.2f} ms, max {max(times) * 1e3:.2f} ms")
    assert p50 < 0.050  # target: at most 50 ms (benchmarks/bench_sunspec.py records p50/p99)


def test_server_shuts_down_cleanly() -> None:
    srv = SunSpecBatteryServer(unit_cfg()).start()
    port = srv.port
    bat = SunSpecBattery("127.0.0.1", port, timeout_s=0.3).connect()
    srv.stop()
    with pytest.raises(ActuatorError):
        bat.read_state()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.3):
        pass
    bat.close()
