"""Costing: request events -> cost records, batch by batch (no per-event Python).

External rows are priced at once from the catalog (`costpipe.streams.pricing`). Own-model rows
get a shadow price now and leave as pending records for the GPU allocator
(`costpipe.streams.allocation`), which adds their GPU cost when their bucket closes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from costpipe.core.settings import Settings
from costpipe.schemas.records import BILLED_UNITS, COST_RECORD, TIMESTAMP
from costpipe.streams.pricing import internal_mask, price_batch, shadow_price_batch

_US = 1_000_000


def _optional(batch: pa.RecordBatch, name: str) -> pa.Array:
    if name in batch.schema.names:
        return batch.column(name)
    return pa.nulls(batch.num_rows, COST_RECORD.field(name).type)


def cost_records(batch: pa.RecordBatch, settings: Settings, partition: int,
                 offset: int) -> tuple[pa.Table, pa.Table]:
    """(external cost records, internal pending records) for one decoded request batch."""
    n = batch.num_rows
    internal = internal_mask(batch, settings)
    cost, list_cost, status = price_batch(batch, settings)
    shadow = shadow_price_batch(batch, settings)
    ts_us = batch.column("timestamp").cast(pa.int64()).to_numpy()
    bucket_us = settings.gpu.bucket_seconds * _US
    bucket = np.where(internal, ts_us - ts_us % bucket_us, 0)
    columns = {
        "record_id": batch.column("request_id"),
        "record_type": pa.repeat(pa.scalar("request"), n),
        "timestamp": batch.column("timestamp"),
        "operation": batch.column("operation"),
        "provider": batch.column("provider"),
        "provider_kind": pc.if_else(pa.array(internal), "internal", "external"),
        "model": batch.column("model"),
        "team": batch.column("team"),
        "app": batch.column("app"),
        "feature": batch.column("feature"),
        "input_tokens": batch.column("input_tokens"),
        "output_tokens": batch.column("output_tokens"),
        "cache_read_tokens": batch.column("cache_read_tokens"),
        "cache_write_tokens": batch.column("cache_write_tokens"),
        **{name: _optional(batch, name) for name in BILLED_UNITS},
        "cost": cost,
        "list_cost": list_cost,
        "shadow_cost": shadow,
        "pricing_status": pc.fill_null(status, "gpu_unattributed"),  # until allocated
        "latency_ms": batch.column("latency_ms"),
        "ttft_ms": batch.column("ttft_ms"),
        "status": batch.column("status"),
        "gpu_uuid": batch.column("gpu_uuid"),
        "bucket_start": pa.array(bucket.astype(np.int64)).cast(TIMESTAMP),
        "source_partition": pa.array(np.full(n, partition, dtype=np.int32)),
        "source_offset": pa.array(np.full(n, offset, dtype=np.int64)),
    }
    table = pa.Table.from_pydict(columns, schema=COST_RECORD)
    mask = pa.array(internal)
    table = table.set_column(table.schema.get_field_index("bucket_start"), "bucket_start",
                             pc.if_else(mask, table.column("bucket_start"),
                                        pa.scalar(None, TIMESTAMP)))
    return table.filter(pc.invert(mask)), table.filter(mask)


