"""NVML access with an honest no-GPU state: how many GPUs, how much memory which processes hold, and one
sampler thread that keeps a bounded history for every viewer of the Memory tab."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from webui.services.placement import UsableGpus, usable_gpus

T = TypeVar("T")

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class DeviceSample:
    """One GPU at one moment, as `nvidia-smi` shows it; None where the GPU does not report a value (vGPU
    slices often hide utilisation, temperature and power)."""

    index: int
    name: str
    used_bytes: int
    total_bytes: int
    utilization: int | None
    temperature: int | None
    power_w: float | None


@dataclass(frozen=True)
class Sample:
    """Every GPU and every compute process at one time (processes only in the fine history)."""

    t: float
    devices: tuple[DeviceSample, ...]
    processes: tuple[GpuProcessMemory, ...] = ()


def _maybe(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:  # NVMLError_NotSupported and friends: the value is simply not there
        return None


class GpuProbe:
    """App-scoped NVML handle. Without a driver it reports `available=False` and the reason, never raises.

    visible_devices / device_order: the console's own CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER (None: not
    set), which limit the GPUs its children may be placed on (NVML itself lists every GPU regardless)."""

    def __init__(self, visible_devices: str | None = None, device_order: str = "") -> None:
        self._limit = visible_devices
        self._order = device_order
        self._usable: UsableGpus | None = None  # read once: neither the limit nor the GPUs' UUIDs change
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

    def identities(self) -> list[tuple[str, str]]:
        """(UUID, name) of each GPU, by NVML index."""

        def read(nvml: Any, _index: int, handle: Any) -> list[tuple[str, str]]:
            uuid, name = nvml.nvmlDeviceGetUUID(handle), nvml.nvmlDeviceGetName(handle)
            return [(uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                     name.decode() if isinstance(name, bytes) else str(name))]

        return self._per_device(read)

    def usable(self) -> UsableGpus:
        """The GPUs a server or a job may be placed on, in NVML numbers (see placement.usable_gpus)."""
        if self._nvml is None:
            return UsableGpus(None, self._limit)
        if self._usable is None:
            try:
                found = self.identities()
            except Exception as exc:  # a GPU lost from the bus: unknown now, asked again next time
                log.warning("could not read the GPUs' UUIDs: %s", exc)
                return UsableGpus(None, self._limit)
            self._usable = usable_gpus(self._limit, self._order, [u for u, _ in found], [n for _, n in found])
        return self._usable

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

    def read_sample(self) -> Sample:
        """One reading of every GPU (and its compute processes) for the sampler."""

        def read(nvml: Any, index: int, handle: Any) -> list[DeviceSample]:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            power = _maybe(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
            return [DeviceSample(
                index, name.decode() if isinstance(name, bytes) else str(name), int(mem.used), int(mem.total),
                _maybe(lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
                _maybe(lambda: int(nvml.nvmlDeviceGetTemperature(handle, 0))),  # 0 = NVML_TEMPERATURE_GPU
                power / 1000.0 if power is not None else None)]

        devices = tuple(self._per_device(read))
        return Sample(time.time(), devices, tuple(self.process_memory()))

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


class GpuSampler:
    """The one NVML reader of the app, however many browsers watch: a thread that samples at `hz` into two
    bounded rings — every sample of the last `fine_seconds` (with processes), and one sample every
    `coarse_every_s` for `coarse_seconds` (24 h) — so memory stays flat however long the console runs."""

    def __init__(self, probe: GpuProbe, hz: float = 2.0, fine_seconds: float = 300.0,
                 coarse_every_s: float = 10.0, coarse_seconds: float = 86_400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.probe = probe
        self.hz = max(0.1, min(float(hz), 20.0))
        self.coarse_every_s = coarse_every_s
        self._clock = clock
        self._fine: collections.deque[Sample] = collections.deque(maxlen=max(1, int(fine_seconds * self.hz)))
        self._coarse: collections.deque[Sample] = collections.deque(maxlen=max(1, int(coarse_seconds / coarse_every_s)))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reads = 0  # NVML readings taken: one per tick, whatever the number of viewers
        self.error = ""

    @property
    def fine_seconds(self) -> float:
        return (self._fine.maxlen or 1) / self.hz

    def start(self) -> None:
        if self._thread is None and self.probe.available:
            self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        period = 1.0 / self.hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.tick()
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def tick(self) -> Sample | None:
        """Take one reading (the thread calls this; tests and benchmarks may too, with their own clock)."""
        try:
            reading = self.probe.read_sample()
        except Exception as exc:  # a GPU that falls off the bus: keep the history, say why
            error = f"{type(exc).__name__}: {exc}"
            if error != self.error:  # once per distinct failure, not at every reading
                log.warning("reading NVML failed: %s", error, exc_info=True)
            self.error = error
            return None
        now = self._clock()
        sample = Sample(now, reading.devices, reading.processes)
        with self._lock:
            self.reads += 1
            self._fine.append(sample)
            if not self._coarse or now - self._coarse[-1].t >= self.coarse_every_s:
                self._coarse.append(Sample(now, reading.devices))
        self.error = ""
        return sample

    def latest(self) -> Sample | None:
        with self._lock:
            return self._fine[-1] if self._fine else None

    def history(self, window_s: float, now: float | None = None) -> list[Sample]:
        """Samples of the last `window_s` seconds: every one while the fine ring covers the window, else the
        coarse ones (plus the fine tail, so the newest point is always there)."""
        now = self._clock() if now is None else now
        since = now - window_s
        with self._lock:
            fine = [s for s in self._fine if s.t >= since]
            if window_s <= self.fine_seconds:
                return fine
            first_fine = fine[0].t if fine else now
            return [s for s in self._coarse if since <= s.t < first_fine] + fine

    def sizes(self) -> tuple[int, int]:
        with self._lock:
            return len(self._fine), len(self._coarse)
