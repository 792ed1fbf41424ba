"""Site configuration: the pydantic schema and the shipped scenarios."""

from powerplane.config.loader import list_scenarios, load_scenario, load_site
from powerplane.config.schema import SiteConfig

__all__ = ["SiteConfig", "list_scenarios", "load_scenario", "load_site"]
