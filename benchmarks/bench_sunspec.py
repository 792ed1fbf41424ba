"""Benchmark the SunSpec/Modbus battery round trip on loopback.

A `SunSpecBatteryServer` (pymodbus, models 1/704/713/802, battery physics ticking every 100 ms) per unit, and the
pysunspec2-based `SunSpecBattery` client. Cases:
  setpoint round trip   `set_power_w`: write WSetEna/WSetMod/WSet (one request) + read model 704 back [<= 50 ms]
  state read            `read_state`: models 713 and 802 (two requests)
  actuator, 3 units     `SunSpecBessActuator.apply` with one setpoint per unit (three round trips in series)
Each case runs N times (default 500); p50 / p99 / max in milliseconds.

Usage: python benchmarks/bench_sunspec.py [--n 500] [--record]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from machine_info import add_table_row, machine
from powerplane.actuators.sunspec import SunSpecBattery, SunSpecBatteryServer, SunSpecBessActuator
from powerplane.config.schema import BessUnitConfig
from powerplane.core.clock import perf_counter_s
from powerplane.core.commands import BessSetpoint

HERE = Path(__file__).resolve().parent
HEADING = "## Devices: SunSpec/Modbus battery"
TABLE_HEADER = [
    "| date | machine | N | setpoint p50 ms | setpoint p99 ms | setpoint max ms | state read p50 ms "
    "| state read p99 ms | apply 3 units p50 ms | apply 3 units p99 ms |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def _times_ms(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for k in range(n):
        t0 = perf_counter_s()
        fn(k)
        out.append((perf_counter_s() - t0) * 1e3)
    return out


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def run(n: int) -> dict[str, list[float]]:
    units = [BessUnitConfig(name=f"b{i}", hall="h1", power_kw=500, energy_kwh=1000) for i in range(3)]
    with ExitStack() as stack:
        servers = [stack.enter_context(SunSpecBatteryServer(u)) for u in units]
        bats = [stack.enter_context(SunSpecBattery("127.0.0.1", s.port, name=s.serial, timeout_s=1.0)) for s in servers]
        act = SunSpecBessActuator(bats)
        b0 = bats[0]
        for k in range(20):  # warm-up
            b0.set_power_w(k * 1e3)
        setpoint = _times_ms(lambda k: b0.set_power_w(((k % 41) - 20) * 10e3), n)
        state = _times_ms(lambda k: b0.read_state(), n)
        apply = _times_ms(lambda k: act.apply([BessSetpoint(i, ((k + i) % 21 - 10) * 20e3) for i in range(3)]), n)
        b0.set_power_w(0.0)
    return {"setpoint": setpoint, "state": state, "apply": apply}


def record(r: dict[str, list[float]], n: int) -> Path:
    """Append a dated row under HEADING in BENCHMARKS.md (the section is created at the end if missing)."""
    path = HERE / "BENCHMARKS.md"
    s, st, ap = r["setpoint"], r["state"], r["apply"]
    row = (
        f"| {time.strftime('%Y-%m-%d')} | {machine()} | {n} | {statistics.median(s):.2f} | {_pct(s, 99):.2f} | "
        f"{max(s):.2f} | {statistics.median(st):.2f} | {_pct(st, 99):.2f} | {statistics.median(ap):.2f} | "
        f"{_pct(ap, 99):.2f} |"
    )
    note = (
        "Setpoint write (704 WSetEna/WSetMod/WSet, one request) + read-back of model 704, on loopback against "
        "`SunSpecBatteryServer` (pymodbus) with the pysunspec2 client; target <= 50 ms. "
        "`python benchmarks/bench_sunspec.py --record`. The machine's cores are shared with other work."
    )
    return add_table_row(path, HEADING, note, TABLE_HEADER, row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="round trips per case")
    ap.add_argument("--record", action="store_true", help="append a row to benchmarks/BENCHMARKS.md")
    args = ap.parse_args()
    r = run(args.n)
    print(f"N={args.n}; {machine()}")
    print(f"{'case':<34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    names = {"setpoint": "setpoint write + read-back", "state": "state read (713 + 802)", "apply": "actuator, 3 units"}
    for key, xs in r.items():
        print(f"{names[key]:<34} {statistics.median(xs):>8.2f} {_pct(xs, 99):>8.2f} {max(xs):>8.2f}")
    p99 = _pct(r["setpoint"], 99)
    print(f"target: setpoint round trip <= 50 ms: {'met' if p99 <= 50 else 'NOT met'} (p99 {p99:.2f} ms)")
    if args.record:
        print(f"recorded in {record(r, args.n)}")


if __name__ == "__main__":
    main()
