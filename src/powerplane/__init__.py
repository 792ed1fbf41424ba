"""PowerPlane: track, predict and steer the power of a 10,000-GPU AI datacenter."""

__version__ = "0.1.0"
