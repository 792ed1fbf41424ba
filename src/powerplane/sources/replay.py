"""Replay a ``powerplane simulate`` output directory as a :class:`Source`, one simulated step per read.

The run's ``summary.json`` names its scenario, which gives the topology. Each read returns the next step of
``site.parquet`` laid out as :meth:`powerplane.twin.twin.Twin.read` lays out its frames:

- ``t_s`` is the *end* of the step (the twin stamps a frame when its step completes), so replaying a run and
  running the twin give frames with the same time stamps;
- site: ``frequency_hz``, ``meter_power_w`` (the run's ``grid_power_w``), ``facility_power_w``, ``it_power_w``,
  ``renewable_power_w``, ``outdoor_temp_c``; hall ``it_power_w`` and bess ``power_w``/``soc`` from
  ``halls.parquet``/``bess.parquet`` (every step too) when those files are there;
- rack ``power_w`` (interval mean) and ``inlet_temp_c``, and GPU ``power_w`` (interval mean), ``temp_c``,
  ``energy_mj`` (the counter) and ``util_pct`` from the *latest record interval that has ended* at or before the
  frame's time: a record interval is known only once it is over, so a replay never shows a value from the future
  (which matters when forecasters are backtested on replays). Before the first interval ends, and for a run
  without ``gpus.parquet`` (no ``--gpu-detail``), those arrays are NaN with a ``_reported`` mask of False, so
  telemetry marks them missing.

``gpus.parquet`` of a 10,000-GPU day is ~15 M rows; it is read one Parquet row group at a time as the replay
reaches it, never whole.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from numpy.typing import NDArray

from powerplane.config.loader import load_scenario
from powerplane.core.clock import Clock, WallClock
from powerplane.core.errors import PowerPlaneError, SourceError
from powerplane.core.frames import Frame
from powerplane.topology.tree import Topology

F64 = NDArray[np.float64]

SITE_METRICS = {  # frame metric -> site.parquet column
    "frequency_hz": "frequency_hz",
    "meter_power_w": "grid_power_w",
    "facility_power_w": "facility_power_w",
    "it_power_w": "it_power_w",
    "renewable_power_w": "renewable_power_w",
    "outdoor_temp_c": "outdoor_temp_c",
}
RACK_METRICS = ("power_w", "inlet_temp_c")
GPU_METRICS = ("power_w", "temp_c", "energy_mj", "util_pct")
REQUIRED_FILES = ("summary.json", "site.parquet", "racks.parquet")


class ReplayFinished(SourceError):
    """The replay has no more steps (and was not asked to loop)."""


def _read_table(path: Path, columns: list[str]) -> Any:
    try:
        return pq.read_table(str(path), columns=columns)
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
        raise SourceError(f"{path}: cannot read the columns {columns}: {exc}") from exc


def _column(table: Any, name: str) -> F64:
    return np.asarray(table.column(name).to_numpy(), dtype=np.float64)


def _per_step(path: Path, columns: tuple[str, ...], n_steps: int, n_entities: int) -> dict[str, F64]:
    """Columns of a table with one row per step and entity, as [step, entity] arrays."""
    table = _read_table(path, list(columns))
    if table.num_rows != n_steps * n_entities:
        raise SourceError(
            f"{path}: {table.num_rows} rows, expected {n_steps} steps x {n_entities} entities; "
            "the file does not belong to this run"
        )
    return {c: _column(table, c).reshape(n_steps, n_entities) for c in columns}


class _IntervalBlocks:
    """Rows of an every-interval table (``n`` entities per interval, in entity order), one interval at a time,
    reading only the Parquet row groups that hold it."""

    def __init__(self, path: Path, n: int, columns: tuple[str, ...]) -> None:
        try:
            self.file = pq.ParquetFile(str(path))
        except (OSError, ValueError) as exc:
            raise SourceError(f"{path}: not a readable Parquet file: {exc}") from exc
        missing = [c for c in ("t_s", *columns) if c not in self.file.schema_arrow.names]
        if missing:
            raise SourceError(f"{path}: missing columns {missing}")
        self.path = path
        self.n = n
        self.columns = columns
        meta = self.file.metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self.group_start = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.rows = int(self.group_start[-1])
        self._cache: dict[int, dict[str, F64]] = {}
        self._last: tuple[int, dict[str, F64]] | None = None

    def _group(self, g: int) -> dict[str, F64]:
        if g not in self._cache:
            if len(self._cache) >= 2:  # enough to walk forward when a row group holds at least one interval
                self._cache.pop(next(iter(self._cache)))
            table = self.file.read_row_group(g, columns=["t_s", *self.columns])
            self._cache[g] = {c: _column(table, c) for c in ("t_s", *self.columns)}
        return self._cache[g]

    def block(self, k: int, expect_t_s: float) -> dict[str, F64]:
        """The ``n`` rows of interval ``k`` (checked against its start time ``expect_t_s``)."""
        if self._last is not None and self._last[0] == k:
            return self._last[1]
        lo, hi = k * self.n, (k + 1) * self.n
        g0 = int(np.searchsorted(self.group_start, lo, side="right")) - 1
        g1 = int(np.searchsorted(self.group_start, hi - 1, side="right")) - 1
        parts = []
        for g in range(g0, g1 + 1):
            cols = self._group(g)
            a = max(lo, int(self.group_start[g])) - int(self.group_start[g])
            b = min(hi, int(self.group_start[g + 1])) - int(self.group_start[g])
            parts.append({c: v[a:b] for c, v in cols.items()})
        out = {c: np.concatenate([p[c] for p in parts]) for c in ("t_s", *self.columns)}
        if not np.all(out["t_s"] == expect_t_s):
            raise SourceError(f"{self.path}: interval {k} is not {self.n} rows stamped t_s={expect_t_s}")
        self._last = (k, out)
        return out


class ReplaySource:
    """A recorded ``powerplane simulate`` run as a :class:`Source`.

    ``speed`` is simulated seconds per wall second for :meth:`frames` and :meth:`run` (``0`` or ``inf``: as fast
    as possible); :meth:`read` never waits. ``clock`` (wall clock by default) and ``sleep`` (``time.sleep``) pace
    those loops and are injected in tests. With ``loop`` the run starts over at its end, time stamps running on
    (energy counters then start over too, as after a driver reload). ``scenario`` overrides the scenario named
    in ``summary.json`` (a name or a site-file path), for runs of a custom site file.
    """

    name = "replay"

    def __init__(
        self,
        run_dir: str | Path,
        speed: float = 1.0,
        clock: Clock | None = None,
        loop: bool = False,
        *,
        sleep: Callable[[float], None] = time.sleep,
        scenario: str | Path | None = None,
    ) -> None:
        if math.isnan(speed) or speed < 0:
            raise ValueError(f"speed must be >= 0 (0 or inf: as fast as possible), got {speed}")
        self.run_dir = Path(run_dir)
        self.speed = float(speed)
        self.loop = loop
        self._clock: Clock = WallClock() if clock is None else clock
        self._sleep = sleep
        d = self.run_dir
        if not d.is_dir():
            raise SourceError(f"{d}: no such directory (expected a `powerplane simulate --out` directory)")
        for f in REQUIRED_FILES:
            if not (d / f).is_file():
                raise SourceError(f"{d} is not a simulate output directory: {f} is missing")
        try:
            self.summary: dict[str, Any] = json.loads((d / "summary.json").read_text())
        except (OSError, ValueError) as exc:
            raise SourceError(f"{d / 'summary.json'}: not readable JSON: {exc}") from exc
        name = scenario if scenario is not None else self.summary.get("scenario")
        if name is None:
            raise SourceError(f"{d / 'summary.json'}: no 'scenario' field")
        try:
            site, _ = load_scenario(name)
        except PowerPlaneError as exc:
            raise SourceError(f"{d / 'summary.json'}: scenario {str(name)!r} cannot be loaded: {exc}") from exc
        self.site = site
        self._topology = Topology.from_site(site)
        topo = self._topology

        site_table = _read_table(d / "site.parquet", ["t_s", *SITE_METRICS.values()])
        self.t_s = _column(site_table, "t_s")  # step starts
        n = self.t_s.size
        if n == 0:
            raise SourceError(f"{d / 'site.parquet'}: no rows")
        step = self.summary.get("step_s")
        if step:
            self.step_s = float(step)
        else:
            self.step_s = float(np.median(np.diff(self.t_s))) if n > 1 else 1.0
        self._site = {m: _column(site_table, c) for m, c in SITE_METRICS.items()}
        self._halls = (
            _per_step(d / "halls.parquet", ("it_power_w",), n, topo.n_halls)
            if (d / "halls.parquet").is_file()
            else None
        )
        n_units = len(site.bess)
        self._bess = (
            _per_step(d / "bess.parquet", ("power_w", "soc"), n, n_units)
            if n_units and (d / "bess.parquet").is_file()
            else None
        )

        racks = _read_table(d / "racks.parquet", ["t_s", *RACK_METRICS])
        r = topo.n_racks
        if racks.num_rows == 0 or racks.num_rows % r:
            raise SourceError(
                f"{d / 'racks.parquet'}: {racks.num_rows} rows is not a whole number of intervals of {r} racks "
                f"(scenario {str(name)!r}); the run does not match its scenario"
            )
        rack_t = _column(racks, "t_s").reshape(-1, r)
        if not np.all(rack_t == rack_t[:, :1]):
            raise SourceError(f"{d / 'racks.parquet'}: an interval's rows carry different times")
        self.interval_start_s = rack_t[:, 0].copy()
        self._racks = {m: _column(racks, m).reshape(-1, r) for m in RACK_METRICS}
        k = self.interval_start_s.size
        # simulate writes only whole intervals; with a single one its length is known only to be <= the horizon
        horizon_s = float(self.t_s[-1] + self.step_s - self.t_s[0])
        self.interval_s = float(np.median(np.diff(self.interval_start_s))) if k > 1 else horizon_s
        # The interval each step sees: the latest one that has ended by the end of the step (-1: none yet).
        end_of_step = self.t_s + self.step_s
        self._interval_of_step = np.searchsorted(self.interval_start_s + self.interval_s, end_of_step, "right") - 1

        self._gpus: _IntervalBlocks | None = None
        if (d / "gpus.parquet").is_file():
            self._gpus = _IntervalBlocks(d / "gpus.parquet", topo.n_gpus, GPU_METRICS)
            if self._gpus.rows != k * topo.n_gpus:
                raise SourceError(
                    f"{d / 'gpus.parquet'}: {self._gpus.rows} rows, expected {k} intervals x {topo.n_gpus} GPUs"
                )
        self._pos = 0
        self._lap = 0

    # ------------------------------------------------------------------ Source

    @property
    def topology(self) -> Topology:
        return self._topology

    def __len__(self) -> int:
        """Steps in the run."""
        return int(self.t_s.size)

    @property
    def position(self) -> int:
        """Index of the step the next read returns."""
        return self._pos

    def reset(self) -> None:
        """Start again from the first step."""
        self._pos = 0
        self._lap = 0

    def read(self) -> Frame:
        """The next step's frame; raises :class:`ReplayFinished` after the last step unless looping."""
        if self._pos >= len(self):
            if not self.loop:
                raise ReplayFinished(f"replay of {self.run_dir} finished after {len(self)} steps")
            self._pos = 0
            self._lap += 1
        i = self._pos
        self._pos += 1
        topo = self._topology
        t_end = float(self.t_s[i] + self.step_s + self._lap * len(self) * self.step_s)
        levels: dict[str, dict[str, NDArray[np.generic]]] = {
            "site": {m: v[i : i + 1].copy() for m, v in self._site.items()}
        }
        if self._halls is not None:
            levels["hall"] = {"it_power_w": self._halls["it_power_w"][i].copy()}
        if self._bess is not None:
            levels["bess"] = {m: v[i].copy() for m, v in self._bess.items()}
        k = int(self._interval_of_step[i])
        if k >= 0:
            levels["rack"] = {m: v[k].copy() for m, v in self._racks.items()}
        else:
            levels["rack"] = {m: np.full(topo.n_racks, np.nan) for m in RACK_METRICS}
            levels["rack"]["_reported"] = np.zeros(topo.n_racks, dtype=bool)  # no interval has ended yet
        if k >= 0 and self._gpus is not None:
            block = self._gpus.block(k, float(self.interval_start_s[k]))
            levels["gpu"] = {m: block[m].copy() for m in GPU_METRICS}
        else:
            levels["gpu"] = {m: np.full(topo.n_gpus, np.nan) for m in GPU_METRICS}
            levels["gpu"]["_reported"] = np.zeros(topo.n_gpus, dtype=bool)  # not recorded: missing, not invalid
        return Frame(t_s=t_end, source=self.name, levels=levels)

    def close(self) -> None:
        """Nothing to release: files are opened per read."""

    # ------------------------------------------------------------------ paced playback

    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        """Frames from the current position to the end (or ``max_frames``), released at ``speed`` simulated
        seconds per wall second: frame ``j`` is not handed out before ``(t_j - t_0) / speed`` wall seconds."""
        paced = 0.0 < self.speed < math.inf
        wall0 = t0 = math.nan
        count = 0
        while max_frames is None or count < max_frames:
            try:
                frame = self.read()
            except ReplayFinished:
                return
            if paced:
                if count == 0:
                    wall0, t0 = self._clock.now_s(), frame.t_s
                else:
                    delay = wall0 + (frame.t_s - t0) / self.speed - self._clock.now_s()
                    if delay > 0:
                        self._sleep(delay)
            yield frame
            count += 1

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def run(self, on_frame: Callable[[Frame], object], max_frames: int | None = None) -> int:
        """Hand each paced frame to ``on_frame``; returns how many were handed out."""
        n = 0
        for frame in self.frames(max_frames):
            on_frame(frame)
            n += 1
        return n
