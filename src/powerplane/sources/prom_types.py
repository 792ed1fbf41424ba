"""Result types of the Prometheus text parser (:mod:`powerplane.sources.prom_text`): samples by series, the
columnar table of distinct label sets, rejections and the constants they use."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import numpy as np
from numpy.typing import NDArray

NO_TIMESTAMP: Final[int] = int(np.iinfo(np.int64).min)
METRIC_TYPES: Final = frozenset({"counter", "gauge", "histogram", "summary", "untyped", "unknown"})
REJECT_REASONS: Final = (
    "bad_metric_name",
    "unclosed_labels",
    "bad_labels",
    "duplicate_label",
    "bad_utf8",
    "missing_value",
    "bad_value",
    "bad_timestamp",
    "trailing_garbage",
    "bad_type",
    "bad_help",
)
SUFFIXES: Final = ("_bucket", "_sum", "_count", "_total", "_created")


class Rejection(NamedTuple):
    line_no: int  # 1-based
    reason: str
    line: str  # the offending line, truncated to 200 characters


class LabelSets:
    """Distinct label sets, stored by column: ``column(name)[i]`` is label ``name`` of set ``i`` (or None)."""

    def __init__(self, n: int, columns: dict[str, NDArray[np.object_]]) -> None:
        self._n = n
        self._columns = columns

    def __len__(self) -> int:
        return self._n

    @property
    def names(self) -> list[str]:
        """All label names seen, sorted."""
        return sorted(self._columns)

    def column(self, name: str) -> NDArray[np.object_]:
        """Values of label ``name`` for every set (object array of str, None where the set lacks it)."""
        col = self._columns.get(name)
        if col is None:
            return np.full(self._n, None, dtype=object)
        return col

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __getitem__(self, i: int) -> dict[str, str]:
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return {k: col[i] for k, col in sorted(self._columns.items()) if col[i] is not None}

    def __iter__(self) -> Iterator[dict[str, str]]:
        for i in range(self._n):
            yield self[i]


@dataclass
class MetricSamples:
    """All samples of one series name, in the order they appeared."""

    name: str
    type: str  # from ``# TYPE`` (histogram/summary suffixes resolved to their family); "untyped" if none
    help: str | None
    values: NDArray[np.float64]
    label_ids: NDArray[np.int64]  # into ParseResult.labels
    timestamps_ms: NDArray[np.int64] | None  # None if no sample had one; NO_TIMESTAMP where one is missing

    def __len__(self) -> int:
        return int(self.values.size)


@dataclass
class ParseResult:
    metrics: dict[str, MetricSamples]
    labels: LabelSets
    types: dict[str, str] = field(default_factory=dict)  # from # TYPE, by family name
    helps: dict[str, str] = field(default_factory=dict)  # from # HELP, by family name
    rejected: list[Rejection] = field(default_factory=list)
    n_lines: int = 0

    @property
    def n_samples(self) -> int:
        return sum(len(m) for m in self.metrics.values())

    @property
    def rejected_counts(self) -> Counter[str]:
        return Counter(r.reason for r in self.rejected)

    def label_values(self, metric: str, label: str) -> NDArray[np.object_]:
        """Label ``label`` of every sample of ``metric`` (object array of str or None)."""
        m = self.metrics[metric]
        return self.labels.column(label)[m.label_ids]

    def samples(self) -> Iterator[tuple[str, dict[str, str], float, int | None]]:
        """(name, labels, value, timestamp_ms or None) for every sample; slow, for tests and debugging."""
        sets = list(self.labels)
        for m in self.metrics.values():
            ts = m.timestamps_ms
            for k in range(len(m)):
                t = None if ts is None or ts[k] == NO_TIMESTAMP else int(ts[k])
                yield m.name, sets[int(m.label_ids[k])], float(m.values[k]), t
