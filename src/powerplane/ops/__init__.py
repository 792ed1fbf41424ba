"""Operations: fault signatures (the NVIDIA Xid catalog), alert rules and health checks, notification,
self-healing, and kernel and system log mining.

- :mod:`powerplane.ops.xid`: the Xid catalog as a data table, and a parser of kernel-log and syslog lines.
- :mod:`powerplane.ops.rules`, :mod:`powerplane.ops.expr`, :mod:`powerplane.ops.alerts`: YAML alert rules, their
  expression language compiled to NumPy, and the engine (for/clear/keep_firing_for, inhibition, ack, silence);
  the default rule set (``rules/default.yaml``) holds the DCGM-style GPU health checks and the facility faults.
- :mod:`powerplane.ops.notify`, :mod:`powerplane.ops.outbox`: routing by severity, grouping and repeat; email,
  WeCom/DingTalk/Slack/phone webhooks and Alertmanager; a durable SQLite outbox with retries.
- :mod:`powerplane.ops.heal`: self-healing through the scheduler with guard rails; :mod:`powerplane.ops.audit`
  the audit trail of every action.
- :mod:`powerplane.ops.logs`, :mod:`powerplane.ops.logstore`: an online log pipeline (Drain3 template mining,
  anomaly scoring, correlation to GPU, node and job; file tail, UDP syslog on loopback, the twin's injected faults)
  and an embedded DuckDB store with token search.
- :mod:`powerplane.ops.cli`, :mod:`powerplane.ops.alerts_cli`: ``powerplane logs ...`` and ``powerplane alerts ...``.
"""
