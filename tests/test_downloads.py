"""Downloads end to end: the real download worker (a child process) against the local hub endpoint, with the
real SQLite store, real files and the real `huggingface_hub` client for listings and errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from tests.conftest import STAND_IN_UUIDS, StandInNvml, place_model
from tests.hub_endpoint import HubEndpoint
from webui.services.container import Services
from webui.services.downloads import DownloadRequest, partial_of
from webui.services.serve_spec import ServerSpec
from webui.settings import Settings

REPO = "internlm/tiny-chat"
GATED = "meta-llama/tiny-gated"
TOKEN = "hf_TestTokenThatMustNeverLeak1234"
WEIGHTS = "model.safetensors"
MIB = 1 << 20


@pytest.fixture
def hub(tmp_path: Path, tiny_model_dir: Path) -> Iterator[HubEndpoint]:
    folder = place_model(tiny_model_dir, tmp_path / "hub-files", "tiny")
    with HubEndpoint() as endpoint:
        endpoint.add_repo(REPO, folder)
        endpoint.add_repo(GATED, folder, gated=True, tokens=frozenset({TOKEN}))
        yield endpoint


@pytest.fixture
def hub_settings(tmp_path: Path, hub: HubEndpoint) -> Settings:
    return Settings(state_dir=tmp_path / "state", hub_endpoint=hub.url, hf_cache_dir=tmp_path / "hf-cache",
                    cuda_visible_devices=None)


@pytest.fixture
def services(hub_settings: Settings) -> Iterator[Services]:
    built = Services.build(hub_settings)
    try:
        yield built
    finally:
        built.close()


def same_files(source: Path, target: Path) -> None:
    names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    for name in names:
        assert hashlib.sha256((target / name).read_bytes()).digest() == \
            hashlib.sha256((source / name).read_bytes()).digest(), name


def wait_until(check, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_preview_lists_files_sizes_disk_and_plan(services: Services, hub: HubEndpoint) -> None:
    preview = services.downloads.preview(DownloadRequest(REPO))
    assert not isinstance(preview, list) and preview.problem is None and preview.listing is not None
    listing = preview.listing
    assert listing.sha == hub.sha(REPO)
    assert {f.path for f in listing.files} == {f.path for f in hub.files(REPO)}
    weights = next(f for f in listing.files if f.path == WEIGHTS)
    assert weights.size > 30 * MIB and len(weights.sha256) == 64
    assert listing.total_bytes == sum(f.size for f in hub.files(REPO))
    assert preview.free_bytes and preview.free_bytes > listing.total_bytes and preview.fits_on_disk
    assert preview.gpu_verdict["weights_bytes"] > 0  # config.json alone was fetched for the planner
    assert {r.file for r in hub.requests if r.file} == {"config.json"}
    assert not preview.local_path and not preview.needs_token


def test_download_lands_as_a_model_folder_that_serve_and_quantize_accept(services: Services, hub: HubEndpoint,
                                                                      tmp_path: Path) -> None:
    outcome = services.downloads.submit(DownloadRequest(REPO))
    assert outcome.download is not None, outcome.errors
    done = services.downloads.wait_for(outcome.download.id, {"SUCCEEDED", "FAILED"}, 60)
    assert done.state == "SUCCEEDED", (done.error, services.downloads.log(done.id))
    folder = services.settings.models_dir / "internlm" / "tiny-chat"
    assert done.output_dir == str(folder) and done.commit == hub.sha(REPO)
    same_files(tmp_path / "hub-files" / "tiny", folder)
    assert done.fraction == 1.0 and all(f.verified for f in done.files)
    assert not partial_of(folder).exists()
    # every byte fetched once
    assert hub.served_bytes(REPO, WEIGHTS) == (folder / WEIGHTS).stat().st_size
    # the pickers list it, and the repo id now names it
    assert folder in services.roots.discover()
    assert services.roots.resolve(REPO) == folder
    checked = services.servers.check(ServerSpec(model_path=REPO, port=services.servers.suggest_port()))
    assert not isinstance(checked, list), checked
    assert str(folder) in services.servers.preview(ServerSpec(model_path=REPO, port=23333))
    # a second download of the same repo is refused (it is there), nothing spawned
    again = services.downloads.submit(DownloadRequest(REPO))
    assert again.download is None and again.errors[0].key == "hub.err.already_there"


def test_a_repo_id_not_downloaded_is_refused_never_fetched(services: Services, hub: HubEndpoint) -> None:
    checked = services.servers.check(ServerSpec(model_path=REPO, port=services.servers.suggest_port()))
    assert isinstance(checked, list) and checked[0].key == "errors.repo_not_downloaded"
    # a typo'd local path is a path problem, not a repo id
    typo = services.servers.check(ServerSpec(model_path="/data/modles/tiny", port=services.servers.suggest_port()))
    assert isinstance(typo, list) and typo[0].key == "errors.path_outside_roots"
    assert not [r for r in hub.requests if r.file]


def test_killed_download_resumes_without_fetching_twice(services: Services, hub: HubEndpoint) -> None:
    hub.set_throttle(8 * MIB)
    outcome = services.downloads.submit(DownloadRequest(REPO))
    assert outcome.download is not None, outcome.errors
    download_id = outcome.download.id

    def halfway() -> bool:
        snap = services.downloads.get(download_id)
        return snap is not None and snap.done_bytes > snap.total_bytes * 0.45

    wait_until(halfway)
    record = services.store.get_job(download_id)
    assert record is not None and record.pid
    os.kill(record.pid, signal.SIGKILL)
    stopped = services.downloads.wait_for(download_id, {"FAILED", "LOST"}, 20)
    kept = services.downloads.get(download_id)
    assert kept is not None and kept.keep_partial
    size = next(f.size for f in hub.files(REPO) if f.path == WEIGHTS)
    part = partial_of(services.settings.models_dir / "internlm" / "tiny-chat") / (WEIGHTS + ".part")
    had = part.stat().st_size
    assert size * 0.3 < had < size, (had, size, stopped.state)
    hub.set_throttle(0)
    resumed = services.downloads.resume(download_id)
    assert resumed.download is not None, resumed.errors
    done = services.downloads.wait_for(resumed.download.id, {"SUCCEEDED", "FAILED"}, 60)
    assert done.state == "SUCCEEDED", (done.error, services.downloads.log(done.id))
    ranges = [r.range for r in hub.requests if r.file == WEIGHTS and r.range]
    assert ranges == [f"bytes={had}-"]
    # what was fetched twice is at most the piece in flight when the worker was killed
    assert hub.served_bytes(REPO, WEIGHTS) - size <= 2 * MIB


def test_download_survives_a_console_restart(hub_settings: Settings, hub: HubEndpoint) -> None:
    hub.set_throttle(16 * MIB)
    first = Services.build(hub_settings)
    outcome = first.downloads.submit(DownloadRequest(REPO))
    assert outcome.download is not None, outcome.errors
    download_id = outcome.download.id
    wait_until(lambda: (s := first.downloads.get(download_id)) is not None and s.done_bytes > 4 * MIB)
    pid = first.store.get_job(download_id).pid  # type: ignore[union-attr]
    first.close()  # the console goes; the worker stays
    assert pid and psutil.pid_exists(pid)
    second = Services.build(hub_settings)
    try:
        snap = second.downloads.get(download_id)
        assert snap is not None and snap.state == "RUNNING"
        done = second.downloads.wait_for(download_id, {"SUCCEEDED", "FAILED", "LOST"}, 60)
        assert done.state == "SUCCEEDED", (done.error, second.downloads.log(download_id))
        assert any(e.kind == "reattached" for e in second.store.events(download_id))
    finally:
        second.close()


@pytest.mark.parametrize("keep", [True, False])
def test_cancel_keeps_or_removes_what_was_fetched(services: Services, hub: HubEndpoint, keep: bool) -> None:
    hub.set_throttle(4 * MIB)
    outcome = services.downloads.submit(DownloadRequest(REPO))
    assert outcome.download is not None, outcome.errors
    download_id = outcome.download.id
    wait_until(lambda: (s := services.downloads.get(download_id)) is not None and s.done_bytes > 2 * MIB)
    snap = services.downloads.cancel(download_id, keep_partial=keep)
    assert snap.state == "CANCELLING"
    done = services.downloads.wait_for(download_id, {"CANCELLED", "SUCCEEDED", "FAILED"}, 20)
    assert done.state == "CANCELLED" and not done.error
    partial = partial_of(services.settings.models_dir / "internlm" / "tiny-chat")
    assert partial.exists() is keep
    assert not (services.settings.models_dir / "internlm" / "tiny-chat").exists()
    assert services.roots.discover() == []


def test_hash_mismatch_fails_and_removes_the_file(services: Services, hub: HubEndpoint) -> None:
    hub.corrupt(REPO, WEIGHTS)
    outcome = services.downloads.submit(DownloadRequest(REPO))
    assert outcome.download is not None, outcome.errors
    done = services.downloads.wait_for(outcome.download.id, {"SUCCEEDED", "FAILED"}, 60)
    assert done.state == "FAILED" and done.error_key == "hub.err.hash_mismatch"
    assert done.error_params["file"] == WEIGHTS and done.error_params["got"] != done.error_params["expected"]
    partial = partial_of(services.settings.models_dir / "internlm" / "tiny-chat")
    assert not (partial / WEIGHTS).exists() and not (partial / (WEIGHTS + ".part")).exists()
    assert not (services.settings.models_dir / "internlm" / "tiny-chat").exists()


def test_dropped_connection_mid_file_is_continued(services: Services, hub: HubEndpoint) -> None:
    size = next(f.size for f in hub.files(REPO) if f.path == WEIGHTS)
    hub.drop_after(REPO, WEIGHTS, size // 2, times=2)
    outcome = services.downloads.submit(DownloadRequest(REPO))
    assert outcome.download is not None, outcome.errors
    done = services.downloads.wait_for(outcome.download.id, {"SUCCEEDED", "FAILED"}, 60)
    assert done.state == "SUCCEEDED", (done.error, services.downloads.log(done.id))
    assert hub.served_bytes(REPO, WEIGHTS) <= size + 2 * MIB  # continued with a Range, not started over
    assert any(r.range for r in hub.requests if r.file == WEIGHTS)


def test_gated_repo_needs_a_token_that_never_leaks(services: Services, hub: HubEndpoint,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    preview = services.downloads.preview(DownloadRequest(GATED))
    assert not isinstance(preview, list) and preview.listing is not None
    assert preview.listing.gated and preview.needs_token
    refused = services.downloads.submit(DownloadRequest(GATED))
    assert refused.download is None and refused.errors[0].key == "hub.err.gated"
    assert services.downloads.save_token(TOKEN) is None
    assert services.downloads.token_hint() == "hf_…1234"
    outcome = services.downloads.submit(DownloadRequest(GATED))
    assert outcome.download is not None, outcome.errors
    done = services.downloads.wait_for(outcome.download.id, {"SUCCEEDED", "FAILED"}, 60)
    assert done.state == "SUCCEEDED", (done.error, services.downloads.log(done.id))
    assert TOKEN in hub.bearer_tokens_seen()
    assert TOKEN not in json.dumps(done.as_dict())
    state = services.settings.state_dir
    services.store.checkpoint()
    for path in state.rglob("*"):
        if path.is_file() and path != services.settings.secrets_path:
            assert TOKEN.encode() not in path.read_bytes(), path
    assert oct(services.settings.secrets_path.stat().st_mode & 0o777) == "0o600"


def test_wrong_token_for_gated_repo_fails_with_words(services: Services, hub: HubEndpoint) -> None:
    assert services.downloads.save_token("hf_wrong_token_000000") is None
    outcome = services.downloads.submit(DownloadRequest(GATED))
    assert outcome.download is not None, outcome.errors
    done = services.downloads.wait_for(outcome.download.id, {"SUCCEEDED", "FAILED"}, 60)
    assert done.state == "FAILED" and done.error_key == "hub.err.gated"


def test_missing_repo_offline_hub_and_bad_ids_spawn_nothing(services: Services, hub: HubEndpoint,
                                                          tmp_path: Path) -> None:
    preview = services.downloads.preview(DownloadRequest("internlm/no-such-model"))
    assert not isinstance(preview, list) and preview.problem is not None
    assert preview.problem.key == "hub.err.repo_not_found"
    for bad in ("internlm/../etc", "a/b; rm -rf ~", "../../etc/passwd", "org/name/extra", "$(id)/x", "org/--x"):
        outcome = services.downloads.submit(DownloadRequest(bad))
        assert outcome.download is None and outcome.errors[0].field == "repo_id", bad
    assert services.downloads.submit(DownloadRequest(REPO, revision="main; ls")).errors[0].field == "revision"
    # a source the console cannot fetch from is refused in words, never replaced by another hub
    refused = services.downloads.submit(DownloadRequest(REPO, source="modelscope"))
    assert [(e.field, e.key) for e in refused.errors] == [("source", "hub.err.modelscope_unsupported")]
    assert services.store.list_jobs("download") == []
    offline = Services.build(Settings(state_dir=tmp_path / "other", hub_endpoint="http://127.0.0.1:9",
                                      hf_cache_dir=tmp_path / "hf-cache"))
    try:
        problem = offline.downloads.preview(DownloadRequest(REPO))
        assert not isinstance(problem, list) and problem.problem is not None
        assert problem.problem.key == "hub.err.offline"
    finally:
        offline.close()


def test_disk_too_small_is_refused_before_starting(services: Services, hub: HubEndpoint) -> None:
    hub.advertise_size(REPO, WEIGHTS, 1 << 60)  # an exabyte: more than any disk this runs on
    outcome = services.downloads.submit(DownloadRequest(REPO))
    assert outcome.download is None and outcome.errors[0].key == "hub.err.disk_full"
    assert services.store.list_jobs("download") == []
    assert not [r for r in hub.requests if r.file]


def test_download_into_the_hf_cache_is_found_by_repo_id(services: Services, hub: HubEndpoint,
                                                        tmp_path: Path) -> None:
    outcome = services.downloads.submit(DownloadRequest(REPO, destination="cache"))
    assert outcome.download is not None, outcome.errors
    done = services.downloads.wait_for(outcome.download.id, {"SUCCEEDED", "FAILED"}, 60)
    assert done.state == "SUCCEEDED", (done.error, services.downloads.log(done.id))
    snapshot = tmp_path / "hf-cache" / "models--internlm--tiny-chat" / "snapshots" / hub.sha(REPO)
    assert Path(done.output_dir) == snapshot
    same_files(tmp_path / "hub-files" / "tiny", snapshot)
    assert (snapshot / WEIGHTS).is_symlink()
    assert services.roots.resolve(REPO) == snapshot
    # the real client finds the same files offline, as lmdeploy would
    from huggingface_hub import snapshot_download

    found = snapshot_download(REPO, cache_dir=tmp_path / "hf-cache", local_files_only=True)
    assert Path(found) == snapshot


def test_a_server_started_by_repo_id_runs_and_shows_the_folder(hub_settings: Settings, hub: HubEndpoint) -> None:
    from tests.conftest import fake_argv_factory

    services = Services.build(hub_settings, argv_factory=fake_argv_factory())
    try:
        outcome = services.downloads.submit(DownloadRequest(REPO))
        assert outcome.download is not None, outcome.errors
        done = services.downloads.wait_for(outcome.download.id, {"SUCCEEDED", "FAILED"}, 60)
        assert done.state == "SUCCEEDED"
        started = services.servers.start(ServerSpec(model_path=REPO, port=services.servers.suggest_port()))
        assert started.server is not None, started.errors
        ready = services.servers.wait_for(started.server.id, {"READY", "FAILED"}, 60)
        assert ready.state == "READY"
        # what ran and what a restart would run is the folder, never a name lmdeploy would download
        assert done.output_dir in ready.command and REPO not in ready.command.replace(done.output_dir, "")
        assert ready.model_path == done.output_dir
    finally:
        services.close()


@pytest.mark.parametrize("name", ["../../escaped.json", "/tmp/escaped.json", "a/../../escaped.json", "a\\b.json"])
def test_a_hostile_listing_writes_nothing_outside(services: Services, hub: HubEndpoint, tmp_path: Path,
                                                  name: str) -> None:
    hub.list_as(REPO, "config.json", name)
    preview = services.downloads.preview(DownloadRequest(REPO))
    assert not isinstance(preview, list) and preview.problem is not None
    assert preview.problem.key == "hub.err.unsafe_file"
    outcome = services.downloads.submit(DownloadRequest(REPO))
    assert outcome.download is None and outcome.errors[0].key == "hub.err.unsafe_file"
    assert services.store.list_jobs("download") == []
    assert not list(tmp_path.rglob("escaped.json")) and not Path("/tmp/escaped.json").exists()


def kill_midway(services: Services, hub: HubEndpoint, download_id: str) -> int:
    """SIGKILL the worker once it has about half the weights; returns the bytes of the weights' .part."""
    wait_until(lambda: (s := services.downloads.get(download_id)) is not None and s.done_bytes > s.total_bytes * 0.4)
    record = services.store.get_job(download_id)
    assert record is not None and record.pid
    os.kill(record.pid, signal.SIGKILL)
    services.downloads.wait_for(download_id, {"FAILED", "LOST"}, 20)
    part = partial_of(services.settings.models_dir / "internlm" / "tiny-chat") / (WEIGHTS + ".part")
    return part.stat().st_size


