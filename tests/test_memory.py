"""The Memory tab's services: the sampler's bounded history and single reader, owners of GPU processes,
event markers, CSV round-trip, the no-GPU message, and predicted against measured.

NVML cannot exist without a GPU, so the stand-in answers here (tests/conftest.py: StandInNvml); the one
test that needs no stand-in is the no-GPU path, which is this machine's real state."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import StandInNvml, fake_argv_factory
from webui.services.container import Services
from webui.services.gpu import GpuProbe, GpuSampler
from webui.services.memory import parse_csv
from webui.services.planner import MIB
from webui.services.serve_spec import ServerSpec, suggest_port
from webui.settings import Settings


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_reading_has_what_nvidia_smi_shows_and_none_where_a_slice_hides_it(stand_in_nvml: StandInNvml) -> None:
    probe = GpuProbe()
    stand_in_nvml.procs[0] = [SimpleNamespace(pid=4242, usedGpuMemory=3 << 30)]
    sample = probe.read_sample()
    a100, slice_24 = sample.devices
    assert (a100.used_bytes, a100.total_bytes, a100.utilization, a100.temperature, a100.power_w) == (
        5 << 30, 80 << 30, 37, 41, pytest.approx(123.456))
    assert slice_24.name == "GRID A100-24C" and slice_24.utilization is None and slice_24.power_w is None
    assert [(p.gpu_index, p.pid, p.used_bytes) for p in sample.processes] == [(0, 4242, 3 << 30)]


def test_the_history_stays_bounded_and_windows_pick_the_right_ring(stand_in_nvml: StandInNvml) -> None:
    clock = Clock()
    sampler = GpuSampler(GpuProbe(), hz=4, fine_seconds=60, coarse_every_s=10, coarse_seconds=3600, clock=clock)
    for _ in range(4 * 7200):  # two simulated hours at 4 Hz
        stand_in_nvml.used[0] = (5 << 30) + int(clock.t) % 1000
        sampler.tick()
        clock.t += 0.25
    assert sampler.sizes() == (240, 360)  # 60 s × 4 Hz, 3600 s / 10 s: nothing grows beyond its ring
    fine = sampler.history(30)
    assert len(fine) == 120 and all(s.processes == () for s in fine)  # fine ring, every sample
    hour = sampler.history(3600)
    assert 355 < len(hour) < 365 + 240
    times = [s.t for s in hour]
    assert times == sorted(times) and times[-1] == sampler.latest().t
    assert all(b - a >= 0.25 for a, b in zip(times, times[1:], strict=False))


def test_one_reader_for_many_viewers(stand_in_nvml: StandInNvml) -> None:
    sampler = GpuSampler(GpuProbe(), hz=10)
    sampler.start()
    stop = threading.Event()
    views = []

    def viewer() -> None:
        while not stop.is_set():
            views.append(len(sampler.history(300)))
            sampler.latest()

    viewers = [threading.Thread(target=viewer) for _ in range(8)]
    started = time.monotonic()
    for v in viewers:
        v.start()
    time.sleep(1.0)
    stop.set()
    for v in viewers:
        v.join()
    sampler.stop()
    elapsed = time.monotonic() - started
    assert len(views) > 100  # the viewers read often …
    assert sampler.reads <= elapsed * 10 + 2  # … but NVML was read only at the sampler's rate
    assert stand_in_nvml.calls == sampler.reads * 2  # one memory read per GPU per tick, nothing else


def test_without_nvidia_the_tab_says_why(bare_settings: Settings) -> None:
    services = Services.build(bare_settings)  # this machine: no NVIDIA driver, so no stand-in here
    try:
        snapshot = services.memory.snapshot()
        assert snapshot["available"] is False and snapshot["devices"] == []
        assert snapshot["reason"].startswith("NVMLError")  # e.g. NVMLError_LibraryNotFound: … Not Found
        assert services.memory.history("5m") == [] and services.memory.compare_server("x") == {
            "error": "unknown_server"}
    finally:
        services.close()


@pytest.fixture
def watched(stand_in_nvml: StandInNvml, settings: Settings, model_root: Path):
    """Services with a stand-in server (a real child with a worker grandchild) and the stand-in NVML."""
    services = Services.build(settings, argv_factory=fake_argv_factory("--grandchild"))
    spec = ServerSpec(model_path=str(model_root / "tiny llama; echo pwned"), port=suggest_port(31700),
                      kv_policy="int8", cache_max_entry_count=0.4)
    server = services.servers.start(spec).server
    ready = services.servers.wait_for(server.id, {"READY", "FAILED"}, timeout_s=30)
    assert ready.state == "READY"
    try:
        yield services, ready, stand_in_nvml
    finally:
        services.close()


def test_gpu_processes_are_named_by_their_owner_and_events_become_markers(watched) -> None:
    services, server, nvml = watched
    worker = [p for p in services.supervisor.tree(_handle(services, server.id)) if p.pid != server.pid][0]
    nvml.procs[0] = [SimpleNamespace(pid=worker.pid, usedGpuMemory=30 << 30),
                     SimpleNamespace(pid=1, usedGpuMemory=1 << 20)]
    services.memory.sampler.tick()
    snapshot = services.memory.snapshot()
    owners = {p["pid"]: p["owner"] for p in snapshot["processes"]}
    assert owners[worker.pid] == f"server {server.id}"  # the engine child, not the api_server's own pid
    assert owners[1] == ""
    assert snapshot["devices"][0]["used_mib"] == 5 * 1024
    events = services.memory.events("5m")
    kinds = [(e["source"], e["kind"]) for e in events]
    assert (server.id, "start") in kinds and (server.id, "ready") in kinds
    ready_at = next(e["t"] for e in events if e["kind"] == "ready")
    assert ready_at == pytest.approx(server.ready_at, abs=0.001)  # the marker sits where READY was seen


def test_history_csv_round_trips(watched) -> None:
    services, _, nvml = watched
    for used in (1, 2, 3):
        nvml.used[0] = used << 30
        services.memory.sampler.tick()
    rows = services.memory.history("5m")
    back = parse_csv(services.memory.history_csv("5m"))
    assert len(back) == len(rows) >= 6
    for original, read in zip(rows, back, strict=True):
        assert read["gpu"] == original["gpu"] and read["name"] == original["name"]
        assert read["used_mib"] == pytest.approx(original["used_mib"])
        assert read["time"] == pytest.approx(original["t"], abs=0.001)
        assert read["utilization"] == (None if original["utilization"] is None else float(original["utilization"]))


def test_predicted_against_measured_for_a_ready_server(watched) -> None:
    services, server, nvml = watched
    worker = [p for p in services.supervisor.tree(_handle(services, server.id)) if p.pid != server.pid][0]
    # What the H100 showed for this spec's shape at 0.4 / int8: 36,142 MiB used, 480 of them before.
    nvml.used[0] = 36_142 * MIB
    nvml.procs[0] = [SimpleNamespace(pid=worker.pid, usedGpuMemory=(36_142 - 480) * MIB)]
    services.memory.sampler.tick()
    result = services.memory.compare_server(server.id)
    assert result["measured"]["server_tree_bytes"] == (36_142 - 480) * MIB
    blocks = round(256839 * 0.4 / 0.8 * 1.94)  # the stand-in's line: its recorded count at 0.8, scaled for 0.4 int8
    assert result["measured"]["engine_blocks"] == blocks
    # The stand-in sits on an 80 GiB "A100" (81,920 MiB, not the H100's 81,559), so the prediction moves a bit.
    assert abs(result["error_percent"]["total"]) < 5
    assert abs(result["error_percent"]["server"]) < 5
    assert result["measured"]["engine_cache_budget_bytes"] is None  # the pytorch engine logs blocks, not a budget
    assert result["measured"]["others_bytes"] == 480 * MIB
    from webui.i18n.catalog import Catalog
    from webui.ui.memory_tab import MemoryHandlers

    table = MemoryHandlers(services.memory, services.servers, services.roots, Catalog.load()).compare_server(
        server.id, None)
    assert f"| {(36_142 - 480):,} MiB |" in table and str(blocks) in table  # measured server memory, engine blocks
    # A TurboMind server says its budget instead (format string from LMDeploy's _turbomind library).
    pool_mib = result["predicted"]["kv_pool_bytes"] / MIB
    with open(services.store.get_server(server.id).log_path, "a", encoding="utf-8") as log:
        log.write(f"[TM][INFO] Object cache budget: {pool_mib * 1.02:.2f} MB from free 80000.00 MB and ratio 0.400\n")
    again = services.memory.compare_server(server.id)
    assert again["error_percent"]["cache_budget"] == pytest.approx(-1.96, abs=0.05)


def _handle(services: Services, server_id: str):
    from webui.services.processes import ProcessHandle

    record = services.store.get_server(server_id)
    return ProcessHandle(record.pid, record.create_time, record.log_path)
