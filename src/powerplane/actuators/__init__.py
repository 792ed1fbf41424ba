"""Adapters that apply commands to devices: SunSpec/Modbus batteries (``actuators.sunspec``), later NVML power caps and
scheduler hooks. Each one clips commands to limits, reports what it did, and maps device errors onto
:class:`powerplane.core.errors.ActuatorError`. Only the runtime imports them.
"""
