"""The local hub endpoint is proven with the real `huggingface_hub` client: what it downloads, how it reports
errors, how it recovers from a cut connection and how the endpoint paces a throttled transfer."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile as HfRepoFile

from tests.hub_endpoint import HubEndpoint, RepoFile

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO = "acme/tiny"
WEIGHTS = "model.safetensors"
MIB = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


def write_repo(folder: Path, weights: int = 3 * MIB) -> Path:
    """A small model-shaped folder: a config, a tokenizer, random weights, a file in a sub-folder."""
    (folder / "docs").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}))
    (folder / WEIGHTS).write_bytes(os.urandom(weights))
    (folder / "docs" / "README.md").write_text("# tiny\n")
    return folder


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (the client's own `.cache` bookkeeping left out), by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".cache" not in p.relative_to(folder).parts}


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    return write_repo(tmp_path / "repo")


@pytest.fixture
def hub() -> Iterator[HubEndpoint]:
    with HubEndpoint() as endpoint:
        yield endpoint


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain request (no client logic in between): status, headers, body."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback test endpoint
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_snapshot_download_to_cache_and_local_dir(hub: HubEndpoint, repo_dir: Path, tmp_path: Path) -> None:
    sha = hub.add_repo(REPO, repo_dir)
    assert len(sha) == 40 and sha == hub.add_repo(REPO, repo_dir)  # stable
    cached = Path(snapshot_download(REPO, cache_dir=tmp_path / "cache", endpoint=hub.url, token=False))
    assert cached == tmp_path / "cache" / "models--acme--tiny" / "snapshots" / sha
    assert tree_bytes(cached) == tree_bytes(repo_dir)
    local = Path(snapshot_download(REPO, local_dir=tmp_path / "local", endpoint=hub.url, token=False))
    assert tree_bytes(local) == tree_bytes(repo_dir)
    resolves = [r for r in hub.requests if r.file is not None]
    assert {r.method for r in resolves} == {"HEAD", "GET"}
    assert all(f"/resolve/{sha}/" in r.path and r.status == 200 for r in resolves)
    assert hub.served_bytes(REPO, WEIGHTS) == 2 * 3 * MIB


def test_model_info_and_tree_carry_the_hashes(hub: HubEndpoint, repo_dir: Path) -> None:
    sha = hub.add_repo(REPO, repo_dir)
    api = HfApi(endpoint=hub.url, token=False)
    for revision in (None, "main", sha):
        info = api.model_info(REPO, revision=revision, files_metadata=True)
        assert info.sha == sha and info.id == REPO and info.gated is False and info.private is False
        siblings = {s.rfilename: s for s in info.siblings or []}
        assert set(siblings) == {"config.json", "tokenizer.json", WEIGHTS, "docs/README.md"}
        for name, sibling in siblings.items():
            data = (repo_dir / name).read_bytes()
            assert (sibling.size, sibling.blob_id) == (len(data), git_blob(data))
            if name == WEIGHTS:
                assert sibling.lfs is not None and sibling.lfs.sha256 == sha256(data) and sibling.lfs.size == len(data)
            else:
                assert sibling.lfs is None
    # like the hub, sizes and hashes come only with files_metadata (blobs=true)
    assert {s.size for s in api.model_info(REPO).siblings or []} == {None}
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="v9")

    assert hub.files(REPO) == [RepoFile(s.rfilename, s.size or 0, s.blob_id or "", s.lfs.sha256 if s.lfs else None)
                               for s in api.model_info(REPO, files_metadata=True).siblings or []]
    top = {e.path: e for e in api.list_repo_tree(REPO)}
    assert set(top) == {"docs", "config.json", "tokenizer.json", WEIGHTS}
    assert type(top["docs"]).__name__ == "RepoFolder"
    weights = top[WEIGHTS]
    assert isinstance(weights, HfRepoFile)
    assert weights.lfs is not None and weights.lfs.sha256 == sha256((repo_dir / WEIGHTS).read_bytes())
    assert [e.path for e in api.list_repo_tree(REPO, "docs", revision=sha)] == ["docs/README.md"]
    assert len(list(api.list_repo_tree(REPO, recursive=True))) == 5


def counted(hub: HubEndpoint, expected: int, timeout_s: float = 5.0) -> bool:
    """The endpoint counts a response's bytes once its thread has sent them, which can be just after the client
    has read them: wait for the count (seen once in CI on 2 busy cores)."""
    deadline = time.monotonic() + timeout_s
    while hub.served_bytes(REPO, WEIGHTS) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return hub.served_bytes(REPO, WEIGHTS) == expected


def test_resolve_headers_and_ranges(hub: HubEndpoint, repo_dir: Path) -> None:
    sha = hub.add_repo(REPO, repo_dir)
    data = (repo_dir / WEIGHTS).read_bytes()
    url = f"{hub.url}/{REPO}/resolve/main/{WEIGHTS}"
    status, headers, body = http(url, "HEAD")
    assert (status, body) == (200, b"")
    assert headers["X-Repo-Commit"] == sha
    assert headers["ETag"] == headers["X-Linked-Etag"] == f'"{sha256(data)}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(len(data))
    assert headers["Accept-Ranges"] == "bytes" and headers["Content-Type"] == "application/octet-stream"
    _, small, _ = http(f"{hub.url}/{REPO}/resolve/{sha}/config.json", "HEAD")
    assert small["ETag"] == f'"{git_blob((repo_dir / "config.json").read_bytes())}"' and "X-Linked-Etag" not in small
    assert hub.served_bytes(REPO, WEIGHTS) == 0

    status, headers, body = http(url, headers={"Range": "bytes=100-"})
    assert status == 206 and body == data[100:]
    assert headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    assert counted(hub, len(data) - 100)
    status, headers, body = http(url, headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    assert counted(hub, len(data) - 90)
    status, headers, _ = http(url, headers={"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    # A request is recorded when the server's thread has finished answering it, which can be after the client
    # has read the answer and moved on: find it by its range, waiting a moment for the record.
    deadline = time.monotonic() + 5
    while not any(r.range == "bytes=10-19" for r in hub.requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    last = next(r for r in hub.requests if r.range == "bytes=10-19")
    assert (last.method, last.range, last.status, last.body_bytes, last.has_authorization) == (
        "GET", "bytes=10-19", 206, 10, False)


def test_a_cut_transfer_is_resumed_with_a_range(hub: HubEndpoint, tmp_path: Path) -> None:
    """The client writes in DOWNLOAD_CHUNK_SIZE pieces (10 MiB) and resumes from the last whole piece: a cut at
    15 MiB of 24 resumes at 10 MiB (a cut inside the first 10 MiB starts over, without a Range)."""
    assert constants.DOWNLOAD_CHUNK_SIZE == 10 * MIB
    size = 24 * MIB
    repo_dir = write_repo(tmp_path / "big", weights=size)
    hub.add_repo(REPO, repo_dir)
    hub.drop_after(REPO, WEIGHTS, 15 * MIB)
    path = hf_hub_download(REPO, WEIGHTS, cache_dir=tmp_path / "cache", endpoint=hub.url, token=False)
    assert Path(path).read_bytes() == (repo_dir / WEIGHTS).read_bytes()
    gets = [r for r in hub.requests if r.method == "GET" and r.file == WEIGHTS]
    assert [(r.range, r.status, r.body_bytes) for r in gets] == [
        (None, 200, 15 * MIB), (f"bytes={10 * MIB}-", 206, size - 10 * MIB)]
    assert hub.served_bytes(REPO, WEIGHTS) == 29 * MIB < 2 * size


def test_a_reset_connection_is_not_retried_by_the_client(hub: HubEndpoint, repo_dir: Path, tmp_path: Path) -> None:
    """A TCP reset surfaces as httpx2.ReadError, which http_get does not retry (it retries a short body)."""
    hub.add_repo(REPO, repo_dir)
    hub.drop_after(REPO, WEIGHTS, MIB, reset=True)
    with pytest.raises(httpx2.TransportError):
        hf_hub_download(REPO, WEIGHTS, cache_dir=tmp_path / "cache", endpoint=hub.url, token=False)
    # times=1: the next attempt gets the whole file
    path = hf_hub_download(REPO, WEIGHTS, cache_dir=tmp_path / "cache", endpoint=hub.url, token=False)
    assert Path(path).read_bytes() == (repo_dir / WEIGHTS).read_bytes()


def test_gated_repo_needs_a_listed_token(hub: HubEndpoint, repo_dir: Path, tmp_path: Path) -> None:
    hub.add_repo(REPO, repo_dir, gated=True, tokens=frozenset({"hf_good"}))
    info = HfApi(endpoint=hub.url, token=False).model_info(REPO, files_metadata=True)
    assert info.gated == "manual" and len(info.siblings or []) == 4  # the card is public, the files are not
    cache = tmp_path / "cache"
    with pytest.raises(GatedRepoError) as anonymous:
        hf_hub_download(REPO, "config.json", cache_dir=cache, endpoint=hub.url, token=False)
    assert anonymous.value.response is not None and anonymous.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as refused:
        hf_hub_download(REPO, "config.json", cache_dir=cache, endpoint=hub.url, token="hf_bad")
    assert refused.value.response is not None and refused.value.response.status_code == 403
    with pytest.raises(GatedRepoError):
        snapshot_download(REPO, cache_dir=cache, endpoint=hub.url, token=False)
    path = snapshot_download(REPO, cache_dir=cache, endpoint=hub.url, token="hf_good")
    assert tree_bytes(Path(path)) == tree_bytes(repo_dir)
    assert hub.bearer_tokens_seen() == {"hf_bad", "hf_good"}
    assert all(r.has_authorization == (r.status != 401) for r in hub.requests if r.file is not None)
    assert "hf_good" not in repr(hub.requests)


def test_unknown_repo_revision_and_file(hub: HubEndpoint, repo_dir: Path, tmp_path: Path) -> None:
    hub.add_repo(REPO, repo_dir)
    api = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError) as missing_repo:
        api.model_info("acme/nothing")
    assert not isinstance(missing_repo.value, GatedRepoError)
    assert missing_repo.value.response is not None and missing_repo.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/nothing", "config.json", cache_dir=tmp_path / "c", endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("acme/nothing", cache_dir=tmp_path / "c", endpoint=hub.url, token=False)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "absent.bin", cache_dir=tmp_path / "c", endpoint=hub.url, token=False)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="v9", cache_dir=tmp_path / "c", endpoint=hub.url, token=False)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="v9", cache_dir=tmp_path / "c", endpoint=hub.url, token=False)
    assert http(f"{hub.url}/api/spaces/{REPO}")[0] == 404
    assert http(f"{hub.url}/elsewhere")[0] == 404


def test_a_corrupt_file_keeps_its_advertised_hash(hub: HubEndpoint, repo_dir: Path, tmp_path: Path) -> None:
    hub.add_repo(REPO, repo_dir)
    hub.corrupt(REPO, WEIGHTS)
    original = (repo_dir / WEIGHTS).read_bytes()
    local = Path(snapshot_download(REPO, local_dir=tmp_path / "local", endpoint=hub.url, token=False))
    got = (local / WEIGHTS).read_bytes()
    assert len(got) == len(original) and got != original
    advertised = {s.rfilename: s for s in HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True).siblings or []}
    lfs = advertised[WEIGHTS].lfs
    assert lfs is not None and lfs.sha256 == sha256(original) != sha256(got)
    verdict = HfApi(endpoint=hub.url, token=False).verify_repo_checksums(REPO, local_dir=local)
    assert [m["path"] for m in verdict.mismatches] == [WEIGHTS] and verdict.checked_count == 4


def test_throttle_paces_the_body(hub: HubEndpoint, tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(MIB))
    hub.add_repo(REPO, folder)
    hub.set_throttle(2 * MIB)
    began = time.monotonic()
    hf_hub_download(REPO, "weights.bin", cache_dir=tmp_path / "cache", endpoint=hub.url, token=False)
    assert time.monotonic() - began >= 0.4
    hub.set_throttle(0)
    began = time.monotonic()
    status, _, body = http(f"{hub.url}/{REPO}/resolve/main/weights.bin")
    assert status == 200 and len(body) == MIB and time.monotonic() - began < 0.4


def test_stop_cuts_a_transfer_under_way(repo_dir: Path) -> None:
    hub = HubEndpoint(throttle_bps=64 * 1024).start()
    hub.add_repo(REPO, repo_dir)
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(_try_http(f"{hub.url}/{REPO}/resolve/main/{WEIGHTS}")))
    reader.start()
    time.sleep(0.3)
    began = time.monotonic()
    hub.stop()
    assert time.monotonic() - began < 1.5
    reader.join(5)
    assert not reader.is_alive() and result and isinstance(result[0], Exception)


def _try_http(url: str) -> object:
    try:
        return http(url)
    except Exception as err:  # the cut is the point
        return err


def _child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HF_") and k not in ("HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_CACHE")}
    return {**env, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO_ROOT), **extra}


def test_hf_endpoint_environment_in_a_child_process(hub: HubEndpoint, repo_dir: Path, tmp_path: Path) -> None:
    """The console's worker points the client at a hub through HF_ENDPOINT, read when the client is imported."""
    sha = hub.add_repo(REPO, repo_dir)
    code = "import sys; from huggingface_hub import snapshot_download; print(snapshot_download(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, REPO], env=_child_env(tmp_path, HF_ENDPOINT=hub.url),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "hf-home" / "hub" / "models--acme--tiny" / "snapshots" / sha
    assert tree_bytes(path) == tree_bytes(repo_dir)
    assert not any(r.has_authorization for r in hub.requests)


def test_command_line_serves_until_sigterm(repo_dir: Path, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "tests.hub_endpoint", "--repo", f"{REPO}={repo_dir}", "--throttle-bps", "0",
            "--port", "0"]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=_child_env(tmp_path), stdout=subprocess.PIPE,  # noqa: S603
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no URL line in 20 s"
        word, url = proc.stdout.readline().split()
        assert word == "URL" and url.startswith("http://127.0.0.1:")
        path = snapshot_download(REPO, cache_dir=tmp_path / "cache", endpoint=url, token=False)
        assert tree_bytes(Path(path)) == tree_bytes(repo_dir)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
