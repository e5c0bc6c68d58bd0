"""AWQ jobs: a queue with one running job per GPU (and one on the CPU), live progress, cancel, history.

Jobs outlive the page and the console: a running job is re-attached after a restart by (pid, create time)
and its progress file is read on; queued jobs start when their device is free.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from webui.services.awq_progress import AwqProgress, progress_from, progress_from_log, read_events
from webui.services.child_jobs import ChildJobs
from webui.services.gpu import GpuProbe
from webui.services.job_states import JobFacts, JobState, decide_job, holds_device, is_live_job
from webui.services.lifecycle import Monitor, SpawnFailure, observe_process, spawn_safely
from webui.services.models import ModelRoots
from webui.services.processes import ProcessHandle, ProcessSupervisor
from webui.services.quantize_spec import (
    HUB_DATASETS,
    SAFE_NAME,
    AwqSpec,
    CheckedAwq,
    TokenCounter,
    check_awq,
    cli_preview,
    free_output_dir,
    gpu_errors,
    hub_reachable,
    job_env,
    resource_key,
    weight_bytes,
    worker_argv,
)
from webui.services.serve_log import tail
from webui.services.serve_spec import FieldError
from webui.services.store import JobRecord, Store

__all__ = ("JobManager", "JobSnapshot", "JobState", "SubmitOutcome")

log = logging.getLogger(__name__)

KIND = "awq"
TICK_S = 0.1
HUB_RECHECK_S = 60.0
CANCEL_GRACE_S = 5.0


@dataclass(frozen=True)
class JobSnapshot:
    """Read model of one job for the UI and the scripting API."""

    id: str
    state: str
    phase: str
    layer: int
    layers: int
    fraction: float
    elapsed_seconds: float | None
    eta_seconds: float | None
    queue_position: int | None
    model_path: str
    output_dir: str
    device: str
    gpu: int | None  # the GPU (NVML number) a cuda job runs on; None on the cpu
    summary: str  # compact facts for scripts ("w4 g128 · data-free · cuda:1"); the page words them from `spec`
    spec: dict[str, Any]
    created_at: float
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    error: str
    peak_ram_bytes: int
    peak_gpu_bytes: int
    result: dict[str, Any]
    command: str

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SubmitOutcome:
    """The queued job, or the field errors that stopped it (then nothing was spawned or written)."""

    job: JobSnapshot | None
    errors: tuple[FieldError, ...] = ()


JobArgv = Callable[[Path], list[str]]


class JobManager(ChildJobs[JobSnapshot]):
    """Owns every AWQ job of this console; app-scoped and shared by all browser sessions."""

    def __init__(
        self,
        store: Store,
        supervisor: ProcessSupervisor,
        roots: ModelRoots,
        gpu: GpuProbe,
        output_root: Path,
        jobs_dir: Path,
        python: str,
        job_argv: JobArgv | None = None,
        child_env: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(store, supervisor, KIND, CANCEL_GRACE_S)
        self._roots = roots
        self._gpu = gpu
        self._output_root = output_root
        self._jobs_dir = jobs_dir
        self._job_argv = job_argv or (lambda job_file: worker_argv(python, job_file))
        self._child_env = child_env or dict
        self._lock = threading.RLock()
        self._hub_seen: tuple[float, bool] = (-HUB_RECHECK_S, False)
        self._tokens = TokenCounter()
        self._reattach()
        self._monitor: Monitor[JobRecord] = Monitor(
            "job_monitor", self._running, self._check, lambda r: r.id, TICK_S, store, after=self._schedule)

    # queries -------------------------------------------------------------------------------------
    def check(self, spec: AwqSpec) -> CheckedAwq | list[FieldError]:
        online = None
        if spec.calib_source == "hub" and not spec.data_free and spec.calib_dataset in HUB_DATASETS:
            online = self._hub_online()
        return check_awq(spec, self._roots, self._output_root, self._gpu.usable(),
                         bf16_ok=self._gpu.bf16_supported(), hub_online=online,
                         claimed_outputs=self._claimed_outputs(), token_counter=self._tokens)

    def _hub_online(self) -> bool:
        """Whether the hub is reachable, remembered for a minute so form edits stay quick."""
        checked_at, online = self._hub_seen
        if time.monotonic() - checked_at > HUB_RECHECK_S:
            online = hub_reachable()
            self._hub_seen = (time.monotonic(), online)
        return online

    def preview(self, checked: CheckedAwq) -> str | None:
        return cli_preview(checked, self._gpu.usable())

    def snapshots(self) -> list[JobSnapshot]:
        """Every job; a row it cannot read (written by a newer version?) is left out, with a warning."""
        records = self._store.list_jobs(KIND)
        queue = self._queue(records)
        snapshots = []
        for record in records:
            try:
                snapshots.append(self._snapshot(record, queue))
            except (ValueError, KeyError, TypeError):
                log.warning("job row %s cannot be read; it is left out of the list", record.id, exc_info=True)
        return snapshots

    def get(self, job_id: str) -> JobSnapshot | None:
        record = self._store.get_job(job_id, KIND)
        return self._snapshot(record, self._queue(self._store.list_jobs(KIND))) if record else None

    def log(self, job_id: str, max_lines: int = 200) -> list[str]:
        record = self._store.get_job(job_id, KIND)
        return tail(record.log_path, max_lines=max_lines) if record and record.log_path else []

    # actions -------------------------------------------------------------------------------------
    def accept_upload(self, temp_path: str, upload_dir: Path) -> str:
        """Keep a browser upload under the state folder (inside the roots) and return its new path."""
        source = Path(temp_path)
        upload_dir.mkdir(parents=True, exist_ok=True)
        target = upload_dir / f"{uuid.uuid4().hex[:8]}-{SAFE_NAME.sub('-', source.name)}"
        shutil.copyfile(source, target)
        return str(target)

    def submit(self, spec: AwqSpec) -> SubmitOutcome:
        """Pre-flight, queue, and start it at once when its device is free; never waits on a process.

        The checks (hub reachability, tokenizing calibration text) and the copy of calibration files happen
        outside the lock, so a cancel or the monitor never waits for them; under it only the output folder is
        claimed again and the row inserted.
        """
        checked = self.check(spec)
        if isinstance(checked, list):
            return SubmitOutcome(None, tuple(checked))
        job_id = uuid.uuid4().hex[:8]
        folder = self._jobs_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        calib_files = self._keep_calibration_files(checked.spec, folder)
        job_file = folder / "job.json"
        job_file.write_text(json.dumps({
            "spec": checked.spec.to_json_dict(),
            "model_dir": str(checked.model_dir),
            "output_dir": str(checked.output_dir),
            "partial_dir": str(checked.output_dir) + ".partial",
            "progress_path": str(folder / "progress.jsonl"),
            "calib_files": calib_files,
            "size_before_bytes": checked.estimates.size_before_bytes,
        }, indent=2))
        with self._lock:
            claimed = self._claimed_outputs()
            if str(checked.output_dir) in claimed:  # another submit took it meanwhile
                shutil.rmtree(folder, ignore_errors=True)
                return SubmitOutcome(None, (FieldError("output_dir", "errors.output_claimed", {
                    "path": str(checked.output_dir),
                    "suggestion": str(free_output_dir(checked.output_dir, claimed))}),))
            self._store.insert_job(JobRecord(
                id=job_id, kind=KIND, spec_json=json.dumps(checked.spec.to_json_dict()), state=JobState.QUEUED,
                resource=checked.spec.resource, created_at=time.time(), output_dir=str(checked.output_dir),
                job_file=str(job_file), log_path=str(folder / "job.log"),
                progress_path=str(folder / "progress.jsonl"), layers=checked.layers,
                command=cli_preview(checked, self._gpu.usable()) or "",
            ))
            self._store.add_event(job_id, "queued", checked.spec.model_path)
            self._schedule()
        return SubmitOutcome(self.get(job_id))

    def cancel(self, job_id: str) -> JobSnapshot:
        """Dequeue, or signal the whole process tree and return (CANCELLING); the monitor settles it.

        A job ends SUCCEEDED with its output (it finished before the cancel reached it) or CANCELLED with no
        output and no half-written folder: never both.
        """
        with self._lock:
            record = self._store.get_job(job_id, KIND)
            if record is None:
                raise KeyError(job_id)
            if record.state == JobState.QUEUED:
                self._finish(record, JobState.CANCELLED, error="")
            elif record.state == JobState.RUNNING:
                self._begin_cancel(record)
        self._monitor.wake()
        snap = self.get(job_id)
        assert snap is not None
        return snap

    def shutdown(self) -> None:
        """Console exit: running jobs keep running and are re-attached next start (they can take hours)."""
        self._monitor.stop()

    # internals -----------------------------------------------------------------------------------
    def _keep_calibration_files(self, spec: AwqSpec, folder: Path) -> list[str]:
        """Copy calibration files next to the job, so uploads and temp files may vanish meanwhile."""
        kept = []
        if spec.calib_source == "files" and not spec.data_free:
            for n, name in enumerate(spec.calib_files):
                target = folder / f"calib-{n}{Path(name).suffix.lower()}"
                shutil.copyfile(name, target)
                kept.append(str(target))
        return kept

    def _claimed_outputs(self) -> frozenset[str]:
        return frozenset(r.output_dir for r in self._store.list_jobs(KIND) if is_live_job(r.state))

    def _queue(self, records: list[JobRecord]) -> dict[str, int]:
        """Queue position per queued job (1 = next), in submission order per device (each GPU, the CPU)."""
        positions: dict[str, int] = {}
        per_resource: dict[str, int] = {}
        for r in sorted(records, key=lambda rec: rec.created_at):
            if r.state == JobState.QUEUED:
                resource = resource_key(r.resource)
                per_resource[resource] = per_resource.get(resource, 0) + 1
                positions[r.id] = per_resource[resource]
        return positions

    def _check(self, record: JobRecord, watched: bool = True) -> None:
        """Observe one running job and apply `decide_job`; the monitor calls this for each job in its own try."""
        handle = self._handle(record)
        facts = observe_process(self._supervisor, handle)
        if facts.alive:
            self._sample_memory(record, handle)
            return
        events = read_events(record.progress_path)
        finished = any(e.get("phase") == "done" for e in events) and (Path(record.output_dir) / "config.json").is_file()
        errors = [str(e.get("message", "")) for e in events if e.get("phase") == "error"]
        transition = decide_job(JobState(record.state), JobFacts(alive=False, finished=finished,
                                                                  error=errors[-1] if errors else "", watched=watched))
        if transition is None:
            return
        with self._lock:
            current = self._store.get_job(record.id, KIND)
            if current is None or (current.state, current.pid) != (record.state, record.pid):
                return
            if transition.remove_output:
                self._remove_output(record)
            if transition.to == JobState.SUCCEEDED:
                self._finish(record, JobState.SUCCEEDED, error="", exit_code=facts.exit_code,
                             result=self._result(record, events))
            elif transition.to == JobState.CANCELLED:
                self._finish(record, JobState.CANCELLED, error="", exit_code=facts.exit_code)
            else:
                error = errors[-1] if errors else "\n".join(tail(record.log_path, max_lines=8))
                self._finish(record, transition.to, error=error, exit_code=facts.exit_code)
            self._supervisor.forget(handle)
        self._schedule()

    def _schedule(self) -> None:
        """Start the oldest queued job of every free device; deterministic, and quick (a spawn, no waiting)."""
        with self._lock:
            records = self._store.list_jobs(KIND)
            busy = {resource_key(r.resource) for r in records if holds_device(r.state)}
            for record in sorted(records, key=lambda r: r.created_at):
                if record.state == JobState.QUEUED and resource_key(record.resource) not in busy:
                    try:
                        started = self._start(record)
                    except (OSError, ValueError, TypeError) as exc:  # its output path unusable (EACCES, ESTALE…)
                        # or its row unreadable: it alone fails
                        self._finish(record, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
                        started = False
                    if started:
                        busy.add(resource_key(record.resource))

    def _start(self, record: JobRecord) -> bool:
        """Spawn a queued job's worker; a spawn that fails marks the job FAILED (the next one may start)."""
        output = Path(record.output_dir)
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            self._finish(record, JobState.FAILED, error=f"output folder {output} was filled while the job waited")
            return False
        # The hub token, if one is saved (only ever through the environment), and the job's GPU: the worker sees
        # that one GPU alone, as "cuda" (a legacy row's spec has no gpu: it ran on GPU 0 first, and does so now).
        spec, usable = AwqSpec.from_json_dict(record.spec), self._gpu.usable()
        if spec.device == "cuda" and gpu_errors(spec.gpu, usable):  # queued before the console's limit changed
            self._finish(record, JobState.FAILED, error=f"GPU {spec.gpu} is not one this console may use now "
                                                        f"(CUDA_VISIBLE_DEVICES={usable.limit})")
            return False
        extra_env = {**self._child_env(), **job_env(spec, usable)}
        handle = spawn_safely(self._supervisor, self._job_argv(Path(record.job_file)), Path(record.log_path),
                              env={**os.environ, **extra_env} if extra_env else None)
        if isinstance(handle, SpawnFailure):
            self._finish(record, JobState.FAILED,
                         error=f"could not start {handle.program}: {handle.reason} ({handle.errno or 'no errno'})")
            return False
        self._store.update_job(record.id, state=JobState.RUNNING, pid=handle.pid, create_time=handle.create_time,
                               started_at=time.time())
        self._store.add_event(record.id, "started", f"pid {handle.pid}")
        return True

    def _sample_memory(self, record: JobRecord, handle: ProcessHandle | None) -> None:
        procs = self._supervisor.tree(handle)
        ram = 0
        for proc in procs:
            try:
                ram += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        gpu = self._gpu.memory_of({p.pid for p in procs}) if self._gpu.available else 0
        if ram > record.peak_ram_bytes or gpu > record.peak_gpu_bytes:
            self._store.update_job(record.id, peak_ram_bytes=max(ram, record.peak_ram_bytes),
                                   peak_gpu_bytes=max(gpu, record.peak_gpu_bytes))

    def _remove_output(self, record: JobRecord) -> None:
        """Remove what an unfinished job wrote: its `.partial` folder, and its output if the rename happened
        without the job reporting done (the pre-flight only ever allowed a new or empty output folder)."""
        partial = Path(record.output_dir + ".partial")
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
        output = Path(record.output_dir)
        if output.is_dir() and not output.is_symlink() and any(output.iterdir()):
            shutil.rmtree(output, ignore_errors=True)

    def _result(self, record: JobRecord, events: list[dict[str, Any]]) -> dict[str, Any]:
        job = json.loads(Path(record.job_file).read_text())
        output = Path(record.output_dir)
        size_after = weight_bytes(output)
        size_before = int(job.get("size_before_bytes") or 0)
        try:
            quant_config = json.loads((output / "config.json").read_text()).get("quantization_config", {})
        except (OSError, ValueError):
            quant_config = {}
        reported_gpu = max((float(e.get("gpu_gb", 0)) for e in events), default=0.0)
        seconds = next((float(e["seconds"]) for e in reversed(events) if e.get("phase") == "done"), None)
        fresh = self._store.get_job(record.id, KIND) or record
        return {
            "size_before_bytes": size_before,
            "size_after_bytes": size_after,
            "ratio": round(size_before / size_after, 2) if size_after else None,
            "awq_seconds": seconds,
            "wall_seconds": round(time.time() - (fresh.started_at or time.time()), 2),
            "peak_ram_bytes": fresh.peak_ram_bytes,
            "peak_gpu_bytes": max(fresh.peak_gpu_bytes, int(reported_gpu * (1 << 30))),
            "quantization_config": quant_config,
        }

    def _snapshot(self, record: JobRecord, queue: dict[str, int]) -> JobSnapshot:
        spec = AwqSpec.from_json_dict(record.spec)
        layers = record.layers
        if is_live_job(record.state):
            events = read_events(record.progress_path)
            progress = (progress_from(layers, spec.data_free, events) if events
                        else progress_from_log(layers, spec.data_free, tail(record.log_path, 2000)))
        else:  # finished: its files are not read again on every refresh
            progress = AwqProgress(layers=layers, data_free=spec.data_free,
                                   phase="done" if record.state == JobState.SUCCEEDED else "queued")
        end = record.ended_at or time.time()
        elapsed = end - record.started_at if record.started_at else None
        eta = None
        if record.state in (JobState.RUNNING, JobState.CANCELLING) and elapsed and progress.fraction > 0.02:
            eta = max(0.0, elapsed / progress.fraction - elapsed)
        calib = "data-free" if spec.data_free else (
            spec.calib_dataset if spec.calib_source == "hub" else spec.calib_source)
        summary = (f"w{spec.w_bits} g{spec.w_group_size}{' sym' if spec.w_sym else ''} · {calib}"
                   + ("" if spec.data_free else f" {spec.calib_samples}×{spec.calib_seqlen}")
                   + (" · search-scale" if spec.search_scale else "") + f" · {spec.resource}")
        return JobSnapshot(
            id=record.id, state=record.state, phase=progress.phase, layer=progress.layer, layers=layers,
            fraction=1.0 if record.state == JobState.SUCCEEDED else progress.fraction,
            elapsed_seconds=elapsed, eta_seconds=eta, queue_position=queue.get(record.id),
            model_path=spec.model_path, output_dir=record.output_dir, device=spec.device,
            gpu=spec.gpu if spec.device == "cuda" else None, summary=summary,
            spec=spec.to_json_dict(),
            created_at=record.created_at, started_at=record.started_at, ended_at=record.ended_at,
            exit_code=record.exit_code, error=record.error, peak_ram_bytes=record.peak_ram_bytes,
            peak_gpu_bytes=record.peak_gpu_bytes, result=record.result, command=record.command,
        )
