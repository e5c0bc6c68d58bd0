"""Which GPU an AWQ job runs on: the check, the command, the worker's real environment, and one job per GPU.

Real child processes (the stand-in worker of tests/stand_in_awq_worker.py, which speaks the worker's protocol),
real SQLite, real environments read back from /proc. The one stand-in is the GPU count: this machine has no GPU,
so the JobManager is given a probe that reports two.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from tests.conftest import children
from webui.i18n.catalog import Catalog
from webui.services.models import ModelRoots
from webui.services.placement import UsableGpus, usable_gpus
from webui.services.processes import ProcessSupervisor
from webui.services.quantize import JobManager, JobSnapshot
from webui.services.quantize_spec import AwqSpec, CheckedAwq, check_awq, cli_preview, job_env, resource_key
from webui.services.store import JobRecord, Store
from webui.settings import Settings
from webui.ui.quantize_tab import QUANTIZE_FORM, QuantizeHandlers, job_summary

STAND_IN_WORKER = Path(__file__).resolve().parent / "stand_in_awq_worker.py"
HOLD_S = "1.5"  # how long the stand-in worker works before it publishes its output
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "LOST"}
HUB_TOKEN = {"HF_TOKEN": "hf_placement_test"}
EN: Any = SimpleNamespace(headers={"accept-language": "en-US,en;q=0.9"})
ZH: Any = SimpleNamespace(headers={"accept-language": "zh-CN,zh;q=0.9"})


class TwoGpus:
    """The one fake: a GpuProbe that reports two GPUs (no GPU memory is ever held by the stand-in worker), under
    the console's own CUDA_VISIBLE_DEVICES `limit` if one is given."""

    available = True
    reason = ""

    def __init__(self, limit: str | None = None) -> None:
        self.limit = limit

    def device_count(self) -> int:
        return 2

    def usable(self) -> UsableGpus:
        return usable_gpus(self.limit, "", ("GPU-0000", "GPU-1111"), ("H200", "H200"))

    def bf16_supported(self) -> bool:
        return True

    def memory_of(self, pids: set[int]) -> int:
        return 0


def stand_in(job_file: Path) -> list[str]:
    return [sys.executable, str(STAND_IN_WORKER), str(job_file), HOLD_S, "0"]


@pytest.fixture
def model(model_root: Path) -> str:
    return str(model_root / "tiny llama; echo pwned")


@pytest.fixture
def gpus() -> TwoGpus:
    return TwoGpus()


@pytest.fixture
def jobs(settings: Settings, model_root: Path, gpus: TwoGpus) -> Iterator[JobManager]:
    """A JobManager as the console builds it, on a machine with two GPUs; its jobs are ended afterwards."""
    for folder in (settings.state_dir, settings.output_dir, settings.jobs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_path)
    manager = JobManager(store, ProcessSupervisor(), ModelRoots((model_root, settings.output_dir)), gpus,
                         settings.output_dir, settings.jobs_dir, python=sys.executable, job_argv=stand_in,
                         child_env=lambda: dict(HUB_TOKEN))
    try:
        yield manager
    finally:
        for state in ("QUEUED", "RUNNING"):  # queued first, so none starts while the others stop
            for job in manager.snapshots():
                if job.state == state:
                    manager.cancel(job.id)
        for job in manager.snapshots():
            manager.wait_for(job.id, FINAL, 20)
        manager.shutdown()
        store.close()


def submitted(jobs: JobManager, spec: AwqSpec) -> JobSnapshot:
    outcome = jobs.submit(spec)
    assert outcome.errors == () and outcome.job is not None, outcome.errors
    return outcome.job


def environ_of(jobs: JobManager, job_id: str) -> dict[str, str]:
    record = jobs._store.get_job(job_id)
    assert record is not None and record.pid is not None
    return psutil.Process(record.pid).environ()


# The check and the command ------------------------------------------------------------------------------

