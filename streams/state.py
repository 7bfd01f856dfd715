"""One partition's share of a Faust table, for the stages that keep state per partition.

Why: the allocator and the merger run once per partition of their input topic, and a Faust
table holds every assigned partition's keys in one mapping (its changelog partition is the
event's partition). Each stage instance sees only its own keys through a prefix, and a revoked
partition's keys are dropped from the local copy (the new owner recovers them from the
changelog; a stale local copy could otherwise come back with an old value).

A stage that emits records *because* of a state change (a closed GPU bucket, a closed window)
holds its writes (`hold`) until those records are delivered, then `release`s them: a changelog
write that reached the broker before the records it stands for would, after a SIGKILL in
between, make the replayed message find the bucket already closed and emit nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

_DELETED = object()


class PartitionView(MutableMapping[str, Any]):
    """`table` restricted to keys `"<partition>|..."`, shown without the prefix."""

    def __init__(self, table: MutableMapping[str, Any], partition: int) -> None:
        self.table = table
        self.prefix = f"{partition}|"
        self._held: dict[str, Any] | None = None  # key -> value or _DELETED, while held

    # -- write-behind
    def hold(self) -> None:
        """Keep writes in memory (reads see them) until `release` or `discard`."""
        if self._held is None:
            self._held = {}

    def release(self) -> None:
        """Write what was held to the table, in the order it was first written."""
        held, self._held = self._held, None
        for key, value in (held or {}).items():
            full = self.prefix + key
            if value is _DELETED:
                if self.table.get(full) is not None:
                    del self.table[full]
            else:
                self.table[full] = value

    def discard(self) -> None:
        """Forget what was held (the work that wrote it failed and will be redone)."""
        self._held = None

    # -- mapping
    def get(self, key: str, default: Any = None) -> Any:
        if self._held is not None and key in self._held:
            value = self._held[key]
            return default if value is _DELETED else value
        value = self.table.get(self.prefix + key)
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if self._held is not None:
            self._held[key] = value
        else:
            self.table[self.prefix + key] = value

    def __delitem__(self, key: str) -> None:
        if self.get(key) is None:
            raise KeyError(key)
        if self._held is not None:
            self._held[key] = _DELETED
        else:
            del self.table[self.prefix + key]

    def pop(self, key: str, default: Any = None) -> Any:
        value = self.get(key)
        if value is None:
            return default
        del self[key]
        return value

    def __iter__(self) -> Iterator[str]:
        size = len(self.prefix)
        keys = [key[size:] for key in list(self.table.keys()) if key.startswith(self.prefix)]
        if self._held is None:
            return iter(keys)
        held = self._held
        stored = set(keys)
        return iter([k for k in keys if held.get(k, True) is not _DELETED]
                    + [k for k, v in held.items() if k not in stored and v is not _DELETED])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def forget_local(table: Any, partitions: set[int]) -> None:
    """Drop the local copy of `partitions`' keys (no changelog write: they are not ours now)."""
    store = getattr(table, "data", table)
    prefixes = tuple(f"{p}|" for p in partitions)
    for key in [k for k in list(store.keys()) if isinstance(k, str) and k.startswith(prefixes)]:
        store.pop(key, None)
