import pytest

from powerplane.core.clock import SimClock
from powerplane.core.units import parse_duration_s


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("100ms", 0.1), ("1s", 1.0), ("1", 1.0), ("15min", 900.0), ("2h", 7200.0), ("3d", 259200.0), (0.5, 0.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "abc", "1 parsec", "-1s", "0s"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(bad)


def test_sim_clock_never_runs_backwards() -> None:
    c = SimClock(100.0)
    assert c.advance(0.5) == 100.5
    with pytest.raises(ValueError):
        c.set(50.0)
    with pytest.raises(ValueError):
        c.advance(-1.0)
