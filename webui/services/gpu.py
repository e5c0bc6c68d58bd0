"""NVML access with an honest no-GPU state: how many GPUs, and how much memory which processes hold."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class GpuProcessMemory:
    """One process's share of one GPU, as NVML reports it."""

    gpu_index: int
    pid: int
    used_bytes: int


@dataclass(frozen=True)
class GpuDevice:
    """One GPU's identity and memory at the moment of reading."""

    index: int
    name: str
    total_bytes: int
    used_bytes: int


class GpuProbe:
    """App-scoped NVML handle. Without a driver it reports `available=False` and the reason, never raises."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml = None
        self.reason = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
            self.reason = f"{type(exc).__name__}: {exc}".strip()

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def device_count(self) -> int | None:
        """Number of GPUs, or None when NVML cannot be read (so callers can tell 0 from unknown)."""
        if self._nvml is None:
            return None
        with self._lock:
            return int(self._nvml.nvmlDeviceGetCount())

    def _per_device(self, read: Callable[[Any, int, Any], list[T]]) -> list[T]:
        """Call read(nvml, index, handle) for every GPU under the lock and join the results."""
        if self._nvml is None:
            return []
        nvml = self._nvml
        out: list[T] = []
        with self._lock:
            for index in range(nvml.nvmlDeviceGetCount()):
                out.extend(read(nvml, index, nvml.nvmlDeviceGetHandleByIndex(index)))
        return out

    def devices(self) -> list[GpuDevice]:
        def read(nvml: Any, index: int, handle: Any) -> list[GpuDevice]:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            return [GpuDevice(index, name.decode() if isinstance(name, bytes) else str(name),
                              int(mem.total), int(mem.used))]

        return self._per_device(read)

    def bf16_supported(self) -> bool | None:
        """Whether every GPU computes in bfloat16 (compute capability 8.0+); None when NVML cannot tell."""
        majors = self._per_device(lambda nvml, _i, handle: [nvml.nvmlDeviceGetCudaComputeCapability(handle)[0]])
        return min(majors) >= 8 if majors else None

    def process_memory(self) -> list[GpuProcessMemory]:
        """Compute processes on every GPU (an api_server's memory sits in its engine child, not its own pid)."""

        def read(nvml: Any, index: int, handle: Any) -> list[GpuProcessMemory]:
            return [GpuProcessMemory(index, int(p.pid), int(p.usedGpuMemory or 0))
                    for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)]

        return self._per_device(read)

    def memory_of(self, pids: set[int]) -> int:
        """Bytes held on all GPUs by the given pids (a server's whole process tree)."""
        return sum(p.used_bytes for p in self.process_memory() if p.pid in pids)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None
