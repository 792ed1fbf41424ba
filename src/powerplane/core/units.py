"""Unit helpers. Inside PowerPlane everything is SI (W, J, s, C) unless a name says otherwise."""

from __future__ import annotations

import re

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|min|m|h|d)?\s*$")
_DURATION_FACTOR_S = {"ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

W_PER_KW = 1_000.0
W_PER_MW = 1_000_000.0
J_PER_KWH = 3_600_000.0
S_PER_H = 3_600.0
S_PER_DAY = 86_400.0


def parse_duration_s(text: str | float | int) -> float:
    """Parse a duration such as ``"100ms"``, ``"1s"``, ``"15min"``, ``"2h"`` or ``"3d"`` into seconds.

    A bare number is taken as seconds.

    >>> parse_duration_s("100ms")
    0.1
    >>> parse_duration_s("15min")
    900.0
    """
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _DURATION_RE.match(text)
        if match is None:
            raise ValueError(f"not a duration: {text!r} (expected e.g. 100ms, 1s, 15min, 2h, 3d)")
        value = float(match.group(1)) * _DURATION_FACTOR_S[match.group(2) or "s"]
    if not value > 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return value


def kwh_from_joules(energy_j: float) -> float:
    """Convert joules to kilowatt-hours."""
    return energy_j / J_PER_KWH
