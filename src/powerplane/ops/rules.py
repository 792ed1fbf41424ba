"""Alert rule files: YAML in the Prometheus manner, validated with pydantic, with errors that name the rule.

```yaml
defaults: {group_wait: 30s, group_interval: 5m, repeat_interval: 4h, resolved_retention: 5m}
inhibit_rules:
  - {source_match: {severity: critical}, target_match: {severity: warning}, equal: [target]}
groups:
  - name: gpu
    rules:
      - alert: GpuThermalMargin
        expr: gpu.temp_c > gpu.slowdown_temp_c - 5
        clear: gpu.temp_c < gpu.slowdown_temp_c - 8     # hysteresis: resolves only below this
        for: 30s
        keep_firing_for: 10s
        severity: warning
        labels: {team: fleet}
        annotations: {summary: "{target} at {value:.1f} C"}
```
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

Severity = Literal["warning", "critical", "emergency"]
SEVERITY_RANK = {"warning": 1, "critical": 2, "emergency": 3}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration_s(v: Any) -> float:
    """``30s``, ``5m``, ``4h``, ``1.5``: seconds."""
    if isinstance(v, bool):
        raise ValueError(f"not a duration: {v!r}")
    if isinstance(v, int | float):
        if v < 0:
            raise ValueError(f"a duration cannot be negative: {v}")
        return float(v)
    m = _DURATION.match(str(v))
    if not m:
        raise ValueError(f"not a duration: {v!r} (use e.g. 30s, 5m, 4h)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


Duration = Annotated[float, BeforeValidator(parse_duration_s)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RuleSpec(_Strict):
    alert: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    expr: str
    clear: str | None = Field(default=None, description="hysteresis: a firing alert resolves only when this holds")
    value: str | None = Field(default=None, description="the number to report (default: the left side of expr)")
    for_s: Duration = Field(default=0.0, alias="for")
    keep_firing_for_s: Duration = Field(default=0.0, alias="keep_firing_for")
    severity: Severity
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    group_by: list[str] | None = None
    repeat_interval_s: Duration | None = Field(default=None, alias="repeat_interval")

    @field_validator("labels")
    @classmethod
    def _no_reserved(cls, v: dict[str, str]) -> dict[str, str]:
        bad = {"alertname", "severity", "target", "level"} & set(v)
        if bad:
            raise ValueError(f"labels {sorted(bad)} are set by the engine")
        return v


class RuleGroup(_Strict):
    name: str
    rules: list[RuleSpec]


class InhibitRule(_Strict):
    source_match: dict[str, str]
    target_match: dict[str, str]
    equal: list[str] = Field(default_factory=lambda: ["target"])


class Defaults(_Strict):
    group_wait_s: Duration = Field(default=30.0, alias="group_wait")
    group_interval_s: Duration = Field(default=300.0, alias="group_interval")
    repeat_interval_s: Duration = Field(default=4 * 3600.0, alias="repeat_interval")
    resolved_retention_s: Duration = Field(default=300.0, alias="resolved_retention")
    group_by: list[str] = Field(default_factory=lambda: ["alertname"])


def _default_inhibits() -> list[InhibitRule]:
    """Alertmanager's convention: a critical (or emergency) alert mutes the warnings on the same target."""
    return [
        InhibitRule(source_match={"severity": "critical"}, target_match={"severity": "warning"}),
        InhibitRule(source_match={"severity": "emergency"}, target_match={"severity": "warning"}),
        InhibitRule(source_match={"severity": "emergency"}, target_match={"severity": "critical"}),
    ]


class RuleFile(_Strict):
    defaults: Defaults = Defaults()
    inhibit_rules: list[InhibitRule] = Field(default_factory=_default_inhibits)
    groups: list[RuleGroup]

    def rules(self) -> list[RuleSpec]:
        return [r for g in self.groups for r in g.rules]


class RuleFileError(ValueError):
    """A rule file that does not validate: names the file, the rule and the field."""


def _describe(e: ValidationError, data: Any, origin: str) -> str:
    lines = []
    for err in e.errors():
        loc = err["loc"]
        where = ".".join(str(x) for x in loc)
        if len(loc) >= 4 and loc[0] == "groups" and loc[2] == "rules":
            try:
                name = data["groups"][loc[1]]["rules"][loc[3]].get("alert", "?")
                where = f"rule {name!r} field {'.'.join(str(x) for x in loc[4:]) or '(rule)'}"
            except (KeyError, IndexError, TypeError, AttributeError):
                pass
        lines.append(f"{origin}: {where}: {err['msg']}")
    return "\n".join(lines)


def load_rule_file(path: str | Path | None = None, text: str | None = None) -> RuleFile:
    """Read and validate a rule file (the shipped default set when neither is given)."""
    if text is None:
        if path is None:
            text = resources.files("powerplane.ops").joinpath("rules/default.yaml").read_text()
            origin = "rules/default.yaml"
        else:
            p = Path(path)
            if not p.is_file():
                raise RuleFileError(f"{p}: no such rule file")
            text = p.read_text()
            origin = str(p)
    else:
        origin = str(path) if path else "<text>"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RuleFileError(f"{origin}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RuleFileError(f"{origin}: expected a mapping with 'groups'")
    try:
        rf = RuleFile.model_validate(data)
    except ValidationError as e:
        raise RuleFileError(_describe(e, data, origin)) from None
    names = [r.alert for r in rf.rules()]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RuleFileError(f"{origin}: rule names must be unique, repeated: {dup}")
    return rf
