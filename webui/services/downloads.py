"""Model downloads: a repo's file list before anything is fetched, then a download job under the lifecycle core.

A download is a child process (webui/workers/download_worker.py) like an AWQ job: it outlives the page and
the console (re-attached by pid and create time), is cancelled by a signal, and resumes from the hub
client's own `.incomplete` files when started again. The hub token lives in the secret store and reaches
the worker only through its environment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.services.child_jobs import ChildJobs
from webui.services.gpu import GpuProbe
from webui.services.hub import (
    SOURCES,
    HubClient,
    HubProblem,
    RepoListing,
    cached_snapshot,
    endpoint_of,
    folder_name,
    looks_like_repo_id,
    repo_id_problem,
    revision_problem,
)
from webui.services.job_states import JobFacts, JobState, decide_job, holds_device, is_live_job
from webui.services.lifecycle import Monitor, SpawnFailure, observe_process, spawn_safely
from webui.services.planner import ModelShape, PlanInput, plan
from webui.services.processes import ProcessSupervisor
from webui.services.secrets import SecretStore
from webui.services.serve_log import tail
from webui.services.serve_spec import FieldError
from webui.services.store import JobRecord, Store

log = logging.getLogger(__name__)

KIND = "download"
RESOURCE = "network"
TICK_S = 0.2
MAX_RUNNING = 2
CANCEL_GRACE_S = 3.0
DISK_MARGIN_BYTES = 256 << 20
TOKEN_SECRET = "hub/token"
MAX_TOKEN_CHARS = 512
DESTINATIONS = ("models", "cache")

DownloadArgv = Callable[[Path], list[str]]


@dataclass(frozen=True)
class DownloadRequest:
    """What the user asked for: a repo at a revision, from a source, into the models folder or the HF cache."""

    repo_id: str
    revision: str = "main"
    source: str = "huggingface"
    destination: str = "models"

    def problems(self) -> list[FieldError]:
        errors = []
        if (p := repo_id_problem(self.repo_id)) is not None:
            errors.append(FieldError("repo_id", p.key, p.params))
        if (p := revision_problem(self.revision)) is not None:
            errors.append(FieldError("revision", p.key, p.params))
        if self.source not in SOURCES:
            errors.append(FieldError("source", "errors.choice", {"value": self.source, "choices": ", ".join(SOURCES)}))
        elif self.source == "modelscope":  # never quietly fetched from another hub instead
            errors.append(FieldError("source", "hub.err.modelscope_unsupported", {}))
        if self.destination not in DESTINATIONS:
            errors.append(FieldError("destination", "errors.choice",
                                     {"value": self.destination, "choices": ", ".join(DESTINATIONS)}))
        return errors


@dataclass(frozen=True)
class DownloadPreview:
    """Everything known before a byte of weights is fetched: files, total, room on disk, the GPU's verdict."""

    request: DownloadRequest
    listing: RepoListing | None = None
    problem: HubProblem | None = None
    output_dir: str = ""
    free_bytes: int | None = None
    present_bytes: int = 0
    local_path: str = ""  # already downloaded (or in the HF cache): no download needed
    needs_token: bool = False
    token_saved: bool = False
    gpu_verdict: dict[str, Any] = field(default_factory=dict)
    config_problem: HubProblem | None = None

    @property
    def needed_bytes(self) -> int:
        return max(0, (self.listing.total_bytes if self.listing else 0) - self.present_bytes)

    @property
    def fits_on_disk(self) -> bool:
        return self.free_bytes is None or self.needed_bytes + DISK_MARGIN_BYTES <= self.free_bytes


@dataclass(frozen=True)
class FileProgress:
    path: str
    size: int
    done: int
    verified: bool


