"""GPU placement in the Memory tab and the Serve form: predicted against measured GPU by GPU (tp 2 over two GPUs,
a server on GPU 1), the planner's list of detected GPUs, and the fit check under the command preview.

The stand-in NVML (tests/conftest.py) here answers as the two H200s of the GPU machine, with what they showed
(../shared/gpu/README.md, 2026-11-30): 143,771 MiB each, 615 MiB held when idle; the tiny model at fraction 0.4
with tp 2 held 63,472 MiB on each GPU, and at 0.8 on one GPU the device read 120,256 MiB."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import MODEL_NAME, StandInNvml, fake_argv_factory
from webui.i18n.catalog import Catalog
from webui.services.container import Services
from webui.services.fit import check_fit, fit_gpus
from webui.services.gpu import GpuDevice, GpuProbe
from webui.services.memory import server_gpus
from webui.services.models import ModelRoots
from webui.services.planner import MIB
from webui.services.processes import ProcessHandle
from webui.services.serve_spec import ServerSpec, suggest_port
from webui.settings import Settings
from webui.ui.memory_tab import MemoryHandlers
from webui.ui.serve_tab import SERVE_FORM, ServeHandlers

H200_MIB = 143_771
IDLE_MIB = 615
EN = SimpleNamespace(headers={"accept-language": "en-US,en;q=0.9"})
ZH = SimpleNamespace(headers={"accept-language": "zh-CN,zh;q=0.9"})


class TwoH200(StandInNvml):
    """The stand-in NVML as two H200s (same answers otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.used = {0: IDLE_MIB * MIB, 1: IDLE_MIB * MIB}

    def nvmlDeviceGetName(self, h: int) -> str:  # noqa: N802 - pynvml's names
        return "NVIDIA H200"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:  # noqa: N802
        self.calls += 1
        return SimpleNamespace(total=H200_MIB * MIB, used=self.used[h])


@pytest.fixture
def h200s(monkeypatch: pytest.MonkeyPatch) -> TwoH200:
    nvml = TwoH200()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


@pytest.fixture
def services(h200s: TwoH200, settings: Settings) -> Iterator[Services]:
    built = Services.build(settings, argv_factory=fake_argv_factory("--grandchild"))
    try:
        yield built
    finally:
        built.close()


def start_ready(services: Services, model_root: Path, **spec: object) -> tuple[str, int, int]:
    """A READY stand-in server; returns its id, its own pid and its worker's (the engine child)."""
    outcome = services.servers.start(ServerSpec(model_path=str(model_root / MODEL_NAME),
                                                port=suggest_port(31900), **spec))  # type: ignore[arg-type]
    assert outcome.server is not None, outcome.errors
    ready = services.servers.wait_for(outcome.server.id, {"READY", "FAILED"}, timeout_s=30)
    assert ready.state == "READY"
    record = services.store.get_server(ready.id)
    tree = services.supervisor.tree(ProcessHandle(record.pid, record.create_time, record.log_path))
    worker = next(p.pid for p in tree if p.pid != record.pid)
    return ready.id, record.pid, worker


def test_a_server_s_gpus_are_its_choice_else_where_it_holds_memory_else_the_first_tp() -> None:
    assert server_gpus(ServerSpec(model_path="m", gpus=(1,)), {0: 5, 1: 5}) == (1,)
    assert server_gpus(ServerSpec(model_path="m", gpus="1,0"), {}) == (1, 0)  # type: ignore[arg-type]  # scripts
    assert server_gpus(ServerSpec(model_path="m"), {1: 5}) == (1,)
    assert server_gpus(ServerSpec(model_path="m", tp=2), {}) == (0, 1)
    assert fit_gpus(ServerSpec(model_path="m", tp=2)) == (0, 1)
    assert fit_gpus(ServerSpec(model_path="m", gpus=(1,))) == (1,)


def test_tp_2_is_compared_gpu_by_gpu(services: Services, h200s: TwoH200, model_root: Path) -> None:
    server_id, pid, worker = start_ready(services, model_root, tp=2, gpus=(0, 1), cache_max_entry_count=0.4)
    held = 63_472 * MIB  # one engine process a GPU, both in the api_server's tree
    h200s.used = {0: IDLE_MIB * MIB + held, 1: IDLE_MIB * MIB + held}
    h200s.procs = {0: [SimpleNamespace(pid=worker, usedGpuMemory=held)],
                   1: [SimpleNamespace(pid=pid, usedGpuMemory=held)]}
    services.memory.sampler.tick()
    result = services.memory.compare_server(server_id)
    rows = result["per_gpu"]
    assert [(r["gpu"], r["name"]) for r in rows] == [(0, "NVIDIA H200"), (1, "NVIDIA H200")]
    for row in rows:
        assert row["server_tree_bytes"] == held and row["others_bytes"] == IDLE_MIB * MIB
        assert row["device_used_bytes"] == IDLE_MIB * MIB + held and row["total_bytes"] == H200_MIB * MIB
        # The planner predicts one GPU: 62,647 MiB of the server's own, 1.3% under what each GPU showed
        # (all of the tree's memory against one GPU's prediction read -50%).
        assert abs(row["error_percent"]["server"]) < 2 and abs(row["error_percent"]["total"]) < 2
        assert row["predicted_server_bytes"] == row["predicted_total_bytes"] - row["others_bytes"]
    # The top-level keys stay, filled from the first GPU.
    assert result["gpu"] == "NVIDIA H200" and result["gpu_index"] == 0
    assert result["measured"]["server_tree_bytes"] == held and result["measured"]["device_used_bytes"] == rows[0][
        "device_used_bytes"]
    assert result["error_percent"]["server"] == rows[0]["error_percent"]["server"]
    assert result["predicted"]["total_bytes"] == rows[0]["predicted_total_bytes"]

    table = MemoryHandlers(services.memory, services.servers, services.roots, Catalog.load()).compare_server(
        server_id, EN)
    assert "| **GPU 0** · NVIDIA H200 |" in table and "| **GPU 1** · NVIDIA H200 |" in table
    assert table.count(f"| {63_472:,} MiB |") == 2 and table.count("Held by the server's processes") == 2
    assert table.count("KV blocks") == 1  # one engine, one block count


def test_a_server_on_gpu_1_is_compared_with_gpu_1(services: Services, h200s: TwoH200, model_root: Path) -> None:
    server_id, _, worker = start_ready(services, model_root, gpus=(1,), kv_policy="none", cache_max_entry_count=0.8)
    # The H200 at policy 0 and 0.8: the device read 120,256 MiB; GPU 0 is busy with another program.
    h200s.used = {0: 30_000 * MIB, 1: 120_256 * MIB}
    h200s.procs = {0: [SimpleNamespace(pid=1, usedGpuMemory=(30_000 - IDLE_MIB) * MIB)],
                   1: [SimpleNamespace(pid=worker, usedGpuMemory=(120_256 - IDLE_MIB) * MIB)]}
    services.memory.sampler.tick()
    result = services.memory.compare_server(server_id)
    assert [r["gpu"] for r in result["per_gpu"]] == [1] and result["gpu_index"] == 1
    assert result["measured"]["device_used_bytes"] == 120_256 * MIB
    assert result["measured"]["others_bytes"] == IDLE_MIB * MIB  # GPU 0's program is not this GPU's
    assert abs(result["error_percent"]["total"]) < 0.5 and abs(result["error_percent"]["server"]) < 0.5
    table = MemoryHandlers(services.memory, services.servers, services.roots, Catalog.load()).compare_server(
        server_id, EN)
    assert "**GPU" not in table and f"| {120_256:,} MiB |" in table  # one GPU: one plain group


def test_the_planner_lists_every_detected_gpu(services: Services) -> None:
    handlers = MemoryHandlers(services.memory, services.servers, services.roots, Catalog.load())
    services.memory.sampler.tick()
    choices = handlers.gpu_choices()
    assert choices[:2] == [(f"GPU 0: NVIDIA H200 ({H200_MIB:,} MiB)", f"detected:0:{H200_MIB}"),
                           (f"GPU 1: NVIDIA H200 ({H200_MIB:,} MiB)", f"detected:1:{H200_MIB}")]
    assert handlers.gpu_dropdown(None).value == f"detected:0:{H200_MIB}"
    assert handlers.gpu_dropdown(f"detected:1:{H200_MIB}").value == f"detected:1:{H200_MIB}"  # a pick is kept
    assert handlers.gpu_dropdown("detected:7:1").value == f"detected:0:{H200_MIB}"  # a GPU that went away
    spec, problem = handlers.plan_input("Qwen2.5 7B", "fp16", 128, f"detected:1:{H200_MIB}", 0.8, "none", 4096,
                                        128, 1, "en")
    assert problem == "" and spec is not None and spec.gpu_total_bytes == H200_MIB * MIB


def test_the_fit_check_reads_what_each_chosen_gpu_holds_now(services: Services, h200s: TwoH200,
                                                            model_root: Path) -> None:
    model = str(model_root / MODEL_NAME)
    probe = services.gpu
    both = check_fit(ServerSpec(model_path=model, tp=2, gpus=(0, 1), cache_max_entry_count=0.4), services.roots,
                     probe.devices())
    assert [(f.gpu, f.name, f.fits) for f in both] == [(0, "NVIDIA H200", True), (1, "NVIDIA H200", True)]
    assert all(abs(f.predicted_bytes / MIB - 63_262) < 1 for f in both)  # 615 idle + 62,647 of the server's own
    # Another program holds all but 500 MiB of GPU 1: the engine's context and weights no longer fit there.
    h200s.used[1] = (H200_MIB - 500) * MIB
    on_one = check_fit(ServerSpec(model_path=model, gpus=(1,)), services.roots, probe.devices())
    assert [(f.gpu, f.fits, f.used_bytes) for f in on_one] == [(1, False, (H200_MIB - 500) * MIB)]
    assert on_one[0].predicted_bytes > on_one[0].total_bytes
    # Nothing chosen: the first tp GPUs; a GPU that is not there and a model that does not read say nothing.
    assert [f.gpu for f in check_fit(ServerSpec(model_path=model), services.roots, probe.devices())] == [0]
    assert check_fit(ServerSpec(model_path=model, gpus=(5,)), services.roots, probe.devices()) == []
    assert check_fit(ServerSpec(model_path="/no/such/model"), services.roots, probe.devices()) == []

    handlers = ServeHandlers(services.servers, services.roots, Catalog.load(), gpu=probe)
    lines = handlers.preview_placement(SERVE_FORM.parse({"model_path": model, "tp": 2, "gpus": "0,1",
                                                         "cache_max_entry_count": 0.4}), EN)
    assert lines.split("\n\n") == ["GPU 0 (NVIDIA H200): 63,262 of 143,771 MiB predicted ✓",
                                   "GPU 1 (NVIDIA H200): ✗ does not fit: 500 MiB free (143,271 of 143,771 MiB held "
                                   "now), and the engine needs 801 MiB before any KV cache (its CUDA context and this "
                                   "GPU's 16 MiB of weights). Free memory there, or choose another GPU or a larger tp."]
    zh = handlers.preview_placement(SERVE_FORM.parse({"model_path": model, "gpus": "1"}), ZH)
    assert zh.startswith("GPU 1（NVIDIA H200）：✗ 放不下")
    # A refused GPU list says nothing here: the form's status names the field.
    assert handlers.preview_placement(SERVE_FORM.parse({"model_path": model, "gpus": "0,0"}), EN) == ""
    assert handlers.preview_placement(SERVE_FORM.parse({"model_path": model, "gpus": "1", "tp": 2}), EN) == ""


def test_without_nvml_the_fit_check_says_nothing(model_root: Path) -> None:
    probe = GpuProbe()  # this machine's real NVML, no stand-in
    try:
        if probe.available:
            pytest.skip("this machine has an NVIDIA driver: the no-GPU case cannot be seen here")
        spec, roots = ServerSpec(model_path=str(model_root / MODEL_NAME)), ModelRoots((model_root,))
        assert probe.devices() == [] and check_fit(spec, roots, probe.devices()) == []
        # the same spec on a GPU gets a verdict: the silence above is the missing GPU's, not the model's
        gpu = GpuDevice(0, "NVIDIA H200", 143_771 * MIB, 615 * MIB)
        assert [(f.gpu, f.fits) for f in check_fit(spec, roots, [gpu])] == [(0, True)]
    finally:
        probe.close()
