"""The api_server lifecycle through the services layer, with real child processes and a real SQLite file.

READY needs a GPU, so the READY path uses the stand-in server (tests/fake_api_server.py); the real
`lmdeploy serve api_server` runs too and must end FAILED with the no-GPU hint on this machine.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from tests.conftest import FAKE_SERVER, children, fake_argv_factory, ipv6_loopback
from webui.services.container import Services
from webui.services.serve import ServerState, normalize_base_url
from webui.services.serve_spec import ServerSpec, suggest_port
from webui.settings import Settings

TERMINAL = {"READY", "FAILED", "STOPPED", "LOST"}


def spec_for(model_root: Path, **changes: object) -> ServerSpec:
    base = ServerSpec(model_path=str(model_root / "tiny llama; echo pwned"), backend="pytorch",
                      port=suggest_port(31000))
    return replace(base, **changes)


def test_start_ready_stop(fake_services: Services, model_root: Path) -> None:
    manager = fake_services.servers
    outcome = manager.start(spec_for(model_root, model_name="tiny", api_keys=("sk-test",)))
    assert outcome.errors == ()
    server = outcome.server
    assert server.state == "STARTING" and server.active
    assert "sk-test" not in server.command and "<API_KEY>" in server.command

    ready = manager.wait_for(server.id, TERMINAL, timeout_s=30)
    assert ready.state == "READY", manager.log(server.id)
    assert ready.model_id == "tiny"  # read from /v1/models with the key
    assert ready.ready_seconds is not None and ready.ready_seconds < 30
    assert ready.base_url == f"http://127.0.0.1:{server.port}"
    assert ready.gpu_blocks == 256839
    assert any("Uvicorn running" in line for line in manager.log(server.id))

    tree = [p.pid for p in psutil.Process(ready.pid).children(recursive=True)] + [ready.pid]
    assert len(tree) >= 2  # the stand-in's engine worker
    asked = time.monotonic()
    stopping = manager.stop(server.id)
    assert time.monotonic() - asked < 1.0  # the call signals and returns; it never waits for the process
    assert stopping.state == "STOPPING"
    stopped = manager.wait_for(server.id, {"STOPPED"}, timeout_s=10)
    assert stopped.state == "STOPPED" and stopped.detail == "serve.detail.stopped"
    assert float(stopped.detail_params["seconds"]) < 5
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in tree)
    assert [e.kind for e in fake_services.store.events(server.id)] == ["start", "ready", "stopped"]


def test_phases_are_shown_while_starting(settings: Settings, model_root: Path) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory("--phase-delay", "0.3", "--init-seconds", "1"))
    try:
        server = services.servers.start(spec_for(model_root)).server
        phases = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            snap = services.servers.get(server.id)
            phases.add(snap.phase)
            if snap.state == "READY":
                break
            time.sleep(0.05)
        assert snap.state == "READY"
        assert {"executor", "model", "warmup"} <= phases
    finally:
        services.close()


def test_bad_spec_spawns_nothing_and_keeps_history(fake_services: Services, model_root: Path) -> None:
    manager = fake_services.servers
    first = manager.start(spec_for(model_root)).server
    manager.wait_for(first.id, TERMINAL, 30)
    before = children()
    outcome = manager.start(spec_for(model_root, port=first.port, cache_max_entry_count=2.0))
    assert outcome.server is None
    assert {e.field for e in outcome.errors} == {"port", "cache_max_entry_count"}
    assert children() <= before  # nothing new (an earlier test's exited child may be reaped meanwhile)
    assert [s.id for s in manager.snapshots()] == [first.id]


def test_restart_keeps_the_id_and_gets_ready_again(fake_services: Services, model_root: Path) -> None:
    manager = fake_services.servers
    server = manager.start(spec_for(model_root)).server
    first = manager.wait_for(server.id, TERMINAL, 30)
    outcome = manager.restart(server.id)
    assert outcome.errors == ()
    again = manager.wait_for(server.id, TERMINAL, 30)
    assert again.state == "READY" and again.pid != first.pid
    assert not psutil.pid_exists(first.pid) or psutil.Process(first.pid).status() == psutil.STATUS_ZOMBIE


def test_a_crash_is_failed_with_a_hint(settings: Settings, model_root: Path) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory(
        "--fail-with", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"))
    try:
        server = services.servers.start(spec_for(model_root)).server
        failed = services.servers.wait_for(server.id, TERMINAL, 30)
        assert failed.state == "FAILED"
        assert failed.exit_code == 1
        assert failed.hint == "hints.out_of_memory"
        assert "CUDA out of memory" in failed.hint_line
    finally:
        services.close()


def test_console_restart_reattaches_live_servers_and_marks_dead_ones_lost(settings: Settings,
                                                                         model_root: Path) -> None:
    first = Services.build(settings, argv_factory=fake_argv_factory())
    live = first.servers.start(spec_for(model_root)).server
    doomed = first.servers.start(spec_for(model_root, port=suggest_port(live.port + 1))).server
    assert first.servers.wait_for(live.id, TERMINAL, 30).state == "READY"
    assert first.servers.wait_for(doomed.id, TERMINAL, 30).state == "READY", first.servers.log(doomed.id)[-6:]
    first.close(keep_servers=True)  # the console exits; the servers were asked to keep running
    psutil.Process(doomed.pid).kill()  # one of them dies while no console watches
    psutil.Process(doomed.pid).wait(5)

    second = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        assert second.servers.get(doomed.id).state == "LOST"
        back = second.servers.wait_for(live.id, {"READY"}, 10)
        assert back.state == "READY" and back.pid == live.pid
        assert [e.kind for e in second.store.events(live.id)][-1] == "reattached"
        assert second.servers.active().id == live.id
    finally:
        second.close()  # not kept this time: the owned server is stopped on exit
    assert not psutil.pid_exists(live.pid) or psutil.Process(live.pid).status() == psutil.STATUS_ZOMBIE


def test_attach_observes_an_external_server(fake_services: Services, model_root: Path, tmp_path: Path) -> None:
    port = suggest_port(32000)
    with open(tmp_path / "external.log", "w") as log:
        external = subprocess.Popen(  # noqa: S603
            [sys.executable, str(FAKE_SERVER), "/external/model", "--server-port", str(port), "--init-seconds", "0"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        manager = fake_services.servers
        deadline = time.monotonic() + 20
        snap = manager.attach(f"127.0.0.1:{port}/v1/")
        while snap.state != "READY" and time.monotonic() < deadline:
            time.sleep(0.1)
            snap = manager.get(snap.id)
        assert snap.state == "READY" and not snap.owned
        assert snap.model_id == "/external/model"
        assert snap.base_url == f"http://127.0.0.1:{port}"
        with pytest.raises(ValueError):
            manager.restart(snap.id)
        external.kill()
        external.wait(5)
        deadline = time.monotonic() + 10
        while manager.get(snap.id).state != "UNREACHABLE" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert manager.get(snap.id).state == "UNREACHABLE"
        manager.forget(snap.id)
        assert manager.get(snap.id) is None
    finally:
        external.kill()


def test_stop_of_a_server_that_ignores_sigterm(settings: Settings, model_root: Path) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory("--ignore-sigterm"))
    services.servers._stop_grace_s = 0.5
    try:
        server = services.servers.start(spec_for(model_root)).server
        services.servers.wait_for(server.id, TERMINAL, 30)
        assert services.servers.stop(server.id).state == "STOPPING"
        stopped = services.servers.wait_for(server.id, {"STOPPED"}, 10)
        assert stopped.state == "STOPPED" and stopped.detail == "serve.detail.stopped_killed"
        assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        services.close()


@pytest.mark.engine
def test_real_lmdeploy_without_gpu_fails_with_the_no_gpu_hint(settings: Settings, model_root: Path) -> None:
    services = Services.build(settings)  # the real `python -m lmdeploy serve api_server`
    try:
        server = services.servers.start(spec_for(model_root)).server
        failed = services.servers.wait_for(server.id, TERMINAL, 120)
        assert failed.state == ServerState.FAILED.value, services.servers.log(server.id)
        assert failed.hint == "hints.no_gpu"
        assert failed.exit_code == 1
        assert "Found no NVIDIA driver" in failed.hint_line
    finally:
        services.close()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:23333", "http://127.0.0.1:23333"),
        ("http://127.0.0.1:23333/v1/", "http://127.0.0.1:23333"),
        ("https://gpu.example.com/lmdeploy/v1", "https://gpu.example.com/lmdeploy"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_base_urls_are_normalized(raw: str, expected: str) -> None:
    assert normalize_base_url(raw) == expected


@pytest.mark.parametrize("raw", ["", "not a url", "ftp://host", "http://host:99999", "http://",
                                 "http://admin:s3cret@10.0.0.5:23333"])
def test_bad_base_urls_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_base_url(raw)


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_a_server_on_the_ipv6_loopback_gets_ready_and_answers(fake_services: Services, model_root: Path) -> None:
    manager = fake_services.servers
    outcome = manager.start(spec_for(model_root, host="::1", model_name="tiny-v6"))
    assert outcome.errors == () and outcome.server is not None
    ready = manager.wait_for(outcome.server.id, TERMINAL, timeout_s=30)
    assert ready.state == "READY", manager.log(outcome.server.id)
    assert ready.base_url == f"http://[::1]:{ready.port}" and ready.model_id == "tiny-v6"  # read over IPv6
    manager.stop(ready.id)
    assert manager.wait_for(ready.id, {"STOPPED"}, 15).state == "STOPPED"
