"""Backtest on the real Azure LLM inference arrival traces (one hour each, ``../shared/data``).

The series is the token arrival rate (context + generated tokens per second) in 10-second bins, a stand-in for
the inference share of a site's load. The job-aware model does not apply (a trace has no job table), so this
scores persistence, a 1-minute moving average and statsforecast's AutoETS at 10 s and 1 min, with rolling
origins over the second half of the hour.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
from numpy.typing import NDArray

from powerplane.forecast.metrics import score

F64 = NDArray[np.float64]
BIN_S = 10.0
DATA_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data"
FILES = ("azure_llm_inference_2023_code.csv", "azure_llm_inference_2023_conv.csv")
HORIZONS = {"10s": 1, "1min": 6}


def token_rate(path: Path) -> F64:
    """Tokens per second in 10-second bins."""
    t = pacsv.read_csv(path)
    ts = t.column("TIMESTAMP").cast("timestamp[us]").to_numpy().astype("datetime64[us]").astype(np.int64) / 1e6
    tok = t.column("ContextTokens").to_numpy().astype(np.float64) + t.column("GeneratedTokens").to_numpy()
    idx = np.floor((ts - ts.min()) / BIN_S).astype(np.int64)
    return np.bincount(idx, weights=tok) / BIN_S


def backtest_trace(y: F64) -> dict[str, Any]:
    from statsforecast.models import AutoETS

    n = y.size
    split = n // 2
    origins = np.arange(split, n - max(HORIZONS.values()))
    scale = {lab: float(np.mean(np.abs(y[h:split] - y[: split - h]))) for lab, h in HORIZONS.items()}
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ets = AutoETS(season_length=1).fit(y[:split])
        ets_f = np.stack([ets.forward(y[: o + 1], h=6, level=[80])["mean"] for o in origins])
    for name in ("persistence", "moving-average-1min", "autoets"):
        out[name] = {}
        for lab, h in HORIZONS.items():
            act = y[origins + h]
            if name == "persistence":
                p = y[origins]
            elif name == "moving-average-1min":
                p = np.array([y[max(o - 5, 0) : o + 1].mean() for o in origins])
            else:
                p = ets_f[:, h - 1]
            # conformal band from the first half's residuals of the same rule at this horizon
            tr_o = np.arange(6, split - h)
            if name == "persistence":
                tr_p = y[tr_o]
            elif name == "moving-average-1min":
                tr_p = np.array([y[max(o - 5, 0) : o + 1].mean() for o in tr_o])
            else:
                tr_p = np.array([ets.forward(y[: o + 1], h=h)["mean"][h - 1] for o in tr_o[::6]])
                tr_o = tr_o[::6]
            q = np.quantile(y[tr_o + h] - tr_p, [0.1, 0.5, 0.9])
            sc = score(act, p + q[0], p + q[1], p + q[2], scale[lab])
            # the series is a token rate, not a power: name the units
            out[name][lab] = {(k[:-2] + "_tokens_per_s" if k.endswith("_w") else k): v for k, v in sc.items()}
    return out


def backtest_traces(data_dir: Path = DATA_DIR) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for f in FILES:
        p = data_dir / f
        if p.exists():
            y = token_rate(p)
            res[f] = {"bins": int(y.size), "bin_s": BIN_S, "metrics": backtest_trace(y)}
        else:
            res[f] = {"error": f"missing {p}"}
    return res