@dataclass(frozen=True)
class DownloadSnapshot:
    """Read model of one download for the UI and the scripting API (never holds the token)."""

    id: str
    state: str
    phase: str
    repo_id: str
    revision: str
    commit: str
    source: str
    endpoint: str
    destination: str
    output_dir: str
    total_bytes: int
    done_bytes: int
    fraction: float
    rate_bps: float
    eta_seconds: float | None
    files: tuple[FileProgress, ...]
    created_at: float
    started_at: float | None
    ended_at: float | None
    error: str
    error_key: str
    error_params: dict[str, str]
    keep_partial: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON for scripts; a file is named under "file" (Gradio's client takes any {"path": …} for a file
        to fetch)."""
        data = dict(self.__dict__)
        data["files"] = [{"file": f.path, "size": f.size, "done": f.done, "verified": f.verified}
                         for f in self.files]
        return data


@dataclass(frozen=True)
class DownloadOutcome:
    """The started (or queued) download, or why nothing was started."""

    download: DownloadSnapshot | None
    errors: tuple[FieldError, ...] = ()


def hub_login_token() -> str:
    """A token the hub client would send on its own: `HF_TOKEN`, or the one `hf auth login` saved."""
    from huggingface_hub import get_token

    return get_token() or ""


def mask_token(token: str) -> str:
    """`hf_…abcd`: enough to recognise which token is saved, too little to use it."""
    if not token:
        return ""
    return f"{token[:3]}…{token[-4:]}" if len(token) > 10 else "…"


def free_bytes_at(path: Path) -> int | None:
    """Free space on the filesystem that would hold `path` (its nearest existing folder)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def read_progress(path: str) -> dict[str, Any]:
    """The worker's progress file; missing or half-written reads as nothing yet."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def partial_of(output: Path) -> Path:
    """Where a download into `output` collects its files: a hidden sibling, so the pickers never list it."""
    return output.parent / f".{output.name}.partial"


def worker_argv(python: str, job_file: Path) -> list[str]:
    return [python, "-m", "webui.workers.download_worker", str(job_file)]


class DownloadManager(ChildJobs[DownloadSnapshot]):
    """Owns every download of this console; app-scoped and shared by all browser sessions."""

    def __init__(
        self,
        store: Store,
        supervisor: ProcessSupervisor,
        secrets: SecretStore,
        gpu: GpuProbe,
        models_dir: Path,
        cache_dir: Path,
        jobs_dir: Path,
        hub_endpoint: str,
        mirror_endpoint: str,
        python: str = sys.executable,
        download_argv: DownloadArgv | None = None,
    ) -> None:
        super().__init__(store, supervisor, KIND, CANCEL_GRACE_S)
        self._secrets = secrets
        self._gpu = gpu
        self.models_dir = models_dir
        self.cache_dir = cache_dir
        self._jobs_dir = jobs_dir
        self.hub_endpoint = hub_endpoint.rstrip("/")
        self.mirror_endpoint = mirror_endpoint.rstrip("/")
        self._argv = download_argv or (lambda job_file: worker_argv(python, job_file))
        self._lock = threading.RLock()
        self._reattach()
        self._monitor: Monitor[JobRecord] = Monitor(
            "download_monitor", self._running, self._check, lambda r: r.id, TICK_S, store, after=self._schedule)

    # token ---------------------------------------------------------------------------------------
    def save_token(self, token: str) -> FieldError | None:
        """Keep the hub token in the owner-only secret file; an empty value forgets it."""
        value = (token or "").strip()
        if len(value) > MAX_TOKEN_CHARS or any(c.isspace() for c in value):
            return FieldError("token", "hub.err.token_invalid", {"max": str(MAX_TOKEN_CHARS)})
        if value:
            self._secrets.set(TOKEN_SECRET, value)
        else:
            self._secrets.delete(TOKEN_SECRET)
        return None

    def token_hint(self) -> str:
        return mask_token(str(self._secrets.get(TOKEN_SECRET, "") or ""))

    def child_env(self) -> dict[str, str]:
        """The environment entries LMDeploy's children get from the console: the saved token, if any."""
        token = str(self._secrets.get(TOKEN_SECRET, "") or "")
        return {"HF_TOKEN": token} if token else {}

    # queries -------------------------------------------------------------------------------------
    def sources(self) -> list[str]:
        """The sources the page offers: ModelScope is refused with words until the console downloads from it."""
        return [s for s in SOURCES if s != "modelscope"]

    def endpoint(self, source: str) -> str:
        return endpoint_of(source, self.hub_endpoint, self.mirror_endpoint)

    def output_dir(self, request: DownloadRequest) -> Path:
        org = request.repo_id.split("/", 1)[0]
        return self.models_dir / org / folder_name(request.repo_id, request.revision)

    def local_path(self, repo_id: str, revision: str = "main") -> Path | None:
        """Where a repo id is already on disk: a finished download in the models folder, else the HF cache."""
        if not looks_like_repo_id(repo_id):
            return None
        folder = self.output_dir(DownloadRequest(repo_id, revision or "main"))
        if (folder / "config.json").is_file():
            return folder
        return cached_snapshot(self.cache_dir, repo_id, revision or "main")

    def preview(self, request: DownloadRequest, fetch_config: bool = True,
                commit: str = "") -> DownloadPreview | list[FieldError]:
        """The file list with sizes, room on disk, gating and the planner's verdict; fetches only config.json.

        `commit` lists that commit instead of where the revision points now (a resume)."""
        errors = request.problems()
        if errors:
            return errors
        token = str(self._secrets.get(TOKEN_SECRET, "") or "") or None
        client = HubClient(self.endpoint(request.source), token)
        listing = client.listing(request.repo_id, commit or request.revision or "main", request.source)
        if isinstance(listing, RepoListing) and commit:
            listing = dataclasses.replace(listing, revision=request.revision or "main")
        output = self.output_dir(request) if request.destination == "models" else self.cache_dir
        local = self.local_path(request.repo_id, request.revision)
        if isinstance(listing, HubProblem):
            return DownloadPreview(request, problem=listing, output_dir=str(output),
                                   local_path=str(local or ""), token_saved=token is not None)
        partial = partial_of(self.output_dir(request))
        present = folder_bytes(partial) if request.destination == "models" and partial.is_dir() else 0
        verdict: dict[str, Any] = {}
        config_problem = None
        if fetch_config:
            folder = self._jobs_dir / "previews" / uuid.uuid4().hex[:8]  # its own: previews run side by side
            config = client.config(listing, folder)
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(config, HubProblem):
                config_problem = config
            else:
                verdict = self._gpu_verdict(config)
        return DownloadPreview(request, listing=listing, output_dir=str(output), free_bytes=free_bytes_at(output),
                               present_bytes=present, local_path=str(local or ""),
                               needs_token=listing.gated and token is None and not hub_login_token(),
                               token_saved=token is not None, gpu_verdict=verdict, config_problem=config_problem)

    def _gpu_verdict(self, config: dict[str, Any]) -> dict[str, Any]:
        """Whether the model fits the detected GPU as it is (16-bit) and after AWQ, at the default fraction."""
        try:
            shape = ModelShape.from_config(config)
        except (KeyError, TypeError, ValueError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:200]}
        usable = self._gpu.usable().indices if self._gpu.available else None
        # the first GPU a server would get: under the console's own CUDA_VISIBLE_DEVICES, the first it allows
        devices = [d for d in (self._gpu.devices() if self._gpu.available else [])
                   if usable is None or d.index in usable]
        verdict: dict[str, Any] = {"weights_bytes": shape.weight_bytes(), "awq_weights_bytes": shape.weight_bytes(128),
                                   "gpu": "", "gpu_total_bytes": 0}
        if devices:
            gpu = devices[0]
            verdict.update(gpu=gpu.name, gpu_total_bytes=gpu.total_bytes)
            for name, awq in (("fp16", False), ("awq", True)):
                p = plan(PlanInput(shape, gpu.total_bytes, awq=awq and not shape.awq_group_size))
                verdict[name] = {"fits": p.fits, "tokens": p.tokens, "sessions": p.sessions,
                                 "total_bytes": p.total_bytes}
        return verdict

    def snapshots(self) -> list[DownloadSnapshot]:
        snaps = []
        for record in self._store.list_jobs(KIND):
            try:
                snaps.append(self._snapshot(record))
            except (ValueError, KeyError, TypeError):
                log.warning("download row %s cannot be read; it is left out of the list", record.id, exc_info=True)
        return snaps

    def get(self, download_id: str) -> DownloadSnapshot | None:
        record = self._store.get_job(download_id, KIND)
        return self._snapshot(record) if record else None

    def log(self, download_id: str, max_lines: int = 200) -> list[str]:
        record = self._store.get_job(download_id, KIND)
        return tail(record.log_path, max_lines=max_lines) if record and record.log_path else []

    # actions -------------------------------------------------------------------------------------
    def submit(self, request: DownloadRequest, commit: str = "") -> DownloadOutcome:
        """Check with the hub (files, gating, disk) and start at once, or queue behind the running downloads.

        Asks the hub outside the lock; nothing is written or spawned when a check fails.
        """
        preview = self.preview(request, fetch_config=False, commit=commit)
        if isinstance(preview, list):
            return DownloadOutcome(None, tuple(preview))
        if preview.problem is not None:
            return DownloadOutcome(None, (FieldError("repo_id", preview.problem.key, preview.problem.params),))
        listing = preview.listing
        assert listing is not None
        if not listing.files:
            return DownloadOutcome(None, (FieldError("repo_id", "hub.err.no_files", {"repo": request.repo_id}),))
        if not any(f.path == "config.json" for f in listing.files):  # it would never be a model the pickers list
            return DownloadOutcome(None, (FieldError("repo_id", "hub.err.no_config", {"repo": request.repo_id}),))
        if preview.needs_token:
            return DownloadOutcome(None, (FieldError("token", "hub.err.gated", {"repo": request.repo_id,
                                                                                "endpoint": listing.endpoint}),))
        if not preview.fits_on_disk:
            return DownloadOutcome(None, (FieldError("destination", "hub.err.disk_full", {
                "need": f"{preview.needed_bytes / 1e9:.2f}", "free": f"{(preview.free_bytes or 0) / 1e9:.2f}",
                "path": preview.output_dir}),))
        output = Path(preview.output_dir) if request.destination == "models" else (
            self.cache_dir / f"models--{request.repo_id.replace('/', '--')}" / "snapshots" / listing.sha)
        if request.destination == "models" and output.exists() and (not output.is_dir() or any(output.iterdir())):
            return DownloadOutcome(None, (FieldError("repo_id", "hub.err.already_there", {"path": str(output)}),))
        download_id = uuid.uuid4().hex[:8]
        folder = self._jobs_dir / download_id
        job: dict[str, Any] = {
            "repo_id": request.repo_id, "revision": request.revision or "main", "sha": listing.sha,
            "endpoint": listing.endpoint, "mode": "folder" if request.destination == "models" else "cache",
            "output_dir": str(output),
            "partial_dir": str(partial_of(output)) if request.destination == "models" else "",
            "cache_dir": str(self.cache_dir), "files": [f.as_dict() for f in listing.files],
            "progress_path": str(folder / "progress.json"),
        }
        with self._lock:
            if str(output) in self._claimed():
                return DownloadOutcome(None, (FieldError("repo_id", "hub.err.already_downloading",
                                                         {"repo": request.repo_id}),))
            folder.mkdir(parents=True, exist_ok=True)
            output.parent.mkdir(parents=True, exist_ok=True)
            (folder / "job.json").write_text(json.dumps(job, indent=2), encoding="utf-8")
            spec = {**request.__dict__, "commit": listing.sha, "endpoint": listing.endpoint,
                    "total_bytes": listing.total_bytes, "files": len(listing.files)}
            self._store.insert_job(JobRecord(
                id=download_id, kind=KIND, spec_json=json.dumps(spec), state=JobState.QUEUED, resource=RESOURCE,
                created_at=time.time(), output_dir=str(output), job_file=str(folder / "job.json"),
                log_path=str(folder / "download.log"), progress_path=str(folder / "progress.json"),
                command=f"hf download {request.repo_id} --revision {listing.sha}"
                        + (f" --local-dir {output}" if request.destination == "models" else ""),
            ))
            self._store.add_event(download_id, "queued", request.repo_id)
            self._schedule()
        return DownloadOutcome(self.get(download_id))

    def resume(self, download_id: str) -> DownloadOutcome:
        """Start a stopped download again; the files it finished are kept and a broken one continues."""
        record = self._store.get_job(download_id, KIND)
        if record is None:
            raise KeyError(download_id)
        spec = record.spec
        # The commit it was fetching, not where the branch points now: the kept files belong to that one.
        return self.submit(DownloadRequest(spec["repo_id"], spec.get("revision", "main"),
                                           spec.get("source", "huggingface"), spec.get("destination", "models")),
                           commit=str(spec.get("commit", "")))

    def cancel(self, download_id: str, keep_partial: bool = True) -> DownloadSnapshot:
        """Dequeue, or signal the worker and return (CANCELLING); the files fetched so far stay for a resume
        unless `keep_partial` is False, then they are removed once the worker is gone."""
        with self._lock:
            record = self._store.get_job(download_id, KIND)
            if record is None:
                raise KeyError(download_id)
            self._store.update_job(download_id, result_json=json.dumps({**record.result, "keep_partial": keep_partial}))
            if record.state == JobState.QUEUED:
                self._finish(record, JobState.CANCELLED, error="")
                if not keep_partial:
                    self._remove_partial(record)
            elif record.state == JobState.RUNNING:
                self._begin_cancel(record)
            elif not keep_partial and not is_live_job(record.state) and record.state != JobState.SUCCEEDED \
                    and record.output_dir not in self._claimed():  # never under a resumed download's feet
                self._remove_partial(record)  # a stopped download's kept files are let go
        self._monitor.wake()
        snap = self.get(download_id)
        assert snap is not None
        return snap

    def shutdown(self) -> None:
        """Console exit: running downloads keep running and are re-attached next start."""
        self._monitor.stop()

    # internals -----------------------------------------------------------------------------------
    def _claimed(self) -> frozenset[str]:
        return frozenset(r.output_dir for r in self._store.list_jobs(KIND) if is_live_job(r.state))

    def _check(self, record: JobRecord, watched: bool = True) -> None:
        handle = self._handle(record)
        facts = observe_process(self._supervisor, handle)
        if facts.alive:
            return
        progress = read_progress(record.progress_path)
        finished = progress.get("phase") == "done" and (Path(record.output_dir) / "config.json").is_file()
        found = progress.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        transition = decide_job(JobState(record.state), JobFacts(alive=False, finished=finished,
                                                                  error=str(error.get("message", "")),
                                                                  watched=watched))
        if transition is None:
            return
        with self._lock:
            current = self._store.get_job(record.id, KIND)
            if current is None or (current.state, current.pid) != (record.state, record.pid):
                return
            result = {**current.result, "error_key": str(error.get("key", "")),
                      "error_params": error.get("params") if isinstance(error.get("params"), dict) else {}}
            if transition.to == JobState.SUCCEEDED:
                result["fetched_bytes"] = progress.get("fetched_bytes")
                self._finish(current, JobState.SUCCEEDED, error="", exit_code=facts.exit_code, result=result)
            else:
                if not current.result.get("keep_partial", True):
                    self._remove_partial(current)
                message = str(error.get("message", "")) or "\n".join(tail(record.log_path, max_lines=8))
                self._finish(current, transition.to, error=message if transition.to != JobState.CANCELLED else "",
                             exit_code=facts.exit_code, result=result)
            self._supervisor.forget(handle)
        self._schedule()

    def _schedule(self) -> None:
        """Start queued downloads, oldest first, while fewer than MAX_RUNNING run."""
        with self._lock:
            records = self._store.list_jobs(KIND)
            running = sum(1 for r in records if holds_device(r.state))
            for record in sorted(records, key=lambda r: r.created_at):
                if running >= MAX_RUNNING:
                    break
                if record.state == JobState.QUEUED and self._start(record):
                    running += 1

    def _start(self, record: JobRecord) -> bool:
        output = Path(record.output_dir)
        if record.spec.get("destination", "models") == "models" and output.exists() and (
                not output.is_dir() or any(output.iterdir())):
            self._finish(record, JobState.FAILED, error=f"{output} was filled while the download waited",
                         result={**record.result, "error_key": "hub.err.already_there",
                                 "error_params": {"path": str(output)}})
            return False
        env = {**os.environ, "HF_ENDPOINT": record.spec.get("endpoint", self.hub_endpoint),
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ENABLE_HF_TRANSFER": "0", **self.child_env()}
        handle = spawn_safely(self._supervisor, self._argv(Path(record.job_file)), Path(record.log_path), env=env)
        if isinstance(handle, SpawnFailure):
            self._finish(record, JobState.FAILED,
                         error=f"could not start {handle.program}: {handle.reason} ({handle.errno or 'no errno'})")
            return False
        self._store.update_job(record.id, state=JobState.RUNNING, pid=handle.pid, create_time=handle.create_time,
                               started_at=time.time())
        self._store.add_event(record.id, "started", f"pid {handle.pid}")
        return True

    def _remove_partial(self, record: JobRecord) -> None:
        """Forget what a stopped download fetched: its partial folder, or its unfinished cache blobs."""
        try:
            job = json.loads(Path(record.job_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if job.get("partial_dir"):
            shutil.rmtree(job["partial_dir"], ignore_errors=True)
            return
        # The cache: this download's own blobs (named by their hashes), unless a snapshot links to one.
        repo_dir = Path(job["cache_dir"]) / f"models--{job['repo_id'].replace('/', '--')}"
        linked = {os.path.realpath(link) for link in (repo_dir / "snapshots").rglob("*") if link.is_symlink()}
        for spec in job.get("files", []):
            blob = repo_dir / "blobs" / str(spec.get("sha256") or spec.get("blob_id") or "-")
            blob.with_name(blob.name + ".incomplete").unlink(missing_ok=True)
            if blob.is_file() and os.path.realpath(blob) not in linked:
                blob.unlink(missing_ok=True)

    def _snapshot(self, record: JobRecord) -> DownloadSnapshot:
        spec = record.spec
        result = record.result
        total = int(spec.get("total_bytes") or 0)
        progress = read_progress(record.progress_path) if record.state != JobState.QUEUED else {}
        try:
            job = json.loads(Path(record.job_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            job = {"files": []}
        found_files = progress.get("files")
        done_by_file: dict[str, Any] = found_files if isinstance(found_files, dict) else {}
        verified = set(progress.get("verified") or [])
        succeeded = record.state == JobState.SUCCEEDED
        files = tuple(FileProgress(path=f["path"], size=int(f["size"]),
                                   done=int(f["size"]) if succeeded else min(int(done_by_file.get(f["path"], 0)),
                                                                             int(f["size"])),
                                   verified=succeeded or f["path"] in verified) for f in job.get("files", []))
        done = sum(f.done for f in files)
        rate = float(progress.get("rate_bps") or 0.0) if record.state == JobState.RUNNING else 0.0
        eta = (total - done) / rate if rate > 0 and total > done else None
        found = result.get("error_params")
        error_params: dict[str, Any] = found if isinstance(found, dict) else {}
        return DownloadSnapshot(
            id=record.id, state=record.state, phase=str(progress.get("phase", "queued")),
            repo_id=str(spec["repo_id"]), revision=str(spec.get("revision", "main")),
            commit=str(spec.get("commit", "")), source=str(spec.get("source", "")),
            endpoint=str(spec.get("endpoint", "")), destination=str(spec.get("destination", "models")),
            output_dir=record.output_dir, total_bytes=total, done_bytes=done,
            fraction=1.0 if succeeded else (done / total if total else 0.0), rate_bps=rate, eta_seconds=eta,
            files=files, created_at=record.created_at, started_at=record.started_at, ended_at=record.ended_at,
            error=record.error, error_key=str(result.get("error_key", "")),
            error_params={str(k): str(v) for k, v in error_params.items()},
            keep_partial=bool(result.get("keep_partial", True)),
        )
