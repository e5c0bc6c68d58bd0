"""The lifecycle core with real child processes: failures never wedge the console, calls never block.

The state rules themselves are tables in test_lifecycle_decide.py; these tests prove the mechanics around
them: a spawn that cannot happen, a broken row beside healthy ones, stops and cancels that return at once,
a cancel racing the end of a job, secrets kept out of the database, memory released as an event.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from tests.conftest import TESTS, children, fake_argv_factory
from webui.services.container import Services
from webui.services.quantize_spec import AwqSpec
from webui.services.serve_spec import CheckedSpec, ServerSpec, suggest_port
from webui.services.store import JobRecord, ServerRecord
from webui.settings import Settings

TERMINAL = {"READY", "FAILED", "STOPPED", "LOST"}
JOB_FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "LOST"}
STAND_IN_WORKER = TESTS / "stand_in_awq_worker.py"


def model_of(model_root: Path) -> str:
    return str(model_root / "tiny llama; echo pwned")


def spec_for(model_root: Path, **changes: object) -> ServerSpec:
    base = ServerSpec(model_path=model_of(model_root), backend="pytorch", port=suggest_port(34000))
    return replace(base, **changes)


def broken_or_fake(checked: CheckedSpec) -> list[str]:
    """A server named "broken" gets an interpreter that does not exist; the others the stand-in server."""
    if checked.spec.model_name == "broken":
        return ["/no/such/python", "-m", "lmdeploy", "serve", "api_server", str(checked.model_dir)]
    return fake_argv_factory()(checked)


def no_zombie_children() -> bool:
    return all(p.status() != psutil.STATUS_ZOMBIE for p in psutil.Process().children(recursive=True))


def test_a_server_that_cannot_spawn_is_failed_and_the_others_carry_on(settings: Settings, model_root: Path) -> None:
    services = Services.build(settings, argv_factory=broken_or_fake)
    try:
        broken = services.servers.start(spec_for(model_root, model_name="broken")).server
        assert broken.state == "FAILED" and broken.pid is None
        assert broken.hint == "hints.spawn_failed" and "/no/such/python" in broken.hint_line
        assert broken.detail == "serve.detail.spawn_failed" and broken.detail_params["errno"] == "ENOENT"
        assert "could not start /no/such/python" in "\n".join(services.servers.log(broken.id))
        healthy = services.servers.start(spec_for(model_root, port=suggest_port(broken.port + 1))).server
        end = services.servers.wait_for(healthy.id, TERMINAL, 30)
        assert end.state == "READY", (end, services.servers.log(healthy.id)[-8:])
        # Its port is free again, Stop says what happened and Remove clears the row.
        assert broken.port not in services.servers._claimed_ports()
        assert services.servers.stop(broken.id).state == "FAILED"
        services.servers.forget(broken.id)
        assert services.servers.get(broken.id) is None
        errors = [e for e in services.store.events() if e.kind.endswith("_error")]
        assert errors == [], errors
    finally:
        services.close()


def test_a_job_that_cannot_spawn_is_failed_and_the_queue_moves_on(settings: Settings, model_root: Path) -> None:
    def job_argv(job_file: Path) -> list[str]:
        job = json.loads(job_file.read_text())
        python = "/no/such/python" if "broken" in job["output_dir"] else sys.executable
        return [python, str(STAND_IN_WORKER), str(job_file), "0.2", "0"]

    services = Services.build(settings, job_argv=job_argv)
    try:
        model = model_of(model_root)
        first = services.jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cpu",
                                             output_dir=str(settings.output_dir / "broken"))).job
        second = services.jobs.submit(AwqSpec(model_path=model, calib_source="none", device="cpu")).job
        assert first.state == "FAILED" and "could not start /no/such/python" in first.error
        assert "ENOENT" in first.error
        assert second.state == "RUNNING"  # the next job on that device started in the same call
        done = services.jobs.wait_for(second.id, JOB_FINAL, 30)
        assert done.state == "SUCCEEDED" and done.exit_code == 0
        assert not Path(first.output_dir).exists() and not Path(first.output_dir + ".partial").exists()
    finally:
        services.close()


def test_nothing_new_starts_once_the_console_is_shutting_down(settings: Settings, model_root: Path) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        services.servers.shutdown()
        before = children()
        outcome = services.servers.start(spec_for(model_root))
        assert outcome.server is None and [e.key for e in outcome.errors] == ["errors.console_closing"]
        assert children() <= before and services.servers.snapshots() == []  # nothing new
    finally:
        services.close()


def test_a_broken_row_is_reported_once_and_never_stops_the_others(settings: Settings, model_root: Path) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        # Rows an older console could leave behind: STARTING without a pid and with a spec that is not JSON
        # (it must end FAILED and be removable), and a state this version does not know (it must not stop the
        # monitor, and it is reported once, not once a tick).
        services.store.insert_server(ServerRecord(id="nopid001", owned=True, spec_json="{not json",
                                                  state="STARTING", base_url="http://127.0.0.1:9",
                                                  created_at=time.time()))
        services.store.insert_server(ServerRecord(id="future01", owned=True, spec_json="{}", state="HIBERNATING",
                                                  base_url="http://127.0.0.1:9", created_at=time.time()))
        healthy = services.servers.start(spec_for(model_root)).server
        assert services.servers.wait_for(healthy.id, TERMINAL, 30).state == "READY"
        assert services.servers.wait_for("nopid001", TERMINAL, 5).state == "FAILED"
        services.servers.forget("nopid001")
        time.sleep(1.5)  # 15 monitor ticks
        errors = [e for e in services.store.events("future01") if e.kind == "server_monitor_error"]
        assert len(errors) == 1, errors
        assert [s.id for s in services.servers.snapshots()] == [healthy.id]  # the unreadable row is left out
    finally:
        services.close()


def test_a_job_row_this_version_cannot_read_never_holds_up_the_queue(settings: Settings, model_root: Path) -> None:
    def job_argv(job_file: Path) -> list[str]:
        return [sys.executable, str(STAND_IN_WORKER), str(job_file), "0.1", "0"]

    services = Services.build(settings, job_argv=job_argv)
    try:
        services.store.insert_job(JobRecord(id="future01", kind="awq", spec_json="{}", state="PAUSED",
                                            resource="cpu", created_at=time.time() - 10))
        # A queued job an older version left half-written (no job file, an odd output path): it fails alone.
        services.store.insert_job(JobRecord(id="badpath1", kind="awq", spec_json="{}", state="QUEUED",
                                            resource="cpu", created_at=time.time() - 5, output_dir="/tmp/a\x00b"))
        job = services.jobs.submit(AwqSpec(model_path=model_of(model_root), calib_source="none", device="cpu")).job
        assert job.state == "RUNNING"
        assert services.jobs.wait_for(job.id, JOB_FINAL, 30).state == "SUCCEEDED"
        assert {j.id for j in services.jobs.snapshots()} == {job.id, "future01", "badpath1"}  # listed, no crash
        failed = services.jobs.get("badpath1")
        assert failed.state == "FAILED" and "could not start" in failed.error
    finally:
        services.close()


def test_stop_returns_at_once_and_shutdown_stops_servers_in_parallel(settings: Settings, model_root: Path) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory("--ignore-sigterm"))
    services.servers._stop_grace_s = 1.0
    try:
        first = services.servers.start(spec_for(model_root)).server
        second = services.servers.start(spec_for(model_root, port=suggest_port(first.port + 1))).server
        third = services.servers.start(spec_for(model_root, port=suggest_port(second.port + 1))).server
        for server in (first, second, third):
            assert services.servers.wait_for(server.id, TERMINAL, 30).state == "READY"
        asked = time.monotonic()
        assert services.servers.stop(first.id).state == "STOPPING"
        assert time.monotonic() - asked < 0.9  # it ignores SIGTERM for its 1 s grace: a waiting call would take longer
        stopped = services.servers.wait_for(first.id, {"STOPPED"}, 10)
        assert stopped.detail == "serve.detail.stopped_killed"
        began = time.monotonic()
        services.close()
        took = time.monotonic() - began
        assert took < 2.8, took  # 3 servers, each 1 s grace + SIGKILL: one after another would take 3 s
        for server in (second, third):
            assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        services.close()


def test_cancel_racing_the_end_of_a_job_never_leaves_both(settings: Settings, model_root: Path) -> None:
    """A job ends SUCCEEDED with its output, or CANCELLED with neither output nor `.partial`: never both.

    The stand-in worker runs a second thread (as torch does) and pauses 0.15 s inside its publish step, between
    the rename and "done"; cancels land before, inside and after that step.
    """
    rng = random.Random(7)

    def job_argv(job_file: Path) -> list[str]:
        return [sys.executable, str(STAND_IN_WORKER), str(job_file), "0.15", "0.15", "0.15"]

    services = Services.build(settings, job_argv=job_argv)
    outcomes: list[str] = []
    inside = 0
    try:
        for _ in range(24):
            job = services.jobs.submit(AwqSpec(model_path=model_of(model_root), calib_source="none",
                                               device="cpu")).job
            progress = Path(services.store.get_job(job.id).progress_path)
            deadline = time.monotonic() + 20
            while not (progress.exists() and "load" in progress.read_text()):
                assert time.monotonic() < deadline, "the worker never started"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.45))  # before, inside or after the worker's publish step
            asked_at = time.time()
            services.jobs.cancel(job.id)
            end = services.jobs.wait_for(job.id, JOB_FINAL, 20)
            output, partial = Path(end.output_dir), Path(end.output_dir + ".partial")
            assert not partial.exists(), end
            if end.state == "SUCCEEDED":
                assert (output / "config.json").is_file() and end.result["size_after_bytes"] > 0
                done_at = max(e["at"] for e in map(json.loads, progress.read_text().splitlines())
                              if e.get("phase") == "done")
                inside += done_at > asked_at  # the cancel came while it published: it waited for "done"
            else:
                assert end.state == "CANCELLED", end
                assert not output.exists() or not any(output.iterdir())
            assert end.exit_code is not None  # reaped, its status kept
            outcomes.append(end.state)
        assert {"SUCCEEDED", "CANCELLED"} <= set(outcomes), outcomes
        assert inside >= 1, outcomes  # at least one cancel landed inside the publish step
        assert no_zombie_children()
    finally:
        services.close()


def test_api_keys_never_reach_the_database(settings: Settings, model_root: Path) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        server = services.servers.start(spec_for(model_root, api_keys=("sk-owned-secret",))).server
        attached = services.servers.attach("http://127.0.0.1:9", api_key="sk-attached-secret")
        assert services.servers.wait_for(server.id, TERMINAL, 30).state == "READY"
        assert services.servers.api_key(server.id) == "sk-owned-secret"
        assert services.servers.api_key(attached.id) == "sk-attached-secret"
        assert server.has_api_key and attached.has_api_key
        services.servers.restart(server.id)  # the restarted server gets its key from the secrets file
        assert services.servers.wait_for(server.id, {"READY"}, 30).state == "READY"
        assert "sk-owned-secret" in " ".join(psutil.Process(services.servers.get(server.id).pid).cmdline())
    finally:
        services.close()
    for path in settings.state_dir.glob("console.sqlite3*"):
        data = path.read_bytes()
        assert b"sk-owned-secret" not in data and b"sk-attached-secret" not in data, path
    secrets = settings.secrets_path
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert "sk-owned-secret" in secrets.read_text()


def test_keys_stored_by_an_earlier_version_move_to_the_secrets_file(bare_settings: Settings) -> None:
    settings = bare_settings
    settings.state_dir.mkdir(parents=True)
    services = Services.build(settings)
    services.store.insert_server(ServerRecord(
        id="old00001", owned=True, state="STOPPED", base_url="http://127.0.0.1:23333", created_at=time.time(),
        spec_json=json.dumps({"model_path": "/m", "api_keys": ["sk-legacy"]})))
    services.close()
    again = Services.build(settings)
    try:
        assert again.servers.api_key("old00001") == "sk-legacy"
        assert "sk-legacy" not in again.store.get_server("old00001").spec_json
    finally:
        again.close()
    for path in settings.state_dir.glob("console.sqlite3*"):  # not in free pages or the write-ahead log either
        assert b"sk-legacy" not in path.read_bytes(), path


def test_memory_released_is_an_event_read_from_fresh_nvml(stand_in_nvml, settings: Settings,
                                                         model_root: Path) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory("--grandchild"))
    try:
        server = services.servers.start(spec_for(model_root)).server
        ready = services.servers.wait_for(server.id, TERMINAL, 30)
        assert ready.state == "READY"
        engine = [p.pid for p in psutil.Process(ready.pid).children(recursive=True)][0]
        from types import SimpleNamespace

        stand_in_nvml.procs[0] = [SimpleNamespace(pid=engine, usedGpuMemory=30 << 30)]
        stand_in_nvml.used[0] = (5 << 30) + (30 << 30)
        services.servers.stop(server.id)
        assert services.servers.wait_for(server.id, {"STOPPED"}, 10).state == "STOPPED"
        # The processes are gone but NVML still lists the engine and the memory: nothing is claimed yet.
        reads = stand_in_nvml.calls
        time.sleep(0.5)
        assert stand_in_nvml.calls > reads  # the monitor did read NVML meanwhile
        kinds = [e.kind for e in services.store.events(server.id)]
        assert "memory_released" not in kinds
        stand_in_nvml.procs[0] = []
        time.sleep(0.3)
        assert "memory_released" not in [e.kind for e in services.store.events(server.id)]  # GPU 0 still high
        stand_in_nvml.used[0] = (5 << 30) + (100 << 20)  # back within 256 MiB of the reading before start
        assert services.servers.wait_for_event(server.id, {"memory_released"}, 5) == "memory_released"
        seconds = float(services.store.events(server.id)[-1].detail.split()[0])
        assert seconds >= 0.8
    finally:
        services.close()


def test_memory_released_while_a_later_server_keeps_the_gpu_busy(stand_in_nvml, settings: Settings,
                                                                 model_root: Path) -> None:
    """A server started after this one, on the same GPU, keeps running: this one still counts as released once
    its own processes are gone and the GPU dropped by what they held."""
    from types import SimpleNamespace

    services = Services.build(settings, argv_factory=fake_argv_factory("--grandchild"))
    try:
        first = services.servers.start(spec_for(model_root)).server
        assert services.servers.wait_for(first.id, TERMINAL, 30).state == "READY"
        engine = [p.pid for p in psutil.Process(first.pid).children(recursive=True)][0]
        stand_in_nvml.procs[0] = [SimpleNamespace(pid=engine, usedGpuMemory=30 << 30)]
        stand_in_nvml.used[0] = (5 << 30) + (30 << 30)
        second = services.servers.start(spec_for(model_root, port=suggest_port(first.port + 1))).server
        assert services.servers.wait_for(second.id, TERMINAL, 30).state == "READY"
        later = [p.pid for p in psutil.Process(second.pid).children(recursive=True)][0]
        stand_in_nvml.procs[0].append(SimpleNamespace(pid=later, usedGpuMemory=20 << 30))
        stand_in_nvml.used[0] = (5 << 30) + (30 << 30) + (20 << 30)
        services.servers.stop(first.id)
        assert services.servers.wait_for(first.id, {"STOPPED"}, 10).state == "STOPPED"
        reads = stand_in_nvml.calls
        time.sleep(0.5)
        assert stand_in_nvml.calls > reads  # the monitor did read NVML meanwhile
        assert "memory_released" not in [e.kind for e in services.store.events(first.id)]  # still listed
        stand_in_nvml.procs[0] = [SimpleNamespace(pid=later, usedGpuMemory=20 << 30)]
        stand_in_nvml.used[0] = (5 << 30) + (20 << 30) + (100 << 20)
        assert services.servers.wait_for_event(first.id, {"memory_released", "memory_not_released"},
                                               5) == "memory_released"
    finally:
        services.close()


def test_bad_values_are_refused_before_anything_is_stored(settings: Settings, model_root: Path,
                                                          tmp_path: Path) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        before = children()
        for spec, field in (
            (spec_for(model_root, extra_args="--ssl " * 200_000), "extra_args"),
            (spec_for(model_root, model_path="/" + "a" * 100_000), "model_path"),
            (spec_for(model_root, model_name="n" * 5000), "model_name"),
        ):
            outcome = services.servers.start(spec)
            assert outcome.server is None and [e.field for e in outcome.errors] == [field]
            assert outcome.errors[0].key == "errors.too_long"
        foreign = model_root / "foobar"
        foreign.mkdir()
        (foreign / "config.json").write_text(json.dumps({"architectures": ["FooBarForCausalLM"]}))
        (foreign / "model.safetensors").write_bytes(b"\0" * 16)
        refused = services.servers.start(spec_for(model_root, model_path=str(foreign))).errors
        assert [(e.field, e.key) for e in refused] == [("model_path", "errors.serve_architecture")]
        assert refused[0].params["arch"] == "FooBarForCausalLM"
        model = model_of(model_root)
        empty = model_root / "empty.txt"
        empty.write_text("   \n")
        for spec, key in (
            (AwqSpec(model_path=model, calib_source="files", calib_files=(str(empty),), device="cpu"),
             "errors.calib_empty"),
            (AwqSpec(model_path=model, calib_source="none", device="cpu", output_dir="o" * 5000), "errors.too_long"),
            (AwqSpec(model_path=model, calib_source="none", device="cpu",
                     output_dir=str(empty / "below-a-file")), "errors.output_blocked_by_file"),
        ):
            outcome = services.jobs.submit(spec)
            assert outcome.job is None and [e.key for e in outcome.errors] == [key], outcome.errors
        assert children() <= before  # nothing new (an earlier test's exited child may be reaped meanwhile)
        assert services.servers.snapshots() == [] and services.jobs.snapshots() == []
    finally:
        services.close()


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder in which no folder can be made: a 0500 folder, or for root (whom mode bits do not stop) sysfs."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").mkdir()
    except OSError:
        yield folder
    else:
        yield Path("/sys/kernel")
    finally:
        folder.chmod(0o700)


def test_an_output_folder_that_cannot_be_written_is_named(settings: Settings, model_root: Path,
                                                          unwritable_dir: Path) -> None:
    services = Services.build(Settings(state_dir=settings.state_dir, model_roots=(model_root, unwritable_dir)))
    try:
        outcome = services.jobs.submit(AwqSpec(model_path=model_of(model_root), calib_source="none", device="cpu",
                                               output_dir=str(unwritable_dir / "out")))
        assert [e.key for e in outcome.errors] == ["errors.output_unwritable"]
        assert outcome.errors[0].params["errno"] in ("EACCES", "EPERM", "EROFS")
        assert outcome.errors[0].params["path"] == str(unwritable_dir) and outcome.errors[0].params["reason"]
        assert services.jobs.snapshots() == []
    finally:
        services.close()


def test_the_database_file_is_owner_only(bare_settings: Settings) -> None:
    settings = bare_settings
    services = Services.build(settings)
    services.close()
    assert stat.S_IMODE(os.stat(settings.db_path).st_mode) == 0o600
    with sqlite3.connect(settings.db_path) as conn:
        assert conn.execute("SELECT count(*) FROM servers").fetchone() == (0,)
