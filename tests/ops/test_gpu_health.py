"""The twin's DCGM-style GPU health counters, as the health-check rules read them."""

from __future__ import annotations

import numpy as np
import pytest

from powerplane.twin.gpu_health import GpuHealth
from powerplane.twin.workload import XidEvent

T0 = 1_732_390_200.0


def test_xid_events_drive_the_counters_and_a_reset_clears_them() -> None:
    h = GpuHealth(16, np.random.default_rng(0))
    events = [XidEvent(T0, 0, 3, 48), XidEvent(T0, 1, 5, 79), XidEvent(T0, 2, 7, 74), XidEvent(T0, 3, 9, 92)]
    h.advance(T0, events)
    h.advance(T0 + 10, events)  # each event is counted once
    assert h.xid_total[[3, 5, 7, 9]].tolist() == [1, 1, 1, 1] and h.xid_total.sum() == 4
    assert h.ecc_dbe_vol[3] == 1 and h.ecc_sbe_vol[9] == 1000 and h.off_bus[5]
    assert h.nvlink_crc_total[7] == pytest.approx(4000.0)  # 400/s for 10 s
    gpu = {"power_w": np.full(16, 500.0), "throttle_reasons": np.zeros(16, dtype=np.int64),
           "last_xid": np.zeros(16, dtype=np.int64)}  # fmt: skip
    h.inject("power_brake", [1, 2], T0 + 10, duration_s=5)
    h.apply(gpu)
    assert np.isnan(gpu["power_w"][5]) and np.isfinite(np.delete(gpu["power_w"], 5)).all()  # off the bus
    assert gpu["xid_total"][5] == 1  # still known from the kernel log
    assert gpu["throttle_reasons"][[0, 1, 2]].tolist() == [0, 0x80, 0x80]
    h.reset([3, 5, 7])
    assert h.ecc_dbe_vol[3] == 0 and not h.off_bus[5] and h.xid_total[3] == 1  # the Xid count is not volatile
    h.advance(T0 + 20, events)
    assert h.nvlink_crc_total[7] == pytest.approx(4000.0)  # the burst ended with the reset
    with pytest.raises(ValueError, match="unknown GPU fault"):
        h.inject("gremlins", [0], T0)
    with pytest.raises(ValueError, match="out of range"):
        h.inject("ecc_dbe", [16], T0)
