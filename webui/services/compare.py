"""Comparisons: the same workload against 2-8 server configurations, one after another on the same GPU.

A comparison is a row in the jobs table (kind "compare") run by one thread of this manager. Each configuration
is either a READY server reused as it is or a Serve spec started through the ServerManager (so it shows in the
Serve tab, with its log, phases and memory markers). Per configuration: wait READY, read the engine's KV blocks,
warm up, ask the first prompts greedily, run each concurrency level through the load worker (a child process,
webui/workers/load_worker.py) while `/metrics` is polled for the KV pool's use, measure perplexity through
`/get_ppl`, read the peak GPU memory from the console's NVML sampler, then stop what it started.

Reused servers are put to sleep (`POST /sleep?level=1` frees their KV pool in a fraction of a second) while
the other configurations run, so each configuration gets the same free memory; they are woken for their own
turn and left awake at the end. A configuration that fails (out of memory at start, every request refused)
is recorded with its reason and the run goes on with the next. After a console restart a running comparison
continues with its first unfinished configuration.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import httpx

from webui.services.fit import fit_gpus
from webui.services.gpu import GpuSampler
from webui.services.job_states import JobState, is_live_job
from webui.services.lifecycle import SpawnFailure, handle_of, spawn_safely, wait_for_state
from webui.services.load import (
    API_KEY_ENV,
    LevelSpec,
    LevelStats,
    RequestRecord,
    bearer,
    read_records,
    summarize,
    worker_argv,
)
from webui.services.processes import ProcessSupervisor
from webui.services.serve import ServerManager, ServerSnapshot
from webui.services.serve_log import read_startup
from webui.services.serve_spec import KV_POLICIES, FieldError, ServerSpec, command_preview, on_another_machine
from webui.services.server_states import ServerState
from webui.services.store import JobRecord, Store
from webui.services.workload import Prompt, builtin_prompts, pick, quality_text, read_workload_file

log = logging.getLogger(__name__)

KIND = "compare"
RESOURCE = "gpu"
MIN_CONFIGS, MAX_CONFIGS = 2, 8
MAX_LEVELS = 6
MAX_CONCURRENCY = 512
MAX_REQUESTS = 5000
MAX_NEW_TOKENS = 32768
MAX_ANSWERS = 5
MAX_QUALITY_CHARS = 200000
PPL_CHUNK_CHARS = 1000  # a piece a request; ~3,000 tokens even where each character is 3 byte tokens
READY_TIMEOUT_S = 20 * 60.0
LEVEL_TIMEOUT_S = 30 * 60.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.25
SHUTDOWN_WAIT_S = 30.0
WARMUP_REQUESTS = 2
BLOCK_TOKENS = 64  # the pytorch engine's block size (its CacheConfig line says block_size=64)
KV_METRIC = "lmdeploy:gpu_cache_usage_perc"
CONFIG_STATUSES = ("pending", "starting", "warming", "measuring", "done", "failed", "cancelled")
CONFIG_SOURCES = ("reused", "started")
# The usual grid: KV policies to try per model, by backend (fp8 and TurboQuant need the pytorch engine).
GRID_POLICIES = MappingProxyType({"turbomind": ("none", "int8", "int4"),
                                  "pytorch": ("none", "int8", "int4", "fp8", "turbo_quant")})


def field_error(field_name: str, key: str, params: dict[str, Any]) -> FieldError:
    """A FieldError whose values are strings, as the catalog formats them."""
    return FieldError(field_name, key, {k: str(v) for k, v in params.items()})


@dataclass(frozen=True)
class CompareConfig:
    """One configuration: a READY server reused as it is (`server_id`), or a Serve spec to start."""

    label: str = ""
    server_id: str = ""
    spec: ServerSpec | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {"label": self.label, "server_id": self.server_id,
                "spec": self.spec.to_json_dict() if self.spec else None}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> CompareConfig:
        """Either {"server_id": …} or the Serve form's fields (flat, or under "spec"); a field of the wrong kind
        raises ValueError naming it (a JSON list edited by hand reaches here)."""
        label = str(data.get("label") or "")
        if data.get("server_id"):
            return cls(label=label, server_id=str(data["server_id"]))
        nested = data.get("spec")
        raw: dict[str, Any] = nested if isinstance(nested, dict) else data
        fields = {k: v for k, v in raw.items() if k not in ("label", "server_id", "spec")}
        defaults = ServerSpec(model_path="")
        for name, value in fields.items():
            if name not in ServerSpec.__dataclass_fields__:
                raise ValueError(f"{name}: not a Serve option")
            expected = getattr(defaults, name)
            if name == "gpus":  # [0, 1] or "0,1": check_spec reads the numbers and refuses what is not
                ok = isinstance(value, str) or (isinstance(value, list) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value))
            elif isinstance(expected, bool) or isinstance(value, bool):
                ok = isinstance(value, bool) and isinstance(expected, bool)
            elif isinstance(expected, float):
                ok = isinstance(value, int | float)
            elif isinstance(expected, tuple):
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            else:
                ok = isinstance(value, type(expected))
            if not ok:
                raise ValueError(f"{name}: expected {type(expected).__name__}, got {json.dumps(value)[:40]}")
        return cls(label=label, spec=ServerSpec.from_json_dict(fields))


@dataclass(frozen=True)
class CompareRequest:
    """What to compare and with which load; the workload is "builtin" or a JSONL file under the model roots."""

    configs: tuple[CompareConfig, ...]
    workload: str = "builtin"
    concurrency: tuple[int, ...] = (1, 8)
    requests_per_level: int = 32
    max_new_tokens: int = 128
    seed: int = 0
    quality: str = "sample"  # "sample", "none", or the user's own text
    answers: int = 3
    baseline: int = 0
    ignore_eos: bool = True
    keep_servers: bool = False

    def to_json(self) -> str:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "configs"}
        data["concurrency"] = list(self.concurrency)
        data["configs"] = [c.to_json_dict() for c in self.configs]
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CompareRequest:
        data = json.loads(text)
        data["configs"] = tuple(CompareConfig.from_json_dict(c) for c in data.get("configs") or ())
        data["concurrency"] = tuple(int(c) for c in data.get("concurrency") or ())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def usual_grid(model_path: str, awq_path: str = "", backend: str = "pytorch", cache_max_entry_count: float = 0.4,
               base: ServerSpec | None = None) -> list[CompareConfig]:
    """The original (and its AWQ output, when there is one) × the KV policies the backend offers."""
    template = base or ServerSpec(model_path=model_path)
    policies = [p for p in GRID_POLICIES.get(backend, GRID_POLICIES["turbomind"]) if p in KV_POLICIES]
    configs = []
    for path, fmt, tag in ((model_path, "auto", "orig"), (awq_path, "awq", "awq")):
        if not path:
            continue
        # the AWQ half takes the three classic policies: with fp8 and TurboQuant on the original, that is 8
        for policy in policies if fmt == "auto" else policies[:3]:
            spec = replace(template, model_path=path, model_format=fmt, backend=backend, kv_policy=policy,
                           cache_max_entry_count=cache_max_entry_count)
            configs.append(CompareConfig(label=f"{tag} · KV {policy}", spec=spec))
    return configs[:MAX_CONFIGS]


def check_request(request: CompareRequest) -> list[FieldError]:
    """Field errors of the run's own settings (each configuration's spec is checked by the ServerManager)."""
    errors = []
    n = len(request.configs)
    if not MIN_CONFIGS <= n <= MAX_CONFIGS:
        errors.append(field_error("configs", "compare.err.config_count", {"count": n, "min": MIN_CONFIGS,
                                                                          "max": MAX_CONFIGS}))
    levels = request.concurrency
    if len(set(levels)) != len(levels) or list(levels) != sorted(levels):
        errors.append(field_error("concurrency", "compare.err.levels_order", {}))
    if not levels or len(levels) > MAX_LEVELS or any(not 1 <= c <= MAX_CONCURRENCY for c in levels):
        errors.append(field_error("concurrency", "compare.err.levels", {"max_levels": MAX_LEVELS,
                                                                        "max": MAX_CONCURRENCY}))
    for name, value, low, high in (("requests_per_level", request.requests_per_level, 1, MAX_REQUESTS),
                                   ("max_new_tokens", request.max_new_tokens, 1, MAX_NEW_TOKENS),
                                   ("answers", request.answers, 0, MAX_ANSWERS),
                                   ("seed", request.seed, 0, 2**31 - 1)):
        if not low <= value <= high:
            errors.append(field_error(name, "errors.range", {"min": low, "max": high, "value": value}))
    if n and not 0 <= request.baseline < n:
        errors.append(field_error("baseline", "errors.range", {"min": 1, "max": n, "value": request.baseline + 1}))
    labels = [c.label for c in request.configs if c.label]
    if len(set(labels)) != len(labels):
        errors.append(field_error("configs", "compare.err.duplicate_label", {}))
    return errors


@dataclass(frozen=True)
class CompareSnapshot:
    """Read model of one comparison for the UI and the API: settings, state, progress and results so far."""

    id: str
    state: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    error: str
    request: dict[str, Any]
    progress: float
    current: int | None  # index of the configuration being measured
    configs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Cancelled(Exception):
    """The user cancelled the comparison: unwinds the configuration being measured."""


class CompareManager:
    """Runs comparisons one at a time; each outlives the page and, continued, a console restart."""

    def __init__(self, store: Store, supervisor: ProcessSupervisor, servers: ServerManager, sampler: GpuSampler,
                 roots: Any, jobs_dir: Path, python: str | None = None,
                 owners_of: Callable[[str], list[int]] | None = None,
                 gpu_busy: Callable[[frozenset[int]], list[int]] | None = None) -> None:
        self._store = store
        self._supervisor = supervisor
        self._servers = servers
        self._sampler = sampler
        self._roots = roots
        self._jobs_dir = jobs_dir
        self._python = python
        self._owners_of = owners_of or (lambda _sid: [])
        self._gpu_busy = gpu_busy or (lambda _gpus: [])  # which of these GPUs a quantization job holds
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._closing = threading.Event()
        self._resume()

    # read side ----------------------------------------------------------------------------------------
    def snapshots(self) -> list[CompareSnapshot]:
        return [self._snapshot(r) for r in self._store.list_jobs(KIND)]

    def get(self, compare_id: str) -> CompareSnapshot | None:
        record = self._store.get_job(compare_id, KIND)
        return self._snapshot(record) if record else None

    def running(self) -> CompareSnapshot | None:
        return next((s for s in self.snapshots() if is_live_job(s.state)), None)

    def preview(self, request: CompareRequest) -> tuple[list[dict[str, Any]], list[FieldError]]:
        """Each configuration's label and exact command (or the server it reuses), and what is wrong with them."""
        described = [self._describe(i, c) for i, c in enumerate(request.configs) if c.server_id or c.spec]
        return described, self._check_configs(request)

    def result(self, compare_id: str) -> dict[str, Any] | None:
        """The stored result with each configuration's deltas against the baseline (None: unknown id)."""
        snap = self.get(compare_id)
        if snap is None:
            return None
        baseline = int(snap.request.get("baseline") or 0)
        return {**snap.as_dict(), "deltas": deltas(snap.configs, baseline), "baseline": baseline}

    # actions -----------------------------------------------------------------------------------------
    def submit(self, request: CompareRequest) -> CompareSnapshot | list[FieldError]:
        """Check everything, then start the run at once; nothing is started or stored when a field is wrong."""
        if self.running() is not None:  # first: the rest would be checked against a GPU another run is using
            return [field_error("configs", "compare.err.busy", {})]
        if busy := self._gpu_busy(self._gpus_of(request)):
            return [field_error("configs", "compare.err.gpu_job", {"gpus": ", ".join(map(str, busy))})]
        errors = check_request(request) + self._check_configs(request)
        prompts = self._prompts(request, errors)
        if request.quality != "none" and isinstance(problem := quality_text(request.quality), FieldError):
            errors.append(problem)
        if errors:
            return errors
        with self._lock:
            if self._closing.is_set():
                return [field_error("configs", "errors.console_closing", {})]
            if self.running() is not None:
                return [field_error("configs", "compare.err.busy", {})]
            compare_id = "cmp-" + uuid.uuid4().hex[:8]
            folder = self._jobs_dir / compare_id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "prompts.jsonl").write_text(
                "".join(json.dumps({"id": p.id, "messages": p.as_messages()}, ensure_ascii=False) + "\n"
                        for p in prompts), encoding="utf-8")
            configs = [{**self._describe(i, c), "status": "pending"} for i, c in enumerate(request.configs)]
            record = JobRecord(id=compare_id, kind=KIND, spec_json=request.to_json(), state=JobState.RUNNING.value,
                               resource=RESOURCE, created_at=time.time(), started_at=time.time(),
                               output_dir=str(folder), log_path=str(folder / "load.log"),
                               result_json=json.dumps({"configs": configs}))
            self._store.insert_job(record)
            self._store.add_event(compare_id, "start", f"{len(configs)} configurations")
            self._launch(compare_id)
        return self._require(compare_id)

    def cancel(self, compare_id: str) -> CompareSnapshot:
        """Mark CANCELLING, stop the load worker; the run stops what it started and ends CANCELLED."""
        with self._lock:  # against the run's own _finish: a finished run is never relabelled, nor left CANCELLING
            record = self._store.get_job(compare_id, KIND)
            if record is None:
                raise KeyError(compare_id)
            if record.state != JobState.RUNNING.value:
                return self._require(compare_id)
            self._store.update_job(compare_id, state=JobState.CANCELLING.value)
            self._store.add_event(compare_id, "cancelling")
            self._cancel.setdefault(compare_id, threading.Event()).set()
            thread = self._threads.get(compare_id)
            if thread is None or not thread.is_alive():
                self._launch(compare_id)  # no run thread (a restart in between): let one settle it
        self._supervisor.request_stop(handle_of(record.pid, record.create_time, record.log_path), grace_s=2.0)
        return self._require(compare_id)

    def wait_for(self, compare_id: str, states: set[str], timeout_s: float) -> CompareSnapshot:
        """Block until the comparison reaches one of `states` (scripts, benchmarks and tests, never the UI)."""
        return wait_for_state(lambda: self._require(compare_id), states, timeout_s, poll_s=0.1)

    def shutdown(self) -> None:
        """Stop the runs' threads and load workers; rows stay RUNNING so the next console continues them."""
        self._closing.set()
        for event in list(self._cancel.values()):
            event.set()
        for record in self._store.list_jobs(KIND):
            if is_live_job(record.state):
                self._supervisor.request_stop(handle_of(record.pid, record.create_time, record.log_path),
                                              grace_s=1.0)
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        for thread in list(self._threads.values()):
            thread.join(timeout=max(0.1, deadline - time.monotonic()))

    # the run ----------------------------------------------------------------------------------------
    def _resume(self) -> None:
        """On console start: a comparison left running continues; its old load worker (if any) is stopped."""
        for record in self._store.list_jobs(KIND):
            if is_live_job(record.state):
                self._supervisor.request_stop(handle_of(record.pid, record.create_time, record.log_path),
                                              grace_s=1.0)
                self._store.add_event(record.id, "resumed")
                if record.state == JobState.CANCELLING.value:
                    self._cancel.setdefault(record.id, threading.Event()).set()
                self._launch(record.id)

    def _launch(self, compare_id: str) -> None:
        self._cancel.setdefault(compare_id, threading.Event())
        thread = threading.Thread(target=self._run, args=(compare_id,), name=f"compare-{compare_id}", daemon=True)
        self._threads[compare_id] = thread
        thread.start()

    def _run(self, compare_id: str) -> None:
        cancel = self._cancel[compare_id]
        record = self._store.get_job(compare_id, KIND)
        if record is None:
            return
        request = CompareRequest.from_json(record.spec_json)
        slept: list[str] = []
        try:
            prompts = _read_prompts(Path(record.output_dir) / "prompts.jsonl")
            slept = self._sleep_reused(compare_id, request)
            for index, config in enumerate(request.configs):
                if self._config(compare_id, index).get("status") in ("done", "failed"):
                    continue  # measured before a console restart
                if cancel.is_set():
                    raise _Cancelled
                self._leftover(compare_id, index)
                try:
                    self._run_config(compare_id, request, index, config, prompts, cancel, slept)
                except (_Cancelled, sqlite3.Error):
                    raise
                except Exception as exc:  # noqa: BLE001 - one configuration's surprise must not end the others
                    log.exception("comparison %s, configuration %d", compare_id, index + 1)
                    self._update_config(compare_id, index, status="failed", error={
                        "key": "compare.err.unexpected", "params": {"error": f"{type(exc).__name__}: {exc}"[:300]}})
        except _Cancelled:
            pass
        except Exception as exc:  # noqa: BLE001 - a bug must end the row, not the thread silently
            log.exception("comparison %s failed", compare_id)
            self._finish(compare_id, JobState.FAILED, f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._wake_all(slept)
        if self._closing.is_set() and not self._is_cancelling(compare_id):
            return  # the console is closing: the next one continues this run
        if cancel.is_set() or self._is_cancelling(compare_id):
            for i, c in enumerate(self._configs(compare_id)):
                if c.get("status") not in ("done", "failed"):
                    self._update_config(compare_id, i, status="cancelled")
            self._finish(compare_id, JobState.CANCELLED, "")
        else:
            failed = sum(1 for c in self._configs(compare_id) if c.get("status") == "failed")
            total = len(request.configs)
            self._finish(compare_id, JobState.FAILED if failed == total else JobState.SUCCEEDED,
                         "" if failed < total else "every configuration failed")

    def _run_config(self, compare_id: str, request: CompareRequest, index: int, config: CompareConfig,
                    prompts: list[Prompt], cancel: threading.Event, slept: list[str]) -> None:
        began = time.time()
        self._update_config(compare_id, index, status="starting", started_at=began, levels=[], error=None)
        server_id, started = config.server_id, not config.server_id
        timings: dict[str, float] = {}
        try:
            if started:
                t = time.monotonic()
                server_id, problem = self._start(compare_id, index, config, cancel)
                timings["start_s"] = round(time.monotonic() - t, 3)  # to READY, or to its failure
                if problem is not None:
                    self._update_config(compare_id, index, status="failed", error=problem, server_id=server_id)
                    return
            elif server_id in slept:
                t = time.monotonic()
                self._wake(server_id)
                timings["wake_s"] = round(time.monotonic() - t, 3)
            snap = self._servers.get(server_id)
            if snap is None or snap.state != ServerState.READY.value:
                self._update_config(compare_id, index, status="failed",
                                    error={"key": "compare.err.not_ready", "params": {"server": server_id}})
                return
            ready_s = round((snap.ready_at or began) - (snap.started_at or began), 3) if started else 0.0
            key = self._servers.api_key(server_id)
            blocks = snap.gpu_blocks
            reading = read_startup(self._servers.log(server_id, max_lines=5000)) if blocks else None
            tokens = blocks * ((reading.block_size if reading else None) or BLOCK_TOKENS) if blocks else None
            session_len = reading.session_len if reading else None
            self._update_config(compare_id, index, status="warming", server_id=server_id, model_id=snap.model_id,
                                gpu_blocks=blocks, kv_tokens=tokens, session_len_used=session_len,
                                kv_sessions=tokens // session_len if tokens and session_len else None,
                                command=snap.command, ready_s=ready_s)
            t = time.monotonic()
            answers = self._answers(snap.base_url, snap.model_id, key, prompts, request, cancel)
            timings["answers_s"] = round(time.monotonic() - t, 3)
            self._update_config(compare_id, index, answers=answers, status="measuring")
            peak_kv: float | None = None
            for level_index, concurrency in enumerate(request.concurrency):
                stats, kv = self._level(compare_id, index, level_index, snap.base_url, snap.model_id, key, prompts,
                                        request, concurrency, cancel)
                timings[f"level_{concurrency}_s"] = stats.wall_s
                if kv is not None:
                    peak_kv = max(peak_kv or 0.0, kv)
                levels = [*self._config(compare_id, index).get("levels", []), stats.as_dict()]
                self._update_config(compare_id, index, levels=levels, peak_kv_usage=peak_kv)
            t = time.monotonic()
            ppl = self._perplexity(snap.base_url, key, request.quality) if request.quality != "none" else None
            timings["ppl_s"] = round(time.monotonic() - t, 3)
            if cancel.is_set():  # a shutdown or cancel during /get_ppl: not measured to the end
                raise _Cancelled
            memory = self._peak_memory(server_id, began)
            all_failed = all(level["ok"] == 0 for level in self._config(compare_id, index).get("levels", []))
            error = {"key": "compare.err.all_requests_failed", "params": {
                "first": next((e for lv in self._config(compare_id, index)["levels"] for e in lv["first_errors"]),
                              "")}} if all_failed else None
            self._update_config(compare_id, index, status="failed" if all_failed else "done", perplexity=ppl,
                                error=error, **memory)
        except _Cancelled:
            self._update_config(compare_id, index, status="cancelled")
            raise
        finally:
            if started:  # a cancel during the start left its id in the row only
                server_id = server_id or str(self._config(compare_id, index).get("server_id") or "")
            if started and server_id and not request.keep_servers:
                t = time.monotonic()
                self._stop(server_id)
                timings["stop_s"] = round(time.monotonic() - t, 3)
            elif started and server_id and self._sleep(server_id):  # kept: asleep while the others run
                slept.append(server_id)
            elif server_id and server_id in slept:
                t = time.monotonic()
                self._sleep(server_id)
                timings["sleep_s"] = round(time.monotonic() - t, 3)
            timings["total_s"] = round(time.time() - began, 3)
            self._update_config(compare_id, index, timings=timings, ended_at=time.time())

    def _leftover(self, compare_id: str, index: int) -> None:
        """A configuration interrupted by a console restart may have left its server (kept running): stop it
        before starting it again, or the new one would see less memory."""
        row = self._config(compare_id, index)
        server_id = str(row.get("server_id") or "")
        if row.get("source") == "started" and server_id:
            snap = self._servers.get(server_id)
            if snap is not None and snap.state not in (ServerState.STOPPED.value, ServerState.FAILED.value,
                                                       ServerState.LOST.value):
                self._stop(server_id)
            self._update_config(compare_id, index, server_id="")

    def _start(self, compare_id: str, index: int, config: CompareConfig,
               cancel: threading.Event) -> tuple[str, dict[str, Any] | None]:
        """Start the configuration's server on a free port and wait for READY (or its failure)."""
        assert config.spec is not None
        for _attempt in range(3):  # another program may take the free port between the choice and the start
            outcome = self._servers.start(replace(config.spec, port=self._servers.suggest_port()))
            if outcome.server is not None or any(e.field != "port" for e in outcome.errors):
                break
        if outcome.server is None:
            error = outcome.errors[0]
            return "", {"key": error.key, "params": {**error.params, "field": error.field}}
        server_id = outcome.server.id
        self._update_config(compare_id, index, server_id=server_id, command=outcome.server.command)
        self._store.add_event(compare_id, "server", f"{index + 1}: {server_id}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            snap = self._servers.get(server_id)
            if snap is None:
                return server_id, {"key": "compare.err.server_gone", "params": {"server": server_id}}
            if snap.state == ServerState.READY.value:
                return server_id, None
            if snap.state in (ServerState.FAILED.value, ServerState.STOPPED.value, ServerState.LOST.value):
                return server_id, {"key": "compare.err.server_failed",
                                   "params": {"server": server_id, "hint": snap.hint, "line": snap.hint_line,
                                              "exit_code": snap.exit_code}}
            self._update_config(compare_id, index, phase=snap.phase, phase_progress=snap.progress)
            if cancel.wait(POLL_S):
                raise _Cancelled
        return server_id, {"key": "compare.err.ready_timeout", "params": {"seconds": int(READY_TIMEOUT_S)}}

    def _level(self, compare_id: str, index: int, level_index: int, base_url: str, model: str, key: str,
               prompts: list[Prompt], request: CompareRequest, concurrency: int,
               cancel: threading.Event) -> tuple[LevelStats, float | None]:
        """One concurrency level through the load worker, with `/metrics` polled for the KV pool's peak use."""
        chosen = pick(prompts, request.requests_per_level, request.seed + level_index)
        spec = LevelSpec(base_url=base_url, model=model, requests=tuple(tuple(p.as_messages()) for p in chosen),
                         concurrency=concurrency, max_tokens=request.max_new_tokens, temperature=0.0,
                         seed=request.seed, ignore_eos=request.ignore_eos,
                         warmup=min(max(concurrency, WARMUP_REQUESTS), len(chosen)), timeout_s=LEVEL_TIMEOUT_S)
        folder = self._folder(compare_id)
        spec_path = folder / f"level-{index + 1}-{concurrency}.json"
        out_path = folder / f"level-{index + 1}-{concurrency}.jsonl"
        spec_path.write_text(spec.to_json(), encoding="utf-8")
        out_path.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}  # the key only ever through here
        if key:
            env[API_KEY_ENV] = key
        handle = spawn_safely(self._supervisor, worker_argv(spec_path, out_path, self._python),
                              folder / "load.log", env=env)
        if isinstance(handle, SpawnFailure):
            raise RuntimeError(f"could not start the load worker: {handle.reason}")
        self._store.update_job(compare_id, pid=handle.pid, create_time=handle.create_time)
        self._update_config(compare_id, index, level=level_index, level_done=0, level_total=len(chosen))
        peak_kv: float | None = None
        deadline = time.monotonic() + LEVEL_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while self._supervisor.is_alive(handle):
                if cancel.is_set():
                    self._supervisor.request_stop(handle, grace_s=1.0)
                    raise _Cancelled
                if time.monotonic() > deadline:
                    self._supervisor.request_stop(handle, grace_s=1.0)
                    break
                usage = kv_usage(client, base_url, key)
                if usage is not None:
                    peak_kv = max(peak_kv or 0.0, usage)
                done = sum(1 for _ in _lines(out_path))
                self._update_config(compare_id, index, level_done=done)
                time.sleep(POLL_S)
        self._supervisor.exit_code(handle)  # reap it
        if cancel.is_set():  # the cancel stopped the worker before this loop saw it: a cut level is no result
            raise _Cancelled
        records = read_records(out_path)
        missing = len(chosen) - len(records)  # cut by the level's deadline: never read as a complete level
        records += [RequestRecord(len(records) + i, 0.0, 0.0, error="not finished before the level's deadline")
                    for i in range(max(0, missing))]
        return summarize(records, concurrency), peak_kv

    def _answers(self, base_url: str, model: str, key: str, prompts: list[Prompt], request: CompareRequest,
                 cancel: threading.Event) -> list[str]:
        """The first prompts' greedy replies, shown side by side (not timed)."""
        answers = []
        headers = bearer(key)
        with httpx.Client(base_url=base_url, headers=headers, timeout=120.0) as client:
            for prompt in prompts[:request.answers]:
                if cancel.is_set():
                    raise _Cancelled
                body = {"model": model, "messages": prompt.as_messages(), "temperature": 0.0,
                        "max_tokens": min(request.max_new_tokens, 256), "seed": request.seed}
                try:
                    resp = client.post("/v1/chat/completions", json=body)
                    data = resp.json()
                    answers.append(str(data["choices"][0]["message"].get("content") or "")
                                   if resp.status_code == 200 else f"HTTP {resp.status_code}")
                except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                    answers.append(f"{type(exc).__name__}")
        return answers

    def _perplexity(self, base_url: str, key: str, quality: str) -> dict[str, Any]:
        """Perplexity of the quality text through the server's own `/get_ppl` (mean cross-entropy in nats)."""
        text = quality_text(quality)
        if isinstance(text, FieldError) or not text:
            return {"available": False, "reason": "no_text"}
        return get_ppl(base_url, key, text[:MAX_QUALITY_CHARS])

    def _peak_memory(self, server_id: str, since: float) -> dict[str, Any]:
        """The highest GPU memory the console's sampler saw while this configuration ran, device and server."""
        # only readings taken after this configuration began: one from before is the previous server's memory
        samples = [s for s in self._sampler.history(time.time() - since + 1.0) if s.t >= since]
        if not samples:
            return {"peak_gpu_bytes": None, "peak_server_bytes": None}
        snap = self._servers.get(server_id)
        if snap is not None and self._elsewhere(snap):  # its memory is on another machine: not read here
            return {"peak_gpu_bytes": None, "peak_server_bytes": None}
        pids = set(self._owners_of(server_id))
        gpus = self._gpus_of_server(server_id)  # a job on another GPU is not this configuration's memory
        device_peak = max((sum(d.used_bytes for d in s.devices if not gpus or d.index in gpus) for s in samples),
                          default=None)
        server_peak = max((sum(p.used_bytes for p in s.processes if p.pid in pids) for s in samples),
                          default=0) if pids else None
        return {"peak_gpu_bytes": device_peak, "peak_server_bytes": server_peak or None}

    def _stop(self, server_id: str) -> None:
        snap = self._servers.stop(server_id)
        if snap.state != ServerState.STOPPED.value:
            try:
                self._servers.wait_for(server_id, {ServerState.STOPPED.value, ServerState.FAILED.value,
                                                   ServerState.LOST.value}, STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("server %s did not stop within %s s", server_id, STOP_TIMEOUT_S)
        if self._sampler.latest() is not None:  # with a GPU: the next configuration needs the memory back
            self._servers.wait_for_event(server_id, {"memory_released", "memory_not_released"}, 30.0)

    # sleep and wake -------------------------------------------------------------------------------------
    def _sleep_reused(self, compare_id: str, request: CompareRequest) -> list[str]:
        """Put every reused READY server to sleep for the run, so each configuration sees the same free memory."""
        slept = []
        for config in request.configs:
            if config.server_id and self._sleep(config.server_id):
                slept.append(config.server_id)
                self._store.add_event(compare_id, "slept", config.server_id)
        return slept

    def _sleep(self, server_id: str) -> bool:
        try:
            return not self._servers.sleep(server_id).error
        except KeyError:
            return False

    def _wake(self, server_id: str) -> bool:
        try:
            return not self._servers.wake(server_id).error
        except KeyError:
            return False

    def _wake_all(self, slept: list[str]) -> None:
        for server_id in slept:
            self._wake(server_id)

    # rows -------------------------------------------------------------------------------------------------
    def _folder(self, compare_id: str) -> Path:
        record = self._store.get_job(compare_id, KIND)
        return Path(record.output_dir) if record else self._jobs_dir / compare_id

    def _configs(self, compare_id: str) -> list[dict[str, Any]]:
        record = self._store.get_job(compare_id, KIND)
        return list((record.result if record else {}).get("configs") or [])

    def _config(self, compare_id: str, index: int) -> dict[str, Any]:
        configs = self._configs(compare_id)
        return configs[index] if index < len(configs) else {}

    def _update_config(self, compare_id: str, index: int, **changes: Any) -> None:
        with self._lock:
            record = self._store.get_job(compare_id, KIND)
            if record is None:
                return
            result = record.result
            configs = list(result.get("configs") or [])
            configs[index] = {**configs[index], **changes}
            result["configs"] = configs
            self._store.update_job(compare_id, result_json=json.dumps(result))

    def _is_cancelling(self, compare_id: str) -> bool:
        record = self._store.get_job(compare_id, KIND)
        return record is not None and record.state == JobState.CANCELLING.value

    def _finish(self, compare_id: str, state: JobState, error: str) -> None:
        """End the row; a cancel that arrived meanwhile wins over SUCCEEDED/FAILED (checked under the lock)."""
        with self._lock:
            record = self._store.get_job(compare_id, KIND)
            if record is None or not is_live_job(record.state):
                return
            if record.state == JobState.CANCELLING.value and state != JobState.CANCELLED:
                state = JobState.CANCELLED
            self._store.update_job(compare_id, state=state.value, ended_at=time.time(), error=error[-2000:],
                                   pid=None)
        self._store.add_event(compare_id, state.value.lower(), error[:300])

    def _require(self, compare_id: str) -> CompareSnapshot:
        snap = self.get(compare_id)
        if snap is None:
            raise KeyError(compare_id)
        return snap

    def _snapshot(self, record: JobRecord) -> CompareSnapshot:
        configs = list(record.result.get("configs") or [])
        request = json.loads(record.spec_json or "{}")
        levels = max(len(request.get("concurrency") or ()), 1)
        done = 0.0
        current = None
        for i, c in enumerate(configs):
            status = c.get("status")
            if status in ("done", "failed"):  # a cancelled run's bar stops where the run stopped
                done += 1
            elif status in ("starting", "warming", "measuring"):
                current = i
                if status == "measuring":
                    total = max(int(c.get("level_total") or 1), 1)
                    level = int(c.get("level") or 0) + min(int(c.get("level_done") or 0), total) / total
                    done += 0.2 + 0.8 * level / levels
                elif status == "warming":
                    done += 0.2
                else:
                    done += 0.2 * float(c.get("phase_progress") or 0.0)
        progress = done / len(configs) if configs else 0.0
        if record.state == JobState.SUCCEEDED.value:
            progress = 1.0
        return CompareSnapshot(id=record.id, state=record.state, created_at=record.created_at,
                               started_at=record.started_at, ended_at=record.ended_at, error=record.error,
                               request=request, progress=round(progress, 4), current=current, configs=configs)

    def _describe(self, index: int, config: CompareConfig) -> dict[str, Any]:
        """A configuration as shown before it runs: its label, what it runs and the exact command."""
        if config.server_id:
            snap = self._servers.get(config.server_id)
            return {"index": index, "label": config.label or (snap.model_id if snap else config.server_id),
                    "source": "reused", "server_id": config.server_id,
                    "model_path": snap.model_path if snap else "", "backend": snap.backend if snap else "",
                    "kv_policy": snap.kv_policy if snap else "",
                    "cache_max_entry_count": snap.cache_max_entry_count if snap else None,
                    "command": snap.command if snap else "", "base_url": snap.base_url if snap else ""}
        assert config.spec is not None
        spec = config.spec
        label = config.label or f"{Path(spec.model_path).name} · {spec.backend} · KV {spec.kv_policy} · " \
                                f"{spec.cache_max_entry_count:g}"
        return {"index": index, "label": label, "source": "started", "server_id": "",
                "model_path": spec.model_path, "backend": spec.backend, "kv_policy": spec.kv_policy,
                "model_format": spec.model_format, "cache_max_entry_count": spec.cache_max_entry_count,
                "session_len": spec.session_len, "command": command_preview(spec, usable=self._servers.usable_gpus()),
                "spec": spec.to_json_dict()}

    def _gpus_of(self, request: CompareRequest) -> frozenset[int]:
        """The GPUs the run measures: each configuration's chosen ones, else the first tp of those the console may
        use (a job on another GPU distorts none of its numbers)."""
        found: set[int] = set()
        for config in request.configs:
            if config.server_id:
                found.update(self._gpus_of_server(config.server_id))
            elif config.spec is not None:
                found.update(fit_gpus(config.spec, self._servers.usable_gpus().indices))
        return frozenset(found)

    @staticmethod
    def _elsewhere(snap: ServerSnapshot) -> bool:
        """An attached server at an address of another machine: none of this machine's GPUs are its."""
        return not snap.owned and on_another_machine(urlsplit(snap.base_url).hostname or "")

    def _gpus_of_server(self, server_id: str) -> frozenset[int]:
        """The GPUs a console server runs on: its chosen ones, else the first tp of those the console may use; none
        for a server attached on another machine (a job here distorts none of its numbers)."""
        snap = self._servers.get(server_id)
        if snap is None:
            return frozenset()
        if self._elsewhere(snap):
            return frozenset()
        spec = ServerSpec(model_path=snap.model_path, tp=snap.tp, gpus=snap.gpus)
        return frozenset(fit_gpus(spec, self._servers.usable_gpus().indices))

    def _check_configs(self, request: CompareRequest) -> list[FieldError]:
        """Each configuration as the Serve form would check it (its port is chosen when it starts)."""
        errors = []
        for i, config in enumerate(request.configs):
            where = {"config": i + 1}
            if config.server_id:
                snap = self._servers.get(config.server_id)
                if snap is None or snap.state != ServerState.READY.value:
                    errors.append(field_error("configs", "compare.err.not_ready",
                                             {**where, "server": config.server_id}))
                continue
            if config.spec is None:
                errors.append(field_error("configs", "compare.err.config_empty", where))
                continue
            if config.spec.api_keys or config.spec.host not in ("127.0.0.1", "localhost", "::1"):
                # its servers live minutes, on loopback: keys would only end up in the run's stored settings
                errors.append(field_error("configs", "compare.err.config_exposed", where))
                continue
            checked = self._servers.check(replace(config.spec, port=self._servers.suggest_port()))
            if isinstance(checked, list):  # the port is chosen when the configuration starts, not here
                errors.extend(field_error("configs", e.key, {**e.params, **where, "field": e.field}) for e in checked
                              if e.field != "port")
        return errors

    def _prompts(self, request: CompareRequest, errors: list[FieldError]) -> list[Prompt]:
        if request.workload in ("", "builtin"):
            return builtin_prompts()
        real = Path(request.workload).expanduser().resolve()
        if not self._roots.contains(real):
            errors.append(field_error("workload", "errors.path_outside_roots",
                                     {"path": request.workload,
                                      "roots": ", ".join(str(r) for r in self._roots.roots)}))
            return []
        found = read_workload_file(real)
        problems = [p for p in found if isinstance(p, FieldError)]
        errors.extend(problems)
        return [] if problems else [p for p in found if isinstance(p, Prompt)]


# --- plain functions over servers and results ----------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return []


def _read_prompts(path: Path) -> list[Prompt]:
    """The run's prompts as submitted (a user's file may change or vanish while the run goes on)."""
    prompts = []
    for line in _lines(path):
        data = json.loads(line)
        prompts.append(Prompt(str(data["id"]), tuple((m["role"], m["content"]) for m in data["messages"])))
    return prompts


def kv_usage(client: httpx.Client, base_url: str, key: str = "") -> float | None:
    """The KV pool's use (0..1) from LMDeploy's `/metrics`, None where the server does not expose it."""
    headers = bearer(key)
    try:
        resp = client.get(base_url + "/metrics", headers=headers)
    except httpx.HTTPError:
        return None
    return parse_kv_usage(resp.text) if resp.status_code == 200 else None


def parse_kv_usage(text: str) -> float | None:
    """The largest `lmdeploy:gpu_cache_usage_perc` sample of a Prometheus text page (one per engine)."""
    values = []
    for line in text.splitlines():
        if line.startswith(KV_METRIC):
            try:
                values.append(float(line.rsplit(" ", 1)[1]))
            except (IndexError, ValueError):
                continue
    return max(values) if values else None


def text_chunks(text: str, size: int = PPL_CHUNK_CHARS) -> list[str]:
    """The text in pieces of at most `size` characters, cut at paragraph ends, else at sentence ends, else hard."""
    chunks: list[str] = []
    current = ""
    for piece in re.split(r"(?<=\n\n)|(?<=[.!?。！？])", text):
        while len(piece) > size:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(piece[:size])
            piece = piece[size:]
        if len(current) + len(piece) > size and current and piece.strip():  # blank lines stay where they are
            chunks.append(current)
            current = ""
        current += piece
    if current.strip():
        chunks.append(current)
    return [c for c in chunks if c.strip()]


def get_ppl(base_url: str, key: str, text: str) -> dict[str, Any]:
    """Perplexity through `POST /get_ppl`, which returns a piece's mean cross-entropy in nats over its tokens.

    The text goes in pieces: one longer than the server's session comes back as an error. Where the server has
    LMDeploy's `POST /v1/encode`, each piece is sent as its token ids and weighted by the tokens it scores (a
    Chinese character is several tokens, an English word often one); otherwise as text, weighted by characters.
    Shown as exp(); "not available" where the server has no /get_ppl.
    """
    headers = bearer(key)
    pieces = text_chunks(text)
    total, weight = 0.0, 0
    with httpx.Client(timeout=300.0, headers=headers) as client:
        ids = _encode(client, base_url, pieces)
        for number, piece in enumerate(pieces):
            body: dict[str, Any] = {"input": ids[number] if ids else piece}
            try:
                resp = client.post(base_url + "/get_ppl", json=body)
            except httpx.HTTPError as exc:
                return {"available": False, "reason": "error", "detail": f"{type(exc).__name__}: {exc}"[:300]}
            if resp.status_code in (404, 405, 501):
                return {"available": False, "reason": "no_endpoint"}
            try:
                nats = float(resp.json()["ppl"])
            except (ValueError, KeyError, TypeError):
                nats = math.nan
            if resp.status_code != 200 or not math.isfinite(nats):
                return {"available": False, "reason": "error",
                        "detail": f"HTTP {resp.status_code}: {resp.text[:200]}"}
            scored = max(len(ids[number]) - 1, 1) if ids else len(piece)
            total += nats * scored
            weight += scored
    if not weight:
        return {"available": False, "reason": "no_text"}
    nats = total / weight
    return {"available": True, "nats": nats, "perplexity": math.exp(min(nats, 700.0)), "chars": len(text),
            "pieces": len(pieces), "weighted_by": "tokens" if ids else "characters", "tokens": weight if ids else None}


def _encode(client: httpx.Client, base_url: str, pieces: list[str]) -> list[list[int]] | None:
    """Each piece's token ids from LMDeploy's `/v1/encode` (as /get_ppl would tokenize it), None without it."""
    try:
        resp = client.post(base_url + "/v1/encode", json={"input": pieces, "add_bos": True})
        ids = resp.json().get("input_ids") if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if not isinstance(ids, list) or len(ids) != len(pieces) or not all(isinstance(i, list) for i in ids):
        return None
    return ids


def _memory_pair(config: dict[str, Any], base: dict[str, Any]) -> tuple[float | None, float | None]:
    """What each configuration's own server held at its peak where both are known, else the whole GPU's use."""
    if config.get("peak_server_bytes") and base.get("peak_server_bytes"):
        return config["peak_server_bytes"], base["peak_server_bytes"]
    return config.get("peak_gpu_bytes"), base.get("peak_gpu_bytes")


def _top_level(config: dict[str, Any]) -> dict[str, Any] | None:
    levels = [lv for lv in config.get("levels") or [] if lv.get("output_tps")]
    return max(levels, key=lambda lv: lv["concurrency"]) if levels else None


def _pct(value: float | None, base: float | None) -> float | None:
    if value is None or base in (None, 0):
        return None
    return round((value / base - 1.0) * 100.0, 2)


def deltas(configs: list[dict[str, Any]], baseline: int) -> list[dict[str, Any]]:
    """Each configuration against the baseline: ratios and % changes the verdict and the table use."""
    if not configs or not 0 <= baseline < len(configs):
        return []
    base = configs[baseline]
    base_top = _top_level(base)
    base_ppl = (base.get("perplexity") or {}).get("perplexity")
    out = []
    for config in configs:
        top = _top_level(config)
        same_level = None
        if top and base_top:
            same_level = next((lv for lv in config.get("levels") or [] if lv["concurrency"] ==
                               base_top["concurrency"]), None)
        ppl = (config.get("perplexity") or {}).get("perplexity")
        tokens, base_tokens = config.get("kv_tokens"), base.get("kv_tokens")
        out.append({
            "index": config.get("index"),
            "kv_tokens_ratio": round(tokens / base_tokens, 3) if tokens and base_tokens else None,
            "peak_gpu_pct": _pct(*_memory_pair(config, base)),
            "perplexity_pct": _pct(ppl, base_ppl),
            "concurrency": base_top["concurrency"] if base_top else None,
            "output_tps_pct": _pct(same_level.get("output_tps") if same_level else None,
                                   base_top.get("output_tps") if base_top else None),
            "ttft_p50_pct": _pct(same_level.get("ttft_p50_ms") if same_level else None,
                                 base_top.get("ttft_p50_ms") if base_top else None),
        })
    return out


CSV_COLUMNS = ("label", "status", "model_path", "backend", "kv_policy", "cache_max_entry_count", "concurrency",
               "requests", "ok", "errors", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms", "output_tps",
               "rps", "gpu_blocks", "kv_tokens", "peak_gpu_bytes", "peak_kv_usage", "perplexity", "command")


def result_csv(configs: list[dict[str, Any]]) -> str:
    """One row per configuration and concurrency level (a configuration without levels gets one row)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for config in configs:
        common = {k: config.get(k) for k in CSV_COLUMNS}
        common["perplexity"] = (config.get("perplexity") or {}).get("perplexity")
        common["command"] = " ".join(str(config.get("command") or "").replace("\\\n", " ").split())
        for level in config.get("levels") or [{}]:
            writer.writerow({**common, **{k: v for k, v in level.items() if k in CSV_COLUMNS}})
    return buffer.getvalue()
