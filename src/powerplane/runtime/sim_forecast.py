"""The job-aware forecaster inside a simulation: what ``powerplane simulate --policy mpc --forecast ...`` plans on.

The live runtime feeds :class:`~powerplane.forecast.live.LiveForecaster` the telemetry snapshot of every cycle and
gives the ``mpc`` planner its newest forecast. A simulation has no telemetry pipeline; :class:`BlockFeed` folds
each twin block into the forecaster instead: the block's mean site facility and IT power and outdoor temperature,
and each job's mean power over the block (its energy over the block's length), which is what the forecaster's
training data holds (the per-minute means of ``site.parquet`` and ``job_power.parquet``). The planner then asks
it at each replan, with the scheduler's expected timeline of queued starts and running ends, as live does.

``choose(mode, models)`` picks what the planner uses: ``persistence`` (the last hour's median, no forecaster),
``champion`` (the registry's champion in ``models``, or the untrained prior when it has none) or ``auto``
(the champion when the registry has one, else persistence).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from powerplane.forecast.live import REGISTRY_FILE, LiveForecaster
from powerplane.forecast.registry import Registry, RegistryError
from powerplane.telemetry.snapshot import LevelData, Quality, Snapshot
from powerplane.twin.twin import Twin, TwinBlock

FORECAST_MODES = ("auto", "champion", "persistence")


def choose(mode: str, models: Path | None) -> tuple[str, Path | None]:
    """(``champion`` or ``persistence``, the registry folder to load) for a ``--forecast`` mode; a clear error for
    an unknown mode or a registry path that is not a folder."""
    if mode not in FORECAST_MODES:
        raise ValueError(f"unknown --forecast {mode!r}; valid: {', '.join(FORECAST_MODES)}")
    if mode == "persistence":
        return "persistence", None
    if models is not None and models.exists() and not models.is_dir() and models.suffix != ".duckdb":
        raise ValueError(f"--models {models}: not a folder holding {REGISTRY_FILE}")
    reg = None if models is None else (models if models.suffix == ".duckdb" else models / REGISTRY_FILE)
    has_registry = reg is not None and reg.exists()
    if mode == "auto" and not (has_registry and _has_champion(reg)):
        return "persistence", None
    return "champion", reg if has_registry else None


def _has_champion(registry: Path | None) -> bool:
    if registry is None:
        return False
    try:
        return Registry(registry).alias("champion") is not None
    except (RegistryError, OSError, ValueError):
        return False


class BlockFeed:
    """A :class:`LiveForecaster` fed from the twin's blocks; ``source`` is the ``mpc`` policy's forecast source."""

    def __init__(self, twin: Twin, registry: Path | None) -> None:
        self.twin = twin
        self.forecaster = LiveForecaster(twin.site, twin.topo, registry)
        self.forecaster.set_weather(twin.plant.outdoor_temp_c)
        self._seq = 0

    def observe(self, block: TwinBlock, job_ids: Any) -> None:
        """Fold one block into the forecaster (its means, stamped at the block's start)."""
        p = block.plant
        span_s = float(block.t_s.size * self.twin.dt_s)
        site = LevelData(
            values={
                "facility_power_w": np.array([float(p.facility_power_w.mean())]),
                "it_power_w": np.array([float(p.it_power_w.mean())]),
                "outdoor_temp_c": np.array([float(np.mean(p.outdoor_temp_c))]),
            },
            quality={k: np.full(1, Quality.OK, np.uint8) for k in ("facility_power_w", "it_power_w", "outdoor_temp_c")},
        )
        hall = LevelData(values={"it_power_w": block.fleet.hall_it_power_w.mean(axis=0).astype(np.float64)})
        ids = np.asarray(job_ids, np.int64)
        power = np.asarray(block.fleet.job_energy_j[1:], np.float64)[: ids.size] / max(span_s, 1e-9)
        self.forecaster.set_placement(self.twin.workload)
        self.forecaster.observe(
            Snapshot(
                float(block.t_s[0]),
                self._seq,
                "twin",
                {"site": site, "hall": hall},
                {},
                job_ids=ids,
                job_power_w=power,
                job_coverage=np.ones(ids.size),
            )
        )
        self._seq += 1

    def source(self, now_s: float) -> dict[str, Any]:
        """The forecast the planner asks for at ``now_s``, with the scheduler's expected job timeline."""
        return self.forecaster.forecast(now_s, self.twin.workload.sched.expected_timeline(now_s))


def summary(
    mode: str, registry: Path | None, feed: BlockFeed | None, plans: int, plans_on_forecast: int
) -> dict[str, Any]:
    """``summary.json`` ``controller.it_forecast``: what the planner's IT load came from, and how much of it."""
    fc = feed.forecaster if feed is not None else None
    return {
        "mode": mode,
        "model": fc.model_name if fc is not None else "persistence (the last hour's median)",
        "registry": str(registry) if registry is not None else None,
        "plans_on_forecast": plans_on_forecast,
        "plans": plans,
        "minutes_observed": fc.closed + 1 if fc is not None else 0,
        "rejected": dict(fc.rejected) if fc is not None else {},
    }
