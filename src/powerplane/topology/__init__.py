"""The physical and electrical tree as index arrays."""

from powerplane.topology.tree import LEVELS, Level, Topology

__all__ = ["LEVELS", "Level", "Topology"]
