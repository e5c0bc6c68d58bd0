"""GpuProbe's arithmetic over NVML answers. NVML cannot exist without a GPU, so a stand-in module answers
here; the real NVML path runs in scripts/gpu_check.py on a GPU machine."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from webui.services.gpu import GpuProbe


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")
    procs = {0: [SimpleNamespace(pid=10, usedGpuMemory=4 << 30), SimpleNamespace(pid=11, usedGpuMemory=None)],
             1: [SimpleNamespace(pid=12, usedGpuMemory=1 << 30)]}
    nvml.nvmlInit = lambda: None
    nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: 2
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA A100-SXM4-80GB" if h == 0 else "Tesla V100"
    nvml.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=80 << 30, used=(5 << 30) if h == 0 else 0)
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: (8, 0) if h == 0 else (7, 0)
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda h: procs[h]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


def test_reads_devices_processes_and_capabilities(fake_nvml: types.ModuleType) -> None:
    probe = GpuProbe()
    assert probe.available and probe.device_count() == 2
    assert [(d.index, d.name, d.used_bytes) for d in probe.devices()] == [
        (0, "NVIDIA A100-SXM4-80GB", 5 << 30), (1, "Tesla V100", 0)]
    assert probe.memory_of({10, 11}) == 4 << 30  # a process NVML cannot size counts as 0
    assert probe.memory_of({10, 12}) == 5 << 30  # a server's tree across both GPUs
    assert probe.bf16_supported() is False  # the V100 has no bfloat16
    fake_nvml.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)
    assert probe.bf16_supported() is True
    probe.close()
    assert not probe.available and probe.devices() == []


def test_without_a_driver_it_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = types.ModuleType("pynvml")

    def init() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    nvml.nvmlInit = init
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    probe = GpuProbe()
    assert not probe.available and "Not Found" in probe.reason
    assert probe.device_count() is None and probe.bf16_supported() is None and probe.memory_of({1}) == 0