def test_a_moved_branch_keeps_only_the_files_that_did_not_change(services: Services, hub: HubEndpoint,
                                                                  tmp_path: Path) -> None:
    hub.set_throttle(8 * MIB)
    first = services.downloads.submit(DownloadRequest(REPO))
    assert first.download is not None, first.errors
    had = kill_midway(services, hub, first.download.id)
    # main moves on: a new config.json, the same weights
    source = tmp_path / "hub-files" / "tiny"
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").unlink()  # it is a copy, but make sure the old bytes are not shared
    (source / "config.json").write_text(json.dumps({**config, "torch_dtype": "float16", "moved": True}))
    old_sha = hub.sha(REPO)
    hub.add_repo(REPO, source)
    assert hub.sha(REPO) != old_sha
    hub.set_throttle(0)
    second = services.downloads.submit(DownloadRequest(REPO))
    assert second.download is not None, second.errors
    done = services.downloads.wait_for(second.download.id, {"SUCCEEDED", "FAILED"}, 60)
    assert done.state == "SUCCEEDED" and done.commit == hub.sha(REPO), (done.error, services.downloads.log(done.id))
    folder = services.settings.models_dir / "internlm" / "tiny-chat"
    assert json.loads((folder / "config.json").read_text())["moved"] is True
    same_files(source, folder)
    assert not (folder / ".download.json").exists()
    size = next(f.size for f in hub.files(REPO) if f.path == WEIGHTS)
    assert hub.served_bytes(REPO, WEIGHTS) - size <= 2 * MIB, had  # the unchanged weights were continued


