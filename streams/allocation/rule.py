"""GPU cost per (GPU, time bucket) and its exact split over the requests that GPU served.

The rule (documented for FinOps readers):
1. GPU cost of a bucket = $/GPU-hour x bucket_seconds / 3600 x gpu_fraction
   + energy (kWh) x $/kWh x PUE, rounded half-even to the pico-dollar. gpu_fraction is the
   share of a physical GPU a device stands for: 1 for a whole GPU; for a GPU split into MIG
   instances, each instance's memory share, and the parent keeps the unpartitioned rest, so the
   physical GPU is charged once (the sampler splits the parent's power the same way).
   Energy = NVML energy-counter delta from the previous bucket's last sample to this bucket's
   last sample; when the counter is missing, went backwards, or there is no previous sample,
   Σ power_w x interval_s over the bucket's samples.
2. Busy share = mean GPU utilisation of the bucket's samples (0..100 %, missing values count
   as 100 % when the bucket served requests). busy = floor(GPU cost x busy share).
3. busy is split over the bucket's internal requests by weight = input + output tokens (equal
   weights when all are 0), in integer pico-dollars with the largest-remainder method (ties by
   request_id), so Σ allocated = busy exactly.
4. idle = GPU cost - Σ allocated: its own cost line, so self-hosting never looks cheaper than it
   is. A bucket with samples but no requests is all idle.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from costpipe.core.money import to_pico
from costpipe.core.settings import GpuSettings

MJ_PER_KWH = Decimal(3_600_000_000)


def bucket_energy_mj(
    energy_mj: list[int | None], power_w: list[float | None], interval_s: list[float],
    previous_energy_mj: int | None,
) -> int:
    """Energy used in one bucket (samples in time order), in millijoules."""
    last = energy_mj[-1] if energy_mj else None
    if previous_energy_mj is not None and last is not None and last >= previous_energy_mj:
        return int(last - previous_energy_mj)
    total = Decimal(0)
    for power, interval in zip(power_w, interval_s, strict=True):
        if power is not None and interval is not None:
            total += Decimal(repr(float(power))) * Decimal(repr(float(interval))) * 1000
    return int(total.to_integral_value())


def gpu_bucket_cost_pico(energy_mj: int, settings: GpuSettings,
                         fraction: Decimal = Decimal(1)) -> int:
    """Amortised share of the GPU-hour price (x the share of a physical GPU this device is,
    for MIG instances) plus energy x $/kWh x PUE, in pico-dollars."""
    amortised = settings.dollars_per_gpu_hour * settings.bucket_seconds / Decimal(3600) * fraction
    energy = Decimal(energy_mj) / MJ_PER_KWH * settings.dollars_per_kwh * settings.pue
    return to_pico(amortised + energy)


def busy_pico(cost_pico: int, utilization_pct: list[float | None], has_requests: bool) -> int:
    """floor(cost x mean utilisation); 0 when the bucket served no request."""
    if not has_requests or cost_pico <= 0:
        return 0
    if not utilization_pct:
        return cost_pico
    milli = [100_000 if u is None else min(max(round(u * 1000), 0), 100_000)
             for u in utilization_pct]
    share = Decimal(sum(milli)) / Decimal(100_000 * len(milli))
    return int((Decimal(cost_pico) * share).to_integral_value(rounding=ROUND_FLOOR))


def allocate(total_pico: int, weights: np.ndarray,
             tie_keys: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """Split `total_pico` over rows proportionally to `weights`, exactly (largest remainder).

    Σ result == total_pico; each share is floor or floor+1 of its exact proportional value; the
    leftover pico-dollars go to the largest remainders, ties by `tie_keys` (request_id).
    int64 arithmetic when total x weight and Σ weights fit (always, for real buckets: ~1e10
    pico x tokens); Python ints otherwise.
    """
    n = len(weights)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    w = np.asarray(weights)
    if (w.dtype.kind not in "iu" or total_pico < 0 or int(w.min()) < 0
            or int(w.max()) * max(total_pico, n) >= _INT64_LIMIT):
        keys = tie_keys if isinstance(tie_keys, list) else tie_keys.to_pylist()
        return _allocate_exact(total_pico, [int(x) for x in w], keys)
    w = w.astype(np.int64, copy=False)
    if w.sum() <= 0:
        w = np.ones(n, dtype=np.int64)
    total_w = int(w.sum())
    product = w * total_pico
    shares = product // total_w
    left = total_pico - int(shares.sum())
    if left:
        ties = pa.array(tie_keys, pa.string()) if isinstance(tie_keys, list) else tie_keys
        ranked = pa.table({"remainder": product % total_w, "tie": ties})
        order = pc.sort_indices(ranked, sort_keys=[("remainder", "descending"),
                                                   ("tie", "ascending")])
        shares[order.slice(0, left).to_numpy()] += 1
    return shares


_INT64_LIMIT = 2**63


def _allocate_exact(total_pico: int, w: list[int], tie_keys: list[str]) -> np.ndarray:
    """The same rule in Python ints: for totals x weights beyond 64 bits."""
    if sum(w) <= 0:
        w = [1] * len(w)
    total_w = sum(w)
    shares = [total_pico * x // total_w for x in w]
    remainders = [total_pico * x % total_w for x in w]
    left = total_pico - sum(shares)
    order = sorted(range(len(w)), key=lambda i: (-remainders[i], tie_keys[i]))
    for i in order[:left]:
        shares[i] += 1
    return np.asarray(shares, dtype=np.int64)

