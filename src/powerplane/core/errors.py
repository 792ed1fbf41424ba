"""PowerPlane's own exceptions. Vendor and library errors are mapped onto these at the edges."""

from __future__ import annotations


class PowerPlaneError(Exception):
    """Base class of every error PowerPlane raises on purpose."""


class ConfigError(PowerPlaneError):
    """A configuration file is missing, unreadable or invalid.

    The message names the file, the field and what was expected.
    """

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None) -> None:
        self.path = path
        self.field = field
        parts = []
        if path:
            parts.append(str(path))
        if field:
            parts.append(f"field '{field}'")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class UnknownScenarioError(ConfigError):
    """A scenario name that is not shipped; the message lists the valid ones."""


class OutputExistsError(PowerPlaneError):
    """An output directory exists and the caller did not ask to overwrite it."""


class SourceError(PowerPlaneError):
    """A telemetry source failed to produce readings."""


class ActuatorError(PowerPlaneError):
    """An actuator refused or failed to apply a command."""
