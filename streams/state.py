"""One partition's share of a Faust table, for the stages that keep state per partition.

Why: the allocator and the merger run once per partition of their input topic, and a Faust
table holds every assigned partition's keys in one mapping (its changelog partition is the
event's partition). Each stage instance sees only its own keys through a prefix, and a revoked
partition's keys are dropped from the local copy (the new owner recovers them from the
changelog; a stale local copy could otherwise come back with an old value).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any


class PartitionView(MutableMapping[str, Any]):
    """`table` restricted to keys `"<partition>|..."`, shown without the prefix."""

    def __init__(self, table: MutableMapping[str, Any], partition: int) -> None:
        self.table = table
        self.prefix = f"{partition}|"

    def __getitem__(self, key: str) -> Any:
        value = self.table.get(self.prefix + key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self.table.get(self.prefix + key)
        return default if value is None else value

    def __setitem__(self, key: str, value: Any) -> None:
        self.table[self.prefix + key] = value

    def __delitem__(self, key: str) -> None:
        del self.table[self.prefix + key]

    def pop(self, key: str, default: Any = None) -> Any:
        full = self.prefix + key
        if self.table.get(full) is None:
            return default
        value = self.table[full]
        del self.table[full]
        return value

    def __iter__(self) -> Iterator[str]:
        size = len(self.prefix)
        return (key[size:] for key in list(self.table.keys()) if key.startswith(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def forget_local(table: Any, partitions: set[int]) -> None:
    """Drop the local copy of `partitions`' keys (no changelog write: they are not ours now)."""
    store = getattr(table, "data", table)
    prefixes = tuple(f"{p}|" for p in partitions)
    for key in [k for k in list(store.keys()) if isinstance(k, str) and k.startswith(prefixes)]:
        store.pop(key, None)
