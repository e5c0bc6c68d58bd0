"""Real `lmdeploy.lite` AWQ on the CPU through the job service: progress, results, cancel, queue, restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import children
from webui.services.container import Services
from webui.services.quantize_spec import AwqSpec
from webui.settings import Settings

pytestmark = pytest.mark.engine
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "LOST"}


def gone(pid: int | None) -> bool:
    return pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture
def services(settings: Settings):
    built = Services.build(settings)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def model(model_root: Path) -> str:
    return str(model_root / "tiny llama; echo pwned")


def watch(services: Services, job_id: str, timeout: float = 240) -> tuple[object, list[tuple[str, int]]]:
    """Poll like the UI does; return the final snapshot and every (phase, layer) seen on the way."""
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = services.jobs.get(job_id)
        if not seen or seen[-1] != (job.phase, job.layer):
            seen.append((job.phase, job.layer))
        if job.state in FINAL:
            return job, seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {services.jobs.get(job_id)}")


def test_data_free_job_reaches_100_percent_with_a_result(services: Services, model: str) -> None:
    outcome = services.jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cpu"))
    assert outcome.errors == ()
    job, seen = watch(services, outcome.job.id)
    assert job.state == "SUCCEEDED", services.jobs.log(job.id)
    assert job.fraction == 1.0 and job.layers == 4
    assert ("quantize", 4) in seen  # every layer reported while it ran
    output = Path(job.output_dir)
    assert json.loads((output / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    assert not Path(job.output_dir + ".partial").exists()
    r = job.result
    assert r["size_before_bytes"] > r["size_after_bytes"] > 0 and r["ratio"] > 2
    assert r["quantization_config"]["bits"] == 4 and r["peak_ram_bytes"] > 100e6
    assert "--calib-samples 0" in job.command
    assert [e.kind for e in services.store.events(job.id)] == ["queued", "started", "succeeded"]
    # The Memory chart marks where the job entered each phase, at the times the worker wrote them.
    marks = [m for m in services.memory.events("1h", now=time.time()) if m["source"] == job.id]
    phases = [m["kind"] for m in marks if m["kind"].startswith("phase ")]
    assert phases[0] == "phase load" and "phase quantize" in phases and phases[-1] == "phase done"
    assert all(job.started_at - 1 <= m["t"] <= job.ended_at + 1 for m in marks)
    # The output is servable: it shows up among the models the Serve tab offers.
    assert output in services.roots.discover()


def test_local_text_calibration_reports_every_layer(services: Services, model: str, model_root: Path) -> None:
    text = model_root / "calibration notes.txt"
    from pydoc_data.topics import topics

    text.write_text("\n\n".join(list(topics.values())[:80]))
    jsonl = model_root / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": v}) for v in list(topics.values())[80:160]))
    spec = AwqSpec(model_path=model, calib_source="files", calib_files=(str(text), str(jsonl)), calib_samples=8,
                   calib_seqlen=128, device="cpu", w_group_size=64)
    outcome = services.jobs.submit(spec)
    assert outcome.errors == ()
    job, seen = watch(services, outcome.job.id)
    assert job.state == "SUCCEEDED", services.jobs.log(job.id)
    events = [json.loads(line) for line in (Path(services.settings.jobs_dir) / job.id / "progress.jsonl")
              .read_text().splitlines()]
    calibrated = {e["layer"] for e in events if e.get("phase") == "calibrate" and "layer" in e}
    smoothed = {e["layer"] for e in events if e.get("phase") == "smooth" and "layer" in e}
    assert calibrated == smoothed == {0, 1, 2, 3}
    assert job.result["quantization_config"]["group_size"] == 64
    assert job.command == ""  # local text has no CLI twin
    assert any(phase == "calibrate" for phase, _ in seen)


def test_cancel_mid_run_leaves_nothing_behind(services: Services, model: str) -> None:
    spec = AwqSpec(model_path=model, calib_source="sample", calib_samples=64, calib_seqlen=512, device="cpu",
                   search_scale=True)
    job = services.jobs.submit(spec).job
    deadline = time.monotonic() + 120
    while services.jobs.get(job.id).phase not in ("calibrate", "smooth") and time.monotonic() < deadline:
        time.sleep(0.05)
    running = services.jobs.get(job.id)
    assert running.state == "RUNNING" and running.phase == "calibrate"
    record = services.store.get_job(job.id)
    tree = [record.pid, *[c.pid for c in psutil.Process(record.pid).children(recursive=True)]]
    asked = time.monotonic()
    assert services.jobs.cancel(job.id).state == "CANCELLING"
    assert time.monotonic() - asked < 1.0  # the call signals and returns
    cancelled = services.jobs.wait_for(job.id, FINAL, 15)
    assert cancelled.state == "CANCELLED"
    assert all(gone(pid) for pid in tree)
    assert not Path(job.output_dir).exists() or not any(Path(job.output_dir).iterdir())
    assert not Path(job.output_dir + ".partial").exists()
    time.sleep(0.5)  # the monitor must not turn a cancelled job into FAILED
    assert services.jobs.get(job.id).state == "CANCELLED"


def test_one_cpu_job_at_a_time_and_the_queue_can_be_cancelled(services: Services, model: str) -> None:
    first = services.jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cpu")).job
    second = services.jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cpu")).job
    third = services.jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cpu")).job
    assert first.state == "RUNNING"
    assert (second.state, second.queue_position) == ("QUEUED", 1)
    assert (third.state, third.queue_position) == ("QUEUED", 2)
    assert len({first.output_dir, second.output_dir, third.output_dir}) == 3
    assert services.jobs.cancel(second.id).state == "CANCELLED"
    assert services.jobs.get(third.id).queue_position == 1
    done, _ = watch(services, third.id)
    assert done.state == "SUCCEEDED"
    assert services.jobs.get(first.id).state == "SUCCEEDED"
    assert services.jobs.get(first.id).ended_at <= services.jobs.get(third.id).started_at


def test_bad_input_spawns_nothing_and_keeps_history(services: Services, model: str) -> None:
    ok = services.jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cpu")).job
    watch(services, ok.id)
    before = children()
    outcome = services.jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cpu", w_group_size=100,
                                           output_dir=ok.output_dir))
    assert outcome.job is None
    assert {e.field for e in outcome.errors} == {"w_group_size", "output_dir"}
    assert children() <= before  # nothing new (an earlier test's exited child may be reaped meanwhile)
    assert [j.id for j in services.jobs.snapshots()] == [ok.id]


def test_jobs_survive_a_console_restart(settings: Settings, model: str) -> None:
    first = Services.build(settings)
    finishing = first.jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cpu")).job
    first.close()  # the console goes away while the job runs
    second = Services.build(settings)
    try:
        job, _ = watch(second, finishing.id)
        assert job.state == "SUCCEEDED" and job.fraction == 1.0
        assert "reattached" in [e.kind for e in second.store.events(job.id)]
        doomed = second.jobs.submit(AwqSpec(model_path=model, calib_source="sample", calib_samples=64,
                                            calib_seqlen=512, device="cpu", search_scale=True)).job
        deadline = time.monotonic() + 120
        while second.jobs.get(doomed.id).phase != "calibrate" and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = second.store.get_job(doomed.id).pid
    finally:
        second.close()
    proc = psutil.Process(pid)
    for child in proc.children(recursive=True):
        child.kill()
    proc.kill()  # it dies while no console watches
    proc.wait(10)
    third = Services.build(settings)
    try:
        lost = third.jobs.get(doomed.id)
        assert lost.state == "LOST"
        assert not Path(lost.output_dir + ".partial").exists()
        assert third.jobs.log(doomed.id)  # its log stays readable
    finally:
        third.close()
