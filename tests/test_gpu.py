"""What can only run where CUDA is: real NVML through the Memory service, and a real api_server started,
chatted with and stopped through the services. Elsewhere these are skipped, and the reason is shown.
The whole tour (every policy, AWQ, benchmarks) is scripts/gpu_check.py."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from webui.services.chat import SamplingParams
from webui.services.container import Services
from webui.services.gpu import GpuProbe, GpuSampler
from webui.services.lifecycle import handle_of
from webui.services.serve_spec import ServerSpec, suggest_port
from webui.settings import Settings


def _no_cuda_reason() -> str:
    probe = GpuProbe()
    try:
        if not probe.available:
            return f"no NVIDIA GPU here ({probe.reason})"
        if not probe.device_count():
            return "NVML sees no GPU"
    finally:
        probe.close()
    if importlib.util.find_spec("lmdeploy") is None:
        return "lmdeploy is not installed"
    return ""


REASON = _no_cuda_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(REASON), reason=f"needs CUDA: {REASON}")]


def test_real_nvml_readings_fill_the_sampler() -> None:
    probe = GpuProbe()
    sampler = GpuSampler(probe, hz=4)
    for _ in range(3):
        sampler.tick()
    latest = sampler.latest()
    device = latest.devices[0]
    assert device.total_bytes > 1 << 30 and 0 < device.used_bytes < device.total_bytes
    assert device.name and sampler.reads == 3
    probe.close()


def test_a_real_api_server_is_ready_answers_and_gives_its_memory_back(tmp_path: Path, tiny_model_dir: Path) -> None:
    services = Services.build(Settings(state_dir=tmp_path / "state", model_roots=(tiny_model_dir.parent,)))
    try:
        idle = services.gpu.devices()[0].used_bytes
        server = services.servers.start(ServerSpec(model_path=str(tiny_model_dir), backend="pytorch",
                                                   cache_max_entry_count=0.2, port=suggest_port(26333))).server
        ready = services.servers.wait_for(server.id, {"READY", "FAILED"}, timeout_s=300)
        assert ready.state == "READY", services.servers.log(server.id, 50)
        assert ready.gpu_blocks and ready.gpu_blocks > 1000
        endpoint = services.chat.endpoint_for_server(server.id)
        text, stats, _ = services.chat.complete(endpoint, [{"role": "user", "content": "Hi"}],
                                                SamplingParams(max_tokens=16))
        assert stats.usage_reported and stats.completion_tokens > 0 and stats.ttft_s < 5
        time.sleep(1.0)
        owners = {p["owner"] for p in services.memory.snapshot()["processes"] if p["used_mib"] > 100}
        assert f"server {server.id}" in owners
        compared = services.memory.compare_server(server.id)
        assert abs(compared["error_percent"]["blocks"]) < 5
        record = services.store.get_server(server.id)
        tree = {p.pid for p in services.supervisor.tree(handle_of(record.pid, record.create_time, record.log_path))}
        asked = time.monotonic()
        assert services.servers.stop(server.id).state == "STOPPING"
        assert time.monotonic() - asked < 0.5  # the call signals and returns
        assert services.servers.wait_for(server.id, {"STOPPED"}, 15).state == "STOPPED"
        assert services.servers.wait_for_event(server.id, {"memory_released", "memory_not_released"},
                                               30) == "memory_released"
        # The event is only recorded once a fresh reading shows the memory back: so does ours, right after.
        assert services.gpu.devices()[0].used_bytes <= idle + (256 << 20)
        assert not tree & {p.pid for p in services.gpu.process_memory()}
    finally:
        services.close()