@pytest.mark.parametrize(("device", "gpu", "env"), [
    ("cpu", 1, ""),  # the GPU is ignored on the cpu
    ("cpu", 5, ""),  # even one this machine lacks
    ("cuda", 0, "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0 "),
    ("cuda", 1, "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1 "),
])
def test_the_command_names_the_gpu_in_its_environment(model: str, model_root: Path, tmp_path: Path, device: str,
                                                       gpu: int, env: str) -> None:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    spec = AwqSpec(model_path=model, calib_source="none", device=device, gpu=gpu)
    checked = check_awq(spec, ModelRoots([model_root, outputs]), outputs, usable_gpus=2, hub_online=False)
    assert isinstance(checked, CheckedAwq), checked
    command = cli_preview(checked)
    assert command is not None and command.startswith(env + "lmdeploy lite auto_awq ")
    words = shlex.split(command.removeprefix(env))
    assert words[words.index("--device") + 1] == device  # the worker sees one GPU and calls it "cuda"
    assert checked.spec.resource == (f"cuda:{gpu}" if device == "cuda" else "cpu")
    assert checked.spec.gpu == (gpu if device == "cuda" else 0)
    assert job_env(checked.spec) == ({"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(gpu)}
                                     if device == "cuda" else {})


def test_a_row_from_before_gpus_were_chosen_counts_as_gpu_0() -> None:
    assert resource_key("cuda") == "cuda:0" == AwqSpec(model_path="m").resource
    assert resource_key("cuda:1") == "cuda:1" and resource_key("cpu") == "cpu"
    old = {k: v for k, v in AwqSpec(model_path="m").to_json_dict().items() if k != "gpu"}
    assert AwqSpec.from_json_dict(old).gpu == 0


@pytest.mark.parametrize("gpu", [2, 5, -1, 10**30])
def test_a_gpu_that_is_not_there_is_refused_and_nothing_starts(jobs: JobManager, model: str, settings: Settings,
                                                                gpu: int) -> None:
    before = children()
    outcome = jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=gpu))
    assert outcome.job is None
    assert [(e.field, e.key) for e in outcome.errors] == [("gpu", "errors.gpus_missing")]
    assert outcome.errors[0].params["present"] == "0, 1"
    assert len(outcome.errors[0].params["missing"]) <= 25  # an absurd number is not echoed whole
    assert children() <= before  # nothing new (an earlier test's exited child may be reaped meanwhile)
    assert jobs.snapshots() == [] and list(settings.jobs_dir.iterdir()) == []
    assert not any(settings.output_dir.iterdir())


def test_the_page_and_the_api_name_the_gpu_field(jobs: JobManager, model: str, settings: Settings) -> None:
    catalog = Catalog.load()
    handlers = QuantizeHandlers(jobs, jobs._roots, settings, catalog)
    assert QUANTIZE_FORM.parse({"model_path": model, "gpu": "1"}).values.to_spec().gpu == 1
    assert QUANTIZE_FORM.parse({"model_path": model}).values.to_spec().gpu == 0
    assert handlers.gpu_visibility("cuda").visible is True and handlers.gpu_visibility("cpu").visible is False
    for request, locale in ((EN, "en"), (ZH, "zh")):
        label = catalog.text("quantize.gpu.label", locale)
        message, job_id = handlers.submit_quantize(QUANTIZE_FORM.parse(
            {"model_path": model, "calib_source": "none", "device": "cuda", "gpu": "5"}), request)
        assert job_id == "" and f"**{label}**" in message
        assert catalog.text("errors.gpus_missing", locale, missing="5", present="0, 1") in message
        message, job_id = handlers.submit_quantize(QUANTIZE_FORM.parse(
            {"model_path": model, "calib_source": "none", "device": "cuda", "gpu": "one"}), request)
        assert job_id == "" and f"**{label}**" in message
        assert catalog.text("errors.not_whole_number", locale, value="one", example="0") in message
        status, command = handlers.preflight(QUANTIZE_FORM.parse(
            {"model_path": model, "calib_source": "none", "device": "cuda", "gpu": 1}), request)
        assert "GPU 1 ~" in status and command.startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1 ")
    assert jobs.snapshots() == []


