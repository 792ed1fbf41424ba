"""Read and validate site files; errors name the file, the field and what was expected."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from powerplane.config.schema import SiteConfig
from powerplane.core.errors import ConfigError, UnknownScenarioError

_SCENARIO_PACKAGE = "powerplane.config"
_SCENARIO_DIR = "scenarios"


def _scenario_dir() -> Path:
    return Path(str(resources.files(_SCENARIO_PACKAGE).joinpath(_SCENARIO_DIR)))


def list_scenarios() -> dict[str, str]:
    """Shipped scenario names and their one-line descriptions."""
    out: dict[str, str] = {}
    for path in sorted(_scenario_dir().glob("*.yaml")):
        with path.open() as fh:
            raw = yaml.safe_load(fh) or {}
        out[path.stem] = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
    return out


def scenario_path(name: str) -> Path:
    path = _scenario_dir() / f"{name}.yaml"
    if not path.is_file():
        valid = ", ".join(sorted(list_scenarios()))
        raise UnknownScenarioError(f"unknown scenario {name!r}; valid scenarios: {valid}")
    return path


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def load_site(path: str | Path) -> SiteConfig:
    """Load and validate a site YAML file. Raises ConfigError naming the file, the field and the expectation."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read site file: {exc.strerror}", path=str(path)) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=str(path)) from exc
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping at the top level of the site file", path=str(path))
    try:
        site = SiteConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _format_loc(tuple(first["loc"])) or "(top level)"
        got = first.get("input")
        got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
        more = f"; and {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{first['msg']}{got_text}{more}", path=str(path), field=field) from exc
    return site


def load_scenario(name_or_path: str | Path) -> tuple[SiteConfig, Path]:
    """Load a shipped scenario by name, or a site file by path. Returns the site and the file it came from."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.is_file():
        return load_site(candidate), candidate.resolve()
    path = scenario_path(str(name_or_path))
    return load_site(path), path


def resolve_data_file(spec: str, site_file: Path | None) -> Path:
    """Find a data file named in a site file.

    ``pvlib:NAME`` is a file shipped inside pvlib's data folder; a relative path is looked up next to the site
    file, then in PowerPlane's own ``data`` folder.
    """
    if spec.startswith("pvlib:"):
        import pvlib

        path = Path(pvlib.__file__).parent / "data" / spec.removeprefix("pvlib:")
        if path.is_file():
            return path
        raise ConfigError(f"pvlib ships no data file {spec.removeprefix('pvlib:')!r}", field="weather.file")
    path = Path(spec)
    candidates = [path] if path.is_absolute() else []
    if site_file is not None and not path.is_absolute():
        candidates.append(site_file.parent / path)
    candidates.append(Path(str(resources.files("powerplane").joinpath("data"))) / path.name)
    for cand in candidates:
        if cand.is_file():
            return cand
    raise ConfigError(
        f"data file {spec!r} not found (looked in {', '.join(str(c) for c in candidates)})",
        path=str(site_file) if site_file else None,
        field="weather.file",
    )
