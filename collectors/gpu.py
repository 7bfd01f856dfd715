"""NVML GPU sampler: one Arrow batch of `GPU_SAMPLE` rows per tick, per GPU and per MIG instance.

Why it is shaped like this: own-model cost is GPU time (idle included) plus energy, so the
sampler must keep reporting through partial failures. A field NVML cannot give (NotSupported,
Unknown, ...) becomes null for that row; a GPU that falls off the bus (GpuIsLost) is logged once
and skipped while the others continue; only "no driver / no GPU at all" stops the process.

All NVML calls go through the `pynvml` module attributes (never `from pynvml import ...`) so
tests can replace the library calls with fake devices without touching the sampler.

MIG rows: the parent GPU row carries power, energy and temperature (NVML reports those per
board); each MIG instance gets its own row with the MIG device UUID in `gpu_uuid`, the GPU
instance id in `mig_instance`, and its own memory figures. Costing must not count a MIG row's
time on top of its parent row (the parent's `gpu_index` is shared, `mig_instance` is non-null).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pynvml

from costpipe.schemas.records import GPU_SAMPLE

log = logging.getLogger(__name__)


class GpuUnavailable(RuntimeError):
    """No NVIDIA driver or no GPU: the message is the one line the CLI prints."""


class BatchSink(Protocol):
    def emit_batch(self, batch: pa.RecordBatch | pa.Table) -> None: ...


def _field(read: Callable[[], Any]) -> Any:
    """One NVML reading; an unsupported or failing field is null, a lost GPU propagates."""
    try:
        return read()
    except pynvml.NVMLError_GpuIsLost:
        raise
    except pynvml.NVMLError:
        return None


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class GpuSampler:
    """Reads every GPU once per `sample()` call; `open()` must succeed first."""

    interval_s: float = 1.0
    host: str = field(default_factory=socket.gethostname)
    _lost: set[int] = field(default_factory=set, init=False)
    _opened: bool = field(default=False, init=False)

    def open(self) -> int:
        """Initialise NVML; return the GPU count or raise GpuUnavailable with one line."""
        try:
            pynvml.nvmlInit()
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            raise GpuUnavailable(f"no NVIDIA driver/GPU found: {exc}") from None
        except OSError as exc:  # a broken libnvidia-ml install
            raise GpuUnavailable(f"no NVIDIA driver/GPU found: {exc}") from None
        self._opened = True
        if count == 0:
            self.close()
            raise GpuUnavailable("no NVIDIA driver/GPU found: the driver reports 0 GPUs")
        return count

    def close(self) -> None:
        if self._opened:
            self._opened = False
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()

    def __enter__(self) -> GpuSampler:
        self.open()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def sample(self, now: dt.datetime | None = None) -> pa.RecordBatch:
        """One row per live GPU and MIG instance; never raises for a single device's trouble."""
        timestamp = now or dt.datetime.now(dt.UTC)
        rows: list[dict[str, Any]] = []
        count = int(pynvml.nvmlDeviceGetCount())
        for index in range(count):
            if index in self._lost:
                continue
            try:
                rows.extend(self._read_device(index, timestamp))
            except pynvml.NVMLError_GpuIsLost:
                self._lost.add(index)
                log.error("GPU %d is lost (fell off the bus); skipping it from now on", index)
            except pynvml.NVMLError as exc:
                log.warning("GPU %d skipped this tick: %s", index, exc)
        return pa.RecordBatch.from_pylist(rows, schema=GPU_SAMPLE)

    def _read_device(self, index: int, timestamp: dt.datetime) -> list[dict[str, Any]]:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        util = _field(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
        memory = _field(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
        power_mw = _field(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
        row = {
            "timestamp": timestamp,
            "host": self.host,
            "gpu_uuid": uuid,
            "gpu_index": index,
            "mig_instance": None,
            "gpu_name": _text(_field(lambda: pynvml.nvmlDeviceGetName(handle))),
            "utilization_pct": None if util is None else float(util.gpu),
            "memory_used_bytes": None if memory is None else int(memory.used),
            "memory_total_bytes": None if memory is None else int(memory.total),
            "power_w": None if power_mw is None else power_mw / 1000.0,
            "energy_mj": _field(lambda: int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))),
            "temperature_c": _field(
                lambda: float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
            ),
            "interval_s": self.interval_s,
            "gpu_fraction": None,
        }
        return [row, *self._read_mig(handle, row)]

    def _read_mig(self, handle: Any, parent: dict[str, Any]) -> list[dict[str, Any]]:
        """The MIG instances of a GPU in MIG mode, each with its share of the physical GPU.

        A physical GPU must be charged once (docs/architecture.md, GPU cost): each instance
        stands for its memory share (`gpu_fraction`) and gets that share of the GPU's power;
        the parent row keeps the unpartitioned rest. NVML reads energy only for the whole GPU,
        so every row is costed from its power share and the counter is left out.
        """
        mode = _field(lambda: pynvml.nvmlDeviceGetMigMode(handle))
        if not mode or mode[0] != pynvml.NVML_DEVICE_MIG_ENABLE:
            return []
        slots = _field(lambda: pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)) or 0
        rows = []
        for slot in range(int(slots)):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError_GpuIsLost:
                raise
            except pynvml.NVMLError:
                continue  # an empty slot (NotFound) or an instance being torn down
            uuid = _text(_field(lambda mig=mig: pynvml.nvmlDeviceGetUUID(mig)))
            if uuid is None:
                continue
            gi = _field(lambda mig=mig: pynvml.nvmlDeviceGetGpuInstanceId(mig))
            memory = _field(lambda mig=mig: pynvml.nvmlDeviceGetMemoryInfo(mig))
            util = _field(lambda mig=mig: pynvml.nvmlDeviceGetUtilizationRates(mig))
            rows.append({
                **parent,
                "gpu_uuid": uuid,
                "mig_instance": None if gi is None else str(gi),
                "utilization_pct": None if util is None else float(util.gpu),
                "memory_used_bytes": None if memory is None else int(memory.used),
                "memory_total_bytes": None if memory is None else int(memory.total),
                "power_w": None,
                "energy_mj": None,
                "temperature_c": None,
            })
        total = parent["memory_total_bytes"]
        if not rows or not total:
            return rows
        power = parent["power_w"]
        for row in rows:
            share = min(1.0, (row["memory_total_bytes"] or 0) / total)
            row["gpu_fraction"] = share
            row["power_w"] = None if power is None else power * share
        rest = max(0.0, 1.0 - sum(row["gpu_fraction"] for row in rows))
        parent["gpu_fraction"] = rest
        parent["power_w"] = None if power is None else power * rest
        parent["energy_mj"] = None
        return rows


def run(
    sampler: GpuSampler,
    sink: BatchSink,
    *,
    ticks: int | None = None,
    stop: threading.Event | None = None,
    on_batch: Callable[[pa.RecordBatch], None] | None = None,
) -> int:
    """Sample on a fixed schedule (no drift) until `ticks` are done or `stop` is set.

    Returns the number of rows emitted. A tick that overruns skips ahead instead of bursting.
    """
    stop = stop or threading.Event()
    emitted = 0
    done = 0
    next_at = time.monotonic()
    while not stop.is_set() and (ticks is None or done < ticks):
        batch = sampler.sample()
        if batch.num_rows:
            sink.emit_batch(batch)
            emitted += batch.num_rows
        if on_batch is not None:
            on_batch(batch)
        done += 1
        if ticks is not None and done >= ticks:
            break
        next_at += sampler.interval_s
        now = time.monotonic()
        if next_at < now:
            next_at = now
        stop.wait(next_at - now)
    return emitted