# The worker's environment ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("device", "gpu", "visible"), [("cpu", 1, None), ("cuda", 0, "0"), ("cuda", 1, "1")])
def test_the_worker_sees_only_its_gpu(jobs: JobManager, model: str, monkeypatch: pytest.MonkeyPatch, device: str,
                                      gpu: int, visible: str | None) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    job = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device=device, gpu=gpu))
    assert job.state == "RUNNING"
    env = environ_of(jobs, job.id)
    assert env.get("CUDA_VISIBLE_DEVICES") == visible
    assert env.get("CUDA_DEVICE_ORDER") == ("PCI_BUS_ID" if visible else None)
    assert env["HF_TOKEN"] == HUB_TOKEN["HF_TOKEN"] and env["PYTHONUNBUFFERED"] == "1"  # the hub token stays
    assert job.gpu == (gpu if device == "cuda" else None) and job.device == device
    assert job.summary.endswith(f" · cuda:{gpu}" if device == "cuda" else " · cpu")
    assert job.command.startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=" if visible else "lmdeploy ")
    assert job.as_dict()["gpu"] == job.gpu  # the scripting API's job_progress carries it
    assert job_summary(Catalog.load(), job.spec, "en").endswith(f" · cuda:{gpu}" if visible else " · cpu")
    done = jobs.wait_for(job.id, FINAL, 30)
    assert done.state == "SUCCEEDED", jobs.log(job.id)


# One job per GPU ----------------------------------------------------------------------------------------

def test_jobs_on_two_gpus_run_at_once(jobs: JobManager, model: str) -> None:
    first = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=0))
    second = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=1))
    assert (first.state, second.state) == ("RUNNING", "RUNNING")
    assert first.queue_position is None and second.queue_position is None
    assert psutil.Process(jobs._store.get_job(first.id).pid).is_running()
    assert psutil.Process(jobs._store.get_job(second.id).pid).is_running()
    assert environ_of(jobs, first.id)["CUDA_VISIBLE_DEVICES"] == "0"
    assert environ_of(jobs, second.id)["CUDA_VISIBLE_DEVICES"] == "1"
    a, b = (jobs.wait_for(j.id, FINAL, 30) for j in (first, second))
    assert (a.state, b.state) == ("SUCCEEDED", "SUCCEEDED")
    assert a.started_at < b.ended_at and b.started_at < a.ended_at  # they overlapped


def test_jobs_on_one_gpu_wait_in_turn(jobs: JobManager, model: str) -> None:
    first = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=0))
    second = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=0))
    beside = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cpu"))
    assert first.state == "RUNNING" and beside.state == "RUNNING"  # the CPU is a device of its own
    assert (second.state, second.queue_position, second.gpu) == ("QUEUED", 1, 0)
    assert jobs._store.get_job(second.id).pid is None
    running = jobs.wait_for(second.id, {"RUNNING"}, 30)
    assert environ_of(jobs, second.id)["CUDA_VISIBLE_DEVICES"] == "0"
    done = jobs.get(first.id)
    assert done.state == "SUCCEEDED" and done.ended_at <= running.started_at
    assert jobs.wait_for(second.id, FINAL, 30).state == "SUCCEEDED"


def legacy_row(jobs: JobManager, model: str, settings: Settings, job_id: str) -> None:
    """A queued job as the previous version wrote it: resource "cuda", and a spec without `gpu`."""
    folder = settings.jobs_dir / job_id
    folder.mkdir(parents=True)
    spec = {k: v for k, v in asdict(AwqSpec(model_path=model, calib_source="none", device="cuda")).items()
            if k != "gpu"}
    output = settings.output_dir / f"legacy-{job_id}"
    spec["output_dir"], spec["calib_files"] = str(output), []
    job_file = folder / "job.json"
    job_file.write_text(json.dumps({
        "spec": spec, "model_dir": model, "output_dir": str(output), "partial_dir": f"{output}.partial",
        "progress_path": str(folder / "progress.jsonl"), "calib_files": [], "size_before_bytes": 0}))
    jobs._store.insert_job(JobRecord(
        id=job_id, kind="awq", spec_json=json.dumps(spec), state="QUEUED", resource="cuda", created_at=time.time(),
        output_dir=str(output), job_file=str(job_file), log_path=str(folder / "job.log"),
        progress_path=str(folder / "progress.jsonl"), layers=4, command=""))


