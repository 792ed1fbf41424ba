"""The monitored live forecaster: :class:`MonitoredForecaster` scores its own 15-minute-ahead forecasts; when the
rolling MAE is more than 5 % worse than the champion's registered backtest MAE it raises an alert record, trains
a challenger on the recent history (in a worker thread in the live runtime), and promotes it only if it beats the
champion on the same window.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.forecast.data import STEP_S, RunData
from powerplane.forecast.jobaware import NAME, min_fit_rows
from powerplane.forecast.live import LiveForecaster
from powerplane.topology import Topology


class MonitoredForecaster(LiveForecaster):
    """A live forecaster that watches its own 15-minute-ahead error (see the module docstring)."""

    HORIZON_MIN = 15
    WINDOW_MIN = 360  # rolling window scored against the registered backtest error
    MIN_SCORED = 60
    DEGRADED = 1.05
    RETRY_MIN = 60

    def __init__(
        self, site: SiteConfig, topology: Topology, registry_dir: Path | None = None, *, background: bool = False
    ) -> None:
        super().__init__(site, topology, registry_dir)
        # background=True (the live runtime): a challenger trains in a worker thread and the cycle goes on; its
        # result is registered and judged at the first minute closed after it is done. False: inline (tests).
        self.background = background
        self._training: Future[Any] | None = None
        self._pending: dict[int, float] = {}  # target minute -> P50 issued 15 minutes before
        self.errors: deque[tuple[int, float]] = deque(maxlen=self.WINDOW_MIN)
        self.alerts: list[dict[str, Any]] = []
        self._firing = False
        self._retrained = False
        self._last_try = -(10**9)

    def reference_mae_w(self) -> float | None:
        """The champion's registered 15-minute backtest MAE."""
        bt = self.model.meta.get("backtest", {}).get("15min", {})
        v = bt.get("mae_w")
        return float(v) if v is not None else None

    def rolling_mae_w(self) -> float | None:
        return float(np.mean([e for _, e in self.errors])) if len(self.errors) >= self.MIN_SCORED else None

    @property
    def degraded(self) -> bool:
        """Whether the degradation alert is firing (the runtime's alert context: ``forecast_degraded``)."""
        return self._firing

    def error_ratio(self) -> float:
        """Rolling 15-minute MAE over the registered backtest MAE (NaN until both are known)."""
        ref, roll = self.reference_mae_w(), self.rolling_mae_w()
        return roll / ref if ref and roll is not None else float("nan")

    def _on_close(self, m: int) -> None:
        t_done = float(((self.base_min or 0) + m + 1) * STEP_S)
        if self._training is not None and self._training.done():
            self._finish_background(self._training, t_done)
            self._training = None
        actual = self._F.a[m]
        if m in self._pending and np.isfinite(actual):
            self.errors.append((m, abs(float(actual) - self._pending.pop(m))))
        self._pending.pop(m, None)
        t_s = float(((self.base_min or 0) + m + 1) * STEP_S)
        res = self.predict(t_s, np.array([self.HORIZON_MIN]))
        if res is not None:
            self._pending[m + self.HORIZON_MIN] = float(res[1][0])
        ref, roll = self.reference_mae_w(), self.rolling_mae_w()
        if ref is None or roll is None:
            return
        if self._firing and not self._retrained and m - self._last_try >= self.RETRY_MIN and self._training is None:
            again = self._retrain_now_or_later(t_s)  # the first try lacked history: again while the alert holds
            self._last_try = m
            self._retrained = bool(again.get("trained"))
            self.alerts.append(self._record("firing", t_s, retrain=again))
            return
        if roll > self.DEGRADED * ref and not self._firing:
            self._firing = True
            summary = (
                f"rolling 15-min MAE {roll / 1e3:.0f} kW is {100 * (roll / ref - 1):.1f} % "
                f"above the backtest's {ref / 1e3:.0f} kW"
            )
            alert = self._record("firing", t_s, severity="warning", value=roll / ref, summary=summary)
            self.alerts.append(alert)  # before the retrain, whose promotion resolves it
            first = self._retrain_now_or_later(t_s)
            alert["retrain"] = first
            self._retrained = bool(first.get("trained"))
            self._last_try = m
        elif roll <= self.DEGRADED * ref and self._firing:
            self._firing = False
            self.alerts.append(self._record("resolved", t_s, value=roll / ref))

    def _record(self, state: str, t_s: float, summary: str | None = None, **fields: Any) -> dict[str, Any]:
        """One ``forecast_degraded`` alert record (what :meth:`drain_alerts` hands to the runtime)."""
        rec: dict[str, Any] = {"rule": "forecast_degraded", "state": state, "since_s": t_s, **fields}
        rec["labels"] = {"model": self.model_name, "horizon": "15min"}
        if summary is not None:
            rec["annotations"] = {"summary": summary}
        return rec

    def drain_alerts(self) -> list[dict[str, Any]]:
        out, self.alerts = self.alerts, []
        return out

    def retrain(self, t_s: float) -> dict[str, Any]:
        """Train a challenger on the history before the scored window; promote it if it wins on that window."""
        job = self._retrain_inputs()
        if isinstance(job, dict):
            return job
        return self._judge(_fit_challenger(*job), t_s)

    def _retrain_now_or_later(self, t_s: float) -> dict[str, Any]:
        """:meth:`retrain` inline, or (``background``) started in a worker thread on a copy of the history."""
        if not self.background:
            return self.retrain(t_s)
        job = self._retrain_inputs()
        if isinstance(job, dict):
            return job
        fut: Future[Any] = Future()

        def work() -> None:
            try:
                fut.set_result(_fit_challenger(*job))
            except BaseException as exc:  # reported at the next minute closed, never lost in the thread
                fut.set_exception(exc)

        threading.Thread(target=work, name="forecast-challenger", daemon=True).start()
        self._training = fut
        return {"trained": False, "started": True, "reason": "training a challenger in the background"}

    def _finish_background(self, fut: Future[Any], t_s: float) -> None:
        """The background challenger is done: register and judge it, and say so in an alert record."""
        record = self._record("firing" if self._firing else "resolved", t_s)
        self.alerts.append(record)  # before the judgement, whose promotion resolves the alert
        try:
            out = self._judge(fut.result(), t_s)
        except Exception as exc:
            out = {"trained": False, "reason": f"the challenger failed to train: {exc}"}
        record["retrain"] = out
        self._retrained = bool(out.get("trained"))

    def _retrain_inputs(self) -> tuple[RunData, Any, NDArray[np.int64], float] | dict[str, Any]:
        """What a challenger trains and is scored on (copies: safe to hand to a thread), or why there is none."""
        from powerplane.forecast.backtest import Split

        win = [m for m, _ in self.errors]
        if not win:
            return {"trained": False, "reason": "no scored window yet"}
        w0 = win[0] - self.HORIZON_MIN
        # origins start a third of the way in (see backtest.split) and end a horizon before the window
        if w0 < max(120, int(np.ceil(1.5 * (min_fit_rows() + self.HORIZON_MIN + 2)))):
            return {"trained": False, "reason": "not enough history before the scored window"}
        sp = Split(np.arange(min(1440, w0 // 3), w0 - 1, dtype=np.int64), w0, np.zeros(0, np.int64), np.zeros(0, bool))
        origins = np.array(win, dtype=np.int64) - self.HORIZON_MIN
        champ_mae = float(np.mean([e for _, e in self.errors]))
        return self.history_run(), sp, origins, champ_mae

    def _judge(self, fitted: tuple[Any, float, int, int, float], t_s: float) -> dict[str, Any]:
        """Register the challenger; make it the champion only if it beat the champion on the same window."""
        challenger, ch_mae, n_ok, n_win, champ_mae = fitted
        if not np.isfinite(ch_mae):
            return {"trained": False, "reason": "the challenger could not fit the 15-minute horizon"}
        out: dict[str, Any] = {
            "trained": True,
            "challenger_mae_w": ch_mae,
            "champion_mae_w": champ_mae,
            "window_minutes": n_win,
            "promoted": False,
        }
        challenger.meta["backtest"] = {"15min": {"mae_w": ch_mae, "n": n_ok, "window": "live"}}
        if self.registry is not None:
            v = self.registry.register(NAME, challenger.to_bytes(), challenger.meta, t_s, bump="patch")
            self.registry.promote(v, "challenger", t_s=t_s, by="monitor", reason="rolling error above backtest")
            out["challenger"] = v
            if ch_mae < champ_mae:
                self.registry.promote(
                    v,
                    "champion",
                    t_s=t_s,
                    by="monitor",
                    reason=f"challenger {ch_mae:.0f} W < champion {champ_mae:.0f} W on the same window",
                )
                self.reload()
                out["promoted"] = True
        elif ch_mae < champ_mae:
            self.model, self.version = challenger, "live-challenger"
            out["promoted"] = True
        if out["promoted"]:
            self.errors.clear()
            self._pending.clear()
            if self._firing:
                summary = "a challenger won on the scored window and is the champion"
                self.alerts.append(self._record("resolved", t_s, summary=summary))
            self._firing = False
        return out


def _fit_challenger(
    run: RunData, sp: Any, origins: NDArray[np.int64], champ_mae: float
) -> tuple[Any, float, int, int, float]:
    """Train a job-aware challenger on ``run`` before the scored window and score its 15-min P50 on that window
    (pure: runs in a worker thread for the live monitor). -> (model, MAE, points scored, window, champion MAE)."""
    from powerplane.forecast.backtest import train_job_aware
    from powerplane.forecast.features import build_features

    challenger, _ = train_job_aware(run, sp)
    fs = build_features(run, origins, challenger.horizons_min, challenger.overrun_s)
    k = int(np.searchsorted(challenger.horizons_min, MonitoredForecaster.HORIZON_MIN))
    actual = fs.y[:, k] + fs.now_w
    ok = np.isfinite(actual)
    ch_mae = float(np.mean(np.abs(challenger.predict(fs).p50_w[ok, k] - actual[ok]))) if ok.any() else float("nan")
    return challenger, ch_mae, int(ok.sum()), int(origins.size), champ_mae
