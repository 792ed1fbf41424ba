"""The cycle, the command queue and the wiring from configuration; the only place that imports adapters."""