def test_a_legacy_cuda_row_holds_gpu_0(jobs: JobManager, model: str, settings: Settings) -> None:
    legacy_row(jobs, model, settings, "legacy01")
    new = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=0))
    # The older legacy row started first, on GPU 0; the new GPU-0 job waits behind it, not beside it.
    legacy = jobs.get("legacy01")
    assert legacy.state == "RUNNING" and legacy.gpu == 0 and legacy.summary.endswith(" · cuda:0")
    assert environ_of(jobs, "legacy01")["CUDA_VISIBLE_DEVICES"] == "0"
    assert (new.state, new.queue_position) == ("QUEUED", 1)
    other = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=1))
    assert other.state == "RUNNING"  # GPU 1 is free
    legacy_row(jobs, model, settings, "legacy02")  # queued after the new job, in the same GPU-0 line
    assert jobs.get("legacy02").queue_position == 2 and jobs.get(new.id).queue_position == 1
    ends = {j: jobs.wait_for(j, FINAL, 40) for j in ("legacy01", new.id, "legacy02", other.id)}
    assert {s.state for s in ends.values()} == {"SUCCEEDED"}, {j: jobs.log(j) for j in ends}
    assert ends["legacy01"].ended_at <= ends[new.id].started_at
    assert ends[new.id].ended_at <= ends["legacy02"].started_at


def test_a_job_stays_inside_the_consoles_own_limit(jobs: JobManager, gpus: TwoGpus, model: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    gpus.limit = "GPU-1111"  # the console was started with CUDA_VISIBLE_DEVICES=GPU-1111: NVML's GPU 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus.limit)
    outcome = jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=0))
    assert [(e.field, e.key) for e in outcome.errors] == [("gpu", "errors.gpus_outside_limit")]
    assert jobs.snapshots() == []  # nothing stored, nothing spawned
    job = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=1,
                                  output_dir="inside"))
    jobs.wait_for(job.id, {"RUNNING"}, 20)
    assert environ_of(jobs, job.id)["CUDA_VISIBLE_DEVICES"] == "GPU-1111"  # as the console names it

    gpus.limit = "MIG-5d1e-0000"  # a MIG slice: no number can be mapped, the job keeps the console's devices
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus.limit)
    outcome = jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=1, output_dir="mig1"))
    assert [(e.field, e.key) for e in outcome.errors] == [("gpu", "errors.gpus_limit_mig")]
    checked = jobs.check(AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=0, output_dir="mig"))
    assert isinstance(checked, CheckedAwq) and (jobs.preview(checked) or "").startswith("lmdeploy lite auto_awq ")
    job = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=0, output_dir="mig"))
    jobs.wait_for(job.id, {"RUNNING"}, 20)
    assert environ_of(jobs, job.id)["CUDA_VISIBLE_DEVICES"] == "MIG-5d1e-0000"


def test_a_queued_job_whose_gpu_left_the_limit_fails_instead_of_escaping_it(jobs: JobManager, gpus: TwoGpus,
                                                                            model: str) -> None:
    first = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=1, output_dir="a"))
    jobs.wait_for(first.id, {"RUNNING"}, 20)
    queued = submitted(jobs, AwqSpec(model_path=model, calib_source="none", device="cuda", gpu=1, output_dir="b"))
    assert (snap := jobs.get(queued.id)) is not None and snap.state == "QUEUED"
    gpus.limit = "GPU-0000"  # the console is now limited to GPU 0 (a restart under another CUDA_VISIBLE_DEVICES)
    jobs.cancel(first.id)
    ended = jobs.wait_for(queued.id, FINAL, 20)
    assert ended.state == "FAILED" and "CUDA_VISIBLE_DEVICES=GPU-0000" in ended.error, ended
