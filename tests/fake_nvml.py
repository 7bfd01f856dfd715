"""Fake NVML devices installed by replacing the `pynvml` library calls (not the sampler).

Why: there is no GPU on CI machines; the sampler must still be exercised through the exact
nvidia-ml-py functions and exception classes it calls on real hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

GIB = 1024**3


@dataclass
class FakeGpu:
    index: int
    name: str = "NVIDIA H100 80GB HBM3"
    util: int = 50
    mem_used: int = 10 * GIB
    mem_total: int = 80 * GIB
    power_mw: int = 300_000
    energy_mj: int = 1_000_000
    temp: int = 60
    lost: bool = False
    failing: dict[str, type[pynvml.NVMLError]] = field(default_factory=dict)
    mig: list[tuple[int, int]] = field(default_factory=list)  # (gpu instance id, mem used)

    @property
    def uuid(self) -> str:
        return f"GPU-{self.index:08d}-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class MigHandle:
    parent: FakeGpu
    slot: int


class FakeNvml:
    def __init__(self, gpus: list[FakeGpu], init_error: type[pynvml.NVMLError] | None = None):
        self.gpus = gpus
        self.init_error = init_error
        self.calls: dict[str, int] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
        for name in dir(self):
            if name.startswith("nvml"):
                monkeypatch.setattr(pynvml, name, getattr(self, name))
        return self

    def _gpu(self, handle: Any, call: str) -> FakeGpu:
        self.calls[call] = self.calls.get(call, 0) + 1
        gpu = handle.parent if isinstance(handle, MigHandle) else handle
        if gpu.lost:
            raise pynvml.NVMLError_GpuIsLost()
        if call in gpu.failing:
            raise gpu.failing[call]()
        return gpu

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.init_error()

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self._gpu(self.gpus[index], "handle")

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        gpu = self._gpu(handle, "uuid")
        if isinstance(handle, MigHandle):
            return f"MIG-{gpu.index}-{handle.slot}"
        return gpu.uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu(handle, "name").name

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu = self._gpu(handle, "util")
        if isinstance(handle, MigHandle):
            raise pynvml.NVMLError_NotSupported()
        return SimpleNamespace(gpu=gpu.util, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        gpu = self._gpu(handle, "memory")
        if isinstance(handle, MigHandle):
            return SimpleNamespace(used=gpu.mig[handle.slot][1], total=10 * GIB, free=0)
        return SimpleNamespace(used=gpu.mem_used, total=gpu.mem_total,
                               free=gpu.mem_total - gpu.mem_used)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self._gpu(handle, "power").power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return self._gpu(handle, "energy").energy_mj

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        return self._gpu(handle, "temperature").temp

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        gpu = self._gpu(handle, "mig_mode")
        if not gpu.mig:
            raise pynvml.NVMLError_NotSupported()
        return [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        self._gpu(handle, "mig_count")
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, slot: int) -> MigHandle:
        gpu = self._gpu(handle, "mig_handle")
        if slot >= len(gpu.mig):
            raise pynvml.NVMLError_NotFound()
        return MigHandle(gpu, slot)

    def nvmlDeviceGetGpuInstanceId(self, handle: MigHandle) -> int:
        return handle.parent.mig[handle.slot][0]
