"""Operations: fault signatures (the NVIDIA Xid catalog), kernel and system log mining, alerting and self-healing.

- :mod:`powerplane.ops.xid`: the Xid catalog as a data table, and a parser of kernel-log and syslog lines.
- :mod:`powerplane.ops.logs`: an online log pipeline (Drain3 template mining, anomaly scoring, correlation to
  GPU, node and job), its sources (file tail, UDP syslog on loopback, the twin's injected faults) and an embedded
  DuckDB store with token search.
- :mod:`powerplane.ops.cli`: ``powerplane logs search`` and ``powerplane logs analyze``.
"""
