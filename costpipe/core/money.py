"""Exact money columns: integer pico-dollars (int64) <-> Arrow decimal128(38, 12).

Why: decimal128(38, 12) stores the unscaled integer, which *is* the amount in pico-dollars, so
converting is a buffer reinterpretation (no per-row Python, no floats). Hot paths add int64
pico-dollars with numpy/pyarrow and only build the decimal column at the edge.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

import numpy as np
import pyarrow as pa

PICO = 10**12
MONEY: Final = pa.decimal128(38, 12)  # every money column of every schema
MONEY_QUANTUM: Final = Decimal("0.000000000001")


def pico_to_money(pico: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """int64 pico-dollars -> decimal128(38, 12); `valid` (bool) marks non-null rows."""
    values = np.ascontiguousarray(pico, dtype=np.int64)
    words = np.empty((len(values), 2), dtype=np.int64)
    words[:, 0] = values
    words[:, 1] = values >> 63  # sign-extend to 128 bits (little-endian low, high)
    validity = None
    null_count = 0
    if valid is not None:
        mask = np.asarray(valid, dtype=bool)
        null_count = int(len(mask) - mask.sum())
        if null_count:
            validity = pa.py_buffer(np.packbits(mask, bitorder="little").tobytes())
    return pa.Array.from_buffers(
        MONEY, len(values), [validity, pa.py_buffer(words.tobytes())], null_count=null_count
    )


def money_to_pico(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """decimal128(38, 12) -> int64 pico-dollars (nulls -> 0); raises if a value needs > 64 bits."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not column.type.equals(MONEY):
        column = column.cast(MONEY)
    if len(column) == 0:
        return np.zeros(0, dtype=np.int64)
    data = column.buffers()[1]
    words = np.frombuffer(data, dtype=np.int64, count=2 * (column.offset + len(column)))
    words = words.reshape(-1, 2)[column.offset :]
    low, high = words[:, 0], words[:, 1]
    if not np.array_equal(high, low >> 63):
        raise OverflowError("money value beyond 9.2 million dollars in one row")
    out = low.copy()
    if column.null_count:
        out[~np.asarray(column.is_valid(), dtype=bool)] = 0
    return out


def to_pico(amount: Decimal) -> int:
    """Decimal dollars -> pico-dollars, rounded half-even (the MONEY quantum)."""
    return int(amount.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN) * PICO)

