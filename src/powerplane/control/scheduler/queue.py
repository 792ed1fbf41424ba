"""Queued jobs, grouped so that a scheduling pass never rescans jobs it already knows cannot start.

Jobs are grouped by class, then tenant, then *group key* (shape, waiting-for-a-window flag); each group is a list
sorted by ``(order_s, seq)`` (``order_s`` is the submission time, or the requeue time of a job sent to the back).
A pass asks each tenant for the earliest head among the groups it may try, so jobs whose shape is known not to
fit are skipped as a group: a pass costs O(tenants x shapes) per start, not O(queue).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple

from powerplane.control.scheduler.request import Shape


class GroupKey(NamedTuple):
    shape: Shape
    deferred: bool  # waiting for a cheap or green window


Entry = tuple[float, int, int]  # (order_s, seq, job id)


class JobQueue:
    """Queued job ids by class index, tenant and group key."""

    def __init__(self, n_classes: int) -> None:
        self.groups: list[dict[str, dict[GroupKey, list[Entry]]]] = [{} for _ in range(n_classes)]
        self.shape_counts: list[Counter[Shape]] = [Counter() for _ in range(n_classes)]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def class_size(self, c: int) -> int:
        return sum(self.shape_counts[c].values())

    def push(self, c: int, tenant: str, key: GroupKey, entry: Entry) -> None:
        insort(self.groups[c].setdefault(tenant, {}).setdefault(key, []), entry)
        self.shape_counts[c][key.shape] += 1
        self._size += 1

    def remove(self, c: int, tenant: str, key: GroupKey, entry: Entry) -> None:
        by_key = self.groups[c][tenant]
        lst = by_key[key]
        i = bisect_left(lst, entry)
        if i == len(lst) or lst[i] != entry:
            raise KeyError(f"job {entry[2]} is not queued under {key}")
        del lst[i]
        if not lst:
            del by_key[key]
            if not by_key:
                del self.groups[c][tenant]
        counts = self.shape_counts[c]
        counts[key.shape] -= 1
        if counts[key.shape] == 0:
            del counts[key.shape]
        self._size -= 1

    def head(self, c: int, tenant: str, blocked: set[Shape], cheap: bool) -> tuple[GroupKey, Entry] | None:
        """The earliest job of a tenant whose shape is not ``blocked``; jobs waiting for a window only when
        ``cheap``."""
        best: tuple[GroupKey, Entry] | None = None
        for key, lst in self.groups[c].get(tenant, {}).items():
            if (best is None or lst[0] < best[1]) and key.shape not in blocked and (cheap or not key.deferred):
                best = (key, lst[0])
        return best

    def tenants(self, c: int) -> list[str]:
        return list(self.groups[c])

    def entries(self, c: int) -> Iterator[tuple[str, GroupKey, Entry]]:
        """Every queued entry of a class (unordered)."""
        for tenant, by_key in self.groups[c].items():
            for key, lst in by_key.items():
                for entry in lst:
                    yield tenant, key, entry
