"""Recompute the wear-cost calibration shipped in powerplane.physics.aging with NREL BLAST-Lite.

Needs BLAST-Lite (`pip install blast-lite --no-deps`; it pins numpy<2 and pulls nrel-rex, which PowerPlane does
not need). Prints the table to paste into CALIBRATED_COST_PER_KWH_AT_250.
"""

from __future__ import annotations

from powerplane.physics import aging


def main() -> None:
    if not aging.blast_available():
        raise SystemExit("BLAST-Lite is not installed: pip install blast-lite --no-deps")
    print("temp_c  cost_per_kwh_at_250")
    for temp in (15.0, 25.0, 35.0, 45.0):
        aging.throughput_cost_per_kwh.cache_clear()
        print(f"{temp:6.1f}  {aging.throughput_cost_per_kwh(250.0, temp):.6f}")


if __name__ == "__main__":
    main()
