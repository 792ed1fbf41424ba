"""Fidelity of the texas twin at 100 ms: the swings that make this problem hard, at real magnitudes."""

import numpy as np
import pytest

from powerplane.config import load_scenario
from powerplane.telemetry.signal import band_energy_share, largest_swing_w
from powerplane.twin.jobs import State
from powerplane.twin.twin import Twin

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texas() -> tuple[Twin, int]:
    site, path = load_scenario("texas")
    tw = Twin(site, path, seed=2, dt_s=0.1)
    wl = tw.workload
    j = int(np.flatnonzero((wl.jobs.view("kind") == 0) & (wl.jobs.view("n_gpus") >= 8000))[0])
    return tw, j


def test_training_job_swings_site_power_by_megawatts_at_its_iteration_frequency(texas: tuple[Twin, int]) -> None:
    tw, j = texas
    tw.workload.quiet(j, tw.now_s)
    fac = np.concatenate([tw.advance(60).plant.facility_power_w for _ in range(50)])  # 5 minutes at 100 ms
    assert largest_swing_w(fac, 0.1) > 4e6
    share, band = band_energy_share(fac, 0.1)
    assert band == (0.1, 3.0) and share > 0.7
    # The strongest fluctuation sits at the job's iteration frequency.
    spec = np.abs(np.fft.rfft(fac - fac.mean()))
    freqs = np.fft.rfftfreq(fac.size, 0.1)
    peak = freqs[np.argmax(spec[1:]) + 1]
    iteration_hz = 1.0 / tw.workload.jobs.iteration_s[j]
    assert peak == pytest.approx(iteration_hz, rel=0.05)


def test_checkpoint_and_fault_drop_site_power_by_similar_steps(texas: tuple[Twin, int]) -> None:
    tw, j = texas
    wl = tw.workload
    tw.workload.quiet(j, tw.now_s)
    before = np.concatenate([tw.advance(60).plant.it_power_w for _ in range(5)]).mean()
    wl.trigger(j, "next_ckpt_s", tw.now_s)
    during = tw.advance(60).plant.it_power_w
    assert wl.jobs.state[j] == State.CHECKPOINT
    ckpt_drop = before - during[10:].mean()
    tw.advance(int(wl.jobs.ckpt_duration_s[j] / 0.1) + 10)
    tw.workload.quiet(j, tw.now_s)
    wl.trigger(j, "next_fail_s", tw.now_s)
    stalled = tw.advance(60).plant.it_power_w
    assert wl.jobs.state[j] == State.STALLED
    fault_drop = before - stalled[10:].mean()
    assert ckpt_drop > 4e6 and fault_drop > 4e6
    assert fault_drop == pytest.approx(ckpt_drop, rel=0.3)