def test_busy_server_and_ignored_ranges_are_survived(services: Services, hub: HubEndpoint) -> None:
    size = next(f.size for f in hub.files(REPO) if f.path == WEIGHTS)
    hub.fail_next(REPO, WEIGHTS, 503, times=2)
    hub.drop_after(REPO, WEIGHTS, size // 2)
    hub.ignore_range(REPO, WEIGHTS)  # the continuation comes back whole: the file starts again, verified
    outcome = services.downloads.submit(DownloadRequest(REPO))
    assert outcome.download is not None, outcome.errors
    done = services.downloads.wait_for(outcome.download.id, {"SUCCEEDED", "FAILED"}, 90)
    assert done.state == "SUCCEEDED", (done.error, services.downloads.log(done.id))
    statuses = [r.status for r in hub.requests if r.file == WEIGHTS]
    assert statuses.count(503) == 2 and 200 in statuses
    log = "\n".join(services.downloads.log(done.id))
    assert "503" in log and "whole file" in log
    same_files(services.settings.models_dir.parent.parent / "hub-files" / "tiny",
               services.settings.models_dir / "internlm" / "tiny-chat")


def test_removing_a_stopped_downloads_files_spares_a_running_resume(services: Services, hub: HubEndpoint) -> None:
    hub.set_throttle(8 * MIB)
    first = services.downloads.submit(DownloadRequest(REPO))
    assert first.download is not None, first.errors
    kill_midway(services, hub, first.download.id)
    hub.set_throttle(4 * MIB)
    resumed = services.downloads.resume(first.download.id)
    assert resumed.download is not None, resumed.errors
    services.downloads.cancel(first.download.id, keep_partial=False)  # the old row: its files are in use
    hub.set_throttle(0)
    done = services.downloads.wait_for(resumed.download.id, {"SUCCEEDED", "FAILED"}, 60)
    assert done.state == "SUCCEEDED", (done.error, services.downloads.log(done.id))


def test_cancel_in_the_cache_removes_its_blobs_and_no_snapshot_appears(services: Services, hub: HubEndpoint,
                                                                       tmp_path: Path) -> None:
    hub.set_throttle(4 * MIB)
    outcome = services.downloads.submit(DownloadRequest(REPO, destination="cache"))
    assert outcome.download is not None, outcome.errors
    download_id = outcome.download.id
    wait_until(lambda: (s := services.downloads.get(download_id)) is not None and s.done_bytes > 4 * MIB)
    repo_dir = tmp_path / "hf-cache" / "models--internlm--tiny-chat"
    assert not (repo_dir / "snapshots" / hub.sha(REPO)).exists()  # links appear once every blob is verified
    assert services.roots.resolve(REPO) != repo_dir / "snapshots" / hub.sha(REPO)
    services.downloads.cancel(download_id, keep_partial=False)
    assert services.downloads.wait_for(download_id, {"CANCELLED", "SUCCEEDED", "FAILED"}, 20).state == "CANCELLED"
    assert [p.name for p in (repo_dir / "blobs").iterdir() if not p.name.endswith(".lock")] == []


def test_the_gpu_verdict_is_for_the_first_gpu_the_console_may_use(hub_settings: Settings, hub: HubEndpoint,
                                                                   stand_in_nvml: StandInNvml) -> None:
    """Two GPUs (NVML stand-in: an 80 GB A100 and a 24 GB slice); the console was limited to the second."""
    for limit, expected in ((None, "NVIDIA A100-SXM4-80GB"), (STAND_IN_UUIDS[1], "GRID A100-24C")):
        services = Services.build(replace(hub_settings, cuda_visible_devices=limit))
        try:
            preview = services.downloads.preview(DownloadRequest(REPO))
            assert not isinstance(preview, list), preview
            assert preview.gpu_verdict["gpu"] == expected
        finally:
            services.close()
