"""Decisions: fast controllers, the planner, BESS allocation across halls and the GPU pool scheduler
(:mod:`powerplane.control.scheduler`)."""
