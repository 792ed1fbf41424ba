from pathlib import Path

import pytest
import yaml

from powerplane.config import list_scenarios, load_scenario, load_site
from powerplane.core.errors import ConfigError, UnknownScenarioError
from powerplane.topology import Topology


def test_shipped_scenarios_load() -> None:
    names = list_scenarios()
    assert set(names) >= {"texas", "qingyang", "small"}
    sizes = {n: Topology.from_site(load_scenario(n)[0]).n_gpus for n in ("texas", "qingyang", "small")}
    assert sizes == {"texas": 10_240, "qingyang": 10_240, "small": 256}
    assert load_scenario("texas")[0].grid.frequency_hz == 60
    assert load_scenario("qingyang")[0].grid.frequency_hz == 50


def test_unknown_scenario_lists_valid_ones() -> None:
    with pytest.raises(UnknownScenarioError) as exc:
        load_scenario("atlantis")
    assert "texas" in str(exc.value) and "qingyang" in str(exc.value) and "small" in str(exc.value)


def _write(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    _, src = load_scenario("small")
    raw = yaml.safe_load(src.read_text())
    mutate(raw)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_error_names_file_field_and_expectation(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: r["bess"][0].update(soc_min=1.5))
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    msg = str(exc.value)
    assert str(path) in msg and "bess[0].soc_min" in msg and "less than or equal to 1" in msg


def test_cross_reference_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: r["bess"][0].update(hall="nowhere"))
    with pytest.raises(ConfigError, match="unknown hall 'nowhere'"):
        load_site(path)


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: r["electrical"].update(contrat_demand_kw=5))
    with pytest.raises(ConfigError, match=r"electrical\.contrat_demand_kw"):
        load_site(path)


def test_bad_timezone_and_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: r.update(timezone="Mars/Olympus"))
    with pytest.raises(ConfigError, match="timezone"):
        load_site(path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_site(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_site(tmp_path / "missing.yaml")
