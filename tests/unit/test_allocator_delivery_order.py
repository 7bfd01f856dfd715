"""The allocator agent writes "bucket closed" only once the bucket's records are on the broker.

A changelog write that reached the broker before the cost records it stands for would, after a
SIGKILL in between, make the replayed message find the bucket closed and emit nothing: those
own-model costs would never reach the lake.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pyarrow as pa

from costpipe.schemas.envelope import SOURCE_HEADER, heartbeat_headers
from costpipe.streams import agents
from costpipe.streams.allocation.allocator import GpuAllocator
from costpipe.streams.state import PartitionView
from tests.streams_support.workload import make_workload


class _Outputs:
    """Sends that stay undelivered until the test says so."""

    def __init__(self) -> None:
        self.delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent = 0

    async def cost_records(self, table: pa.Table) -> list[Any]:
        if table.num_rows == 0:
            return []
        self.sent += table.num_rows
        return [self.delivery]

    async def window_partials(self, *_: Any) -> list[Any]:
        return []


def test_closed_bucket_state_waits_for_its_records_to_be_delivered(monkeypatch) -> None:
    settings = agents.settings
    table: dict[str, Any] = {}
    monkeypatch.setattr(agents, "allocators", agents._PerPartition(
        lambda p: GpuAllocator(settings, PartitionView(table, p), agents.P)))
    far = 2**60
    prepared = GpuAllocator(settings, PartitionView(table, 0), agents.P)
    samples = make_workload(settings, seconds=30, per_second=1).samples[0]
    prepared.add_samples(samples, "gpu:0:1", "gpu:0")
    for partition in range(agents.P):
        prepared.note_requests(far, f"requests:t:{partition}")
        if partition:  # the event below is the last GPU partition's heartbeat
            prepared.note_samples_until(far, f"gpu:{partition}")
    event = SimpleNamespace(
        message=SimpleNamespace(topic="gpuwork", partition=0, offset=5, generation_id=1),
        headers=[*heartbeat_headers(far), (SOURCE_HEADER, b"gpu:0:9")], value=b"")

    async def scenario() -> None:
        fake = _Outputs()
        monkeypatch.setattr(agents, "outputs", fake)
        task = asyncio.create_task(agents._allocate(event))
        for _ in range(20):
            await asyncio.sleep(0)
        assert fake.sent > 0 and not task.done()  # closed, its records not yet delivered
        assert not [k for k in table if "|m|closed|" in k], "closed before delivery"
        assert "0|m|hwm|gpu:0" not in table
        fake.delivery.set_result(None)
        await asyncio.wait_for(task, 5)
        assert [k for k in table if "|m|closed|" in k]
        assert table["0|m|hwm|gpu:0"] == "9"

    asyncio.run(scenario())
