"""The api_server lifecycle: start, watch (log phases + GET /health), stop, restart, attach, re-attach.

Long work belongs here, not to a browser page: a monitor thread moves each server through its states, and
the UI only reads snapshots, so a reload (or a console restart) shows the truth.
"""

from __future__ import annotations

import dataclasses
import enum
import http.client
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from webui.services.gpu import GpuProbe
from webui.services.models import ModelRoots
from webui.services.processes import ProcessHandle, ProcessSupervisor
from webui.services.serve_log import PHASES, Hint, find_hint, read_startup, tail
from webui.services.serve_spec import (
    CheckedSpec,
    FieldError,
    ServerSpec,
    build_argv,
    check_spec,
    command_preview,
    suggest_port,
)
from webui.services.store import ServerRecord, Store
from webui.services.watcher import Watcher, wait_for_state

ACTIVE_PREF = "serve.active_server"
HOSTNAME = re.compile(r"[A-Za-z0-9.\-]+|[0-9A-Fa-f:]+")
HEALTH_POLL_S = 0.1
READY_RECHECK_S = 2.0
ATTACHED_RECHECK_S = 2.0


class ServerState(str, enum.Enum):
    """Where a server is in its life; ATTACHED servers (not started here) are only READY or UNREACHABLE."""

    STARTING = "STARTING"
    READY = "READY"
    UNREACHABLE = "UNREACHABLE"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    LOST = "LOST"


LIVE_STATES = frozenset({ServerState.STARTING, ServerState.READY, ServerState.UNREACHABLE, ServerState.STOPPING})


@dataclass(frozen=True)
class ServerSnapshot:
    """Read model of one server for the UI and the scripting API (API keys never included)."""

    id: str
    owned: bool
    state: str
    phase: str
    progress: float
    model_path: str
    model_id: str
    base_url: str
    port: int
    backend: str
    kv_policy: str
    cache_max_entry_count: float
    tp: int
    tool_call_parser: str
    created_at: float
    started_at: float | None
    ready_at: float | None
    ended_at: float | None
    ready_seconds: float | None
    uptime_seconds: float | None
    exit_code: int | None
    hint: str
    hint_line: str
    detail: str
    active: bool
    pid: int | None
    command: str
    gpu_blocks: int | None
    has_api_key: bool

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StartOutcome:
    """Either the new server's snapshot or the field errors that stopped it (then nothing was spawned)."""

    server: ServerSnapshot | None
    errors: tuple[FieldError, ...] = ()


ArgvFactory = Callable[[CheckedSpec], list[str]]


class ServerManager:
    """Owns every api_server of this console; app-scoped (one GPU box), shared by all browser sessions."""

    def __init__(
        self,
        store: Store,
        supervisor: ProcessSupervisor,
        roots: ModelRoots,
        gpu: GpuProbe,
        log_dir: Path,
        python: str,
        argv_factory: ArgvFactory | None = None,
        stop_grace_s: float = 5.0,
    ) -> None:
        self._store = store
        self._supervisor = supervisor
        self._roots = roots
        self._gpu = gpu
        self._log_dir = log_dir
        self._python = python
        self._argv_factory = argv_factory or (lambda checked: build_argv(checked, python))
        self._stop_grace_s = stop_grace_s
        self._lock = threading.RLock()
        self._last_check: dict[str, float] = {}
        self._reattach()
        self._watcher = Watcher("server_monitor", self._tick, HEALTH_POLL_S, store)

    # queries -------------------------------------------------------------------------------------
    def gpu_count(self) -> int | None:
        return self._gpu.device_count()

    def default_spec(self) -> ServerSpec:
        return ServerSpec(model_path="", port=self.suggest_port())

    def suggest_port(self) -> int:
        return suggest_port(taken=self._claimed_ports())

    def check(self, spec: ServerSpec, exclude: str | None = None) -> CheckedSpec | list[FieldError]:
        return check_spec(spec, self._roots, self.gpu_count(), self._claimed_ports(exclude))

    def preview(self, spec: ServerSpec) -> str:
        resolved = self._roots.resolve(spec.model_path)
        return command_preview(spec, str(resolved) if isinstance(resolved, Path) else None)

    def list(self) -> list[ServerSnapshot]:
        active = self._store.get_pref(ACTIVE_PREF)
        return [self._snapshot(r, active) for r in self._store.list_servers()]

    def get(self, server_id: str) -> ServerSnapshot | None:
        record = self._store.get_server(server_id)
        return self._snapshot(record, self._store.get_pref(ACTIVE_PREF)) if record else None

    def active(self) -> ServerSnapshot | None:
        active_id = self._store.get_pref(ACTIVE_PREF)
        return self.get(active_id) if active_id else None

    def api_key(self, server_id: str) -> str:
        """The first API key of a server, for clients of this console only (never in a snapshot or a log)."""
        record = self._require(server_id)
        keys = record.spec.get("api_keys") or []
        return str(keys[0]) if keys else ""

    def log(self, server_id: str, max_lines: int = 200) -> list[str]:
        record = self._store.get_server(server_id)
        if record is None or not record.log_path:
            return []
        return tail(record.log_path, max_lines=max_lines)

    # actions -------------------------------------------------------------------------------------
    def start(self, spec: ServerSpec) -> StartOutcome:
        """Check, then spawn. Field errors come back with nothing spawned."""
        with self._lock:
            checked = self.check(spec)
            if isinstance(checked, list):
                return StartOutcome(None, tuple(checked))
            server_id = uuid.uuid4().hex[:8]
            now = time.time()
            record = ServerRecord(
                id=server_id,
                owned=True,
                spec_json=json.dumps(spec.to_json_dict()),
                state=ServerState.STARTING.value,
                base_url=spec.base_url,
                created_at=now,
                phase=PHASES[0].key,
            )
            self._store.insert_server(record)
            self._spawn(server_id, checked)
            if not self._store.get_pref(ACTIVE_PREF):
                self._store.set_pref(ACTIVE_PREF, server_id)
        self._watcher.wake()
        return StartOutcome(self.get(server_id))

    def restart(self, server_id: str, tool_call_parser: str | None = None) -> StartOutcome:
        """Stop if running, then start the same spec under the same id (its history stays in events).

        `tool_call_parser` changes that one option on the way (the Tools tab's "restart with a parser").
        """
        record = self._require(server_id)
        if not record.owned:
            raise ValueError("an attached server is observed, not owned: it cannot be restarted here")
        spec = ServerSpec.from_json_dict(record.spec)
        if tool_call_parser is not None:
            spec = dataclasses.replace(spec, tool_call_parser=tool_call_parser)
        self.stop(server_id)
        with self._lock:
            checked = self.check(spec, exclude=server_id)
            if isinstance(checked, list):
                return StartOutcome(self.get(server_id), tuple(checked))
            if spec.to_json_dict() != record.spec:
                self._store.update_server(server_id, spec_json=json.dumps(spec.to_json_dict()))
                self._store.add_event(server_id, "spec_changed", f"tool_call_parser={spec.tool_call_parser}")
            self._spawn(server_id, checked)
        self._watcher.wake()
        return StartOutcome(self.get(server_id))

    def stop(self, server_id: str) -> ServerSnapshot:
        """Stop the whole process tree; wait until its GPU memory is released where NVML can see it."""
        record = self._require(server_id)
        if not record.owned:
            self._store.update_server(server_id, state=ServerState.STOPPED.value, ended_at=time.time())
            self._store.add_event(server_id, "detached")
            return self._require_snapshot(server_id)
        if ServerState(record.state) not in LIVE_STATES or record.pid is None:
            return self._require_snapshot(server_id)
        handle = ProcessHandle(record.pid, record.create_time or 0.0, record.log_path)
        with self._lock:
            self._store.update_server(server_id, state=ServerState.STOPPING.value)
        tree_pids = {p.pid for p in self._supervisor.tree(handle)}
        report = self._supervisor.stop(handle, grace_s=self._stop_grace_s)
        released_s = self._wait_memory_released(tree_pids | set(report.pids))
        detail = f"stopped in {report.seconds:.2f} s" + (" (killed)" if report.killed else "")
        if released_s is not None:
            detail += f"; GPU memory released after {released_s:.2f} s"
        with self._lock:
            self._store.update_server(
                server_id,
                state=ServerState.STOPPED.value,
                ended_at=time.time(),
                exit_code=self._supervisor.exit_code(handle),
                detail=detail,
            )
            self._store.add_event(server_id, "stopped", detail)
        return self._require_snapshot(server_id)

    def attach(self, base_url: str, api_key: str = "") -> ServerSnapshot:
        """Observe an api_server started elsewhere; it is polled, never signalled."""
        url = normalize_base_url(base_url)
        server_id = uuid.uuid4().hex[:8]
        spec = ServerSpec(model_path="", port=urlsplit(url).port or 80, api_keys=(api_key,) if api_key else ())
        record = ServerRecord(
            id=server_id,
            owned=False,
            spec_json=json.dumps(spec.to_json_dict()),
            state=ServerState.UNREACHABLE.value,
            base_url=url,
            created_at=time.time(),
            started_at=time.time(),
        )
        self._store.insert_server(record)
        self._store.add_event(server_id, "attached", url)
        self._check_attached(record)
        if not self._store.get_pref(ACTIVE_PREF):
            self._store.set_pref(ACTIVE_PREF, server_id)
        return self._require_snapshot(server_id)

    def set_active(self, server_id: str) -> ServerSnapshot:
        self._require(server_id)
        self._store.set_pref(ACTIVE_PREF, server_id)
        return self._require_snapshot(server_id)

    def forget(self, server_id: str) -> None:
        """Remove a server that is no longer running from the list."""
        record = self._require(server_id)
        if record.owned and ServerState(record.state) in LIVE_STATES:
            raise ValueError("stop the server before removing it")
        self._store.delete_server(server_id)
        if self._store.get_pref(ACTIVE_PREF) == server_id:
            self._store.set_pref(ACTIVE_PREF, "")

    def shutdown(self, keep_running: bool = False) -> None:
        """Console exit: stop owned servers unless asked to keep them; they are re-attached next start."""
        self._watcher.stop()
        if keep_running:
            return
        for record in self._store.list_servers():
            if record.owned and not record.keep_running and ServerState(record.state) in LIVE_STATES:
                self.stop(record.id)

    def wait_for(self, server_id: str, states: set[str], timeout_s: float) -> ServerSnapshot:
        """Block until the server reaches one of `states` (used by scripts and benchmarks)."""
        return wait_for_state(lambda: self._require_snapshot(server_id), states, timeout_s)

    # internals -----------------------------------------------------------------------------------
    def _spawn(self, server_id: str, checked: CheckedSpec) -> None:
        log_path = self._log_dir / f"server-{server_id}.log"
        argv = self._argv_factory(checked)
        handle = self._supervisor.spawn(argv, log_path)
        now = time.time()
        self._store.update_server(
            server_id,
            state=ServerState.STARTING.value,
            phase=PHASES[0].key,
            pid=handle.pid,
            create_time=handle.create_time,
            log_path=str(log_path),
            base_url=checked.spec.base_url,
            model_id=checked.spec.model_name or str(checked.model_dir),
            started_at=now,
            ready_at=None,
            ended_at=None,
            exit_code=None,
            hint="",
            detail="",
            gpu_blocks=None,
        )
        self._store.add_event(server_id, "start", command_preview(checked.spec, str(checked.model_dir)))

    def _claimed_ports(self, exclude: str | None = None) -> set[int]:
        return {
            int(r.spec.get("port", 0))
            for r in self._store.list_servers()
            if r.owned and r.id != exclude and ServerState(r.state) in LIVE_STATES
        }

    def _reattach(self) -> None:
        """On console start: live servers it started are watched again; dead ones are marked LOST."""
        for record in self._store.list_servers():
            state = ServerState(record.state)
            if not record.owned or state not in LIVE_STATES:
                continue
            handle = ProcessHandle(record.pid or -1, record.create_time or 0.0, record.log_path)
            if record.pid is not None and self._supervisor.is_alive(handle):
                self._store.update_server(record.id, state=ServerState.STARTING.value if state != ServerState.READY
                                          else ServerState.READY.value)
                self._store.add_event(record.id, "reattached", f"pid {record.pid}")
            else:
                self._store.update_server(
                    record.id, state=ServerState.LOST.value, ended_at=time.time(),
                    detail="the process was gone when the console started again",
                )
                self._store.add_event(record.id, "lost")

    def _tick(self) -> None:
        now = time.monotonic()
        for record in self._store.list_servers():
            state = ServerState(record.state)
            if state not in LIVE_STATES or state == ServerState.STOPPING:
                continue
            if not record.owned:
                if now - self._last_check.get(record.id, 0.0) >= ATTACHED_RECHECK_S:
                    self._check_attached(record)
                continue
            self._check_owned(record, state, now)

    def _check_owned(self, record: ServerRecord, state: ServerState, now: float) -> None:
        handle = ProcessHandle(record.pid or -1, record.create_time or 0.0, record.log_path)
        if not self._supervisor.is_alive(handle):
            with self._lock:
                current = self._store.get_server(record.id)
                if current is None or ServerState(current.state) not in (ServerState.STARTING, ServerState.READY):
                    return  # a stop is under way or done: not a failure
                lines = tail(record.log_path, max_lines=400)
                hint = find_hint(lines)
                code = self._supervisor.exit_code(handle)
                self._store.update_server(
                    record.id,
                    state=ServerState.FAILED.value,
                    ended_at=time.time(),
                    exit_code=code,
                    hint=_hint_json(hint),
                    detail="the process exited" + (f" with code {code}" if code is not None else ""),
                )
                self._store.add_event(record.id, "failed", hint.key if hint else f"exit {code}")
            return
        if state == ServerState.STARTING:
            status = _health(record.base_url)
            if status == 200:
                self._mark_ready(record)
                return
            reading = read_startup(tail(record.log_path, max_lines=400))
            if reading.phase != record.phase or reading.gpu_blocks != record.gpu_blocks:
                self._store.update_server(record.id, phase=reading.phase, gpu_blocks=reading.gpu_blocks)
        elif now - self._last_check.get(record.id, 0.0) >= READY_RECHECK_S:
            self._last_check[record.id] = now
            status = _health(record.base_url)
            detail = "" if status == 200 else f"/health answered {status or 'nothing'}"
            if detail != record.detail:
                self._store.update_server(record.id, detail=detail)

    def _mark_ready(self, record: ServerRecord) -> None:
        ready_at = time.time()
        key = record.spec.get("api_keys") or []
        model_id = _first_model_id(record.base_url, key[0] if key else "") or record.model_id
        with self._lock:
            current = self._store.get_server(record.id)
            if current is None or current.state != ServerState.STARTING.value:
                return
            self._store.update_server(
                record.id, state=ServerState.READY.value, phase="ready", ready_at=ready_at, model_id=model_id
            )
            took = ready_at - (record.started_at or ready_at)
            self._store.add_event(record.id, "ready", f"{took:.1f} s", at=ready_at)

    def _check_attached(self, record: ServerRecord) -> None:
        self._last_check[record.id] = time.monotonic()
        status = _health(record.base_url)
        keys = record.spec.get("api_keys") or []
        if status == 200:
            model_id = _first_model_id(record.base_url, keys[0] if keys else "") or record.model_id
            changes = {"state": ServerState.READY.value, "model_id": model_id, "detail": ""}
            if record.ready_at is None:
                changes["ready_at"] = time.time()
        else:
            changes = {"state": ServerState.UNREACHABLE.value, "detail": f"/health answered {status or 'nothing'}"}
        if any(getattr(record, k) != v for k, v in changes.items()):
            self._store.update_server(record.id, **changes)

    def _wait_memory_released(self, pids: set[int], timeout_s: float = 10.0) -> float | None:
        if not self._gpu.available or not pids:
            return None
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self._gpu.memory_of(pids) == 0:
                return time.monotonic() - start
            time.sleep(0.05)
        return None

    def _require(self, server_id: str) -> ServerRecord:
        record = self._store.get_server(server_id)
        if record is None:
            raise KeyError(f"no server with id {server_id!r}")
        return record

    def _require_snapshot(self, server_id: str) -> ServerSnapshot:
        snap = self.get(server_id)
        if snap is None:
            raise KeyError(f"no server with id {server_id!r}")
        return snap

    def _snapshot(self, record: ServerRecord, active_id: str) -> ServerSnapshot:
        spec = ServerSpec.from_json_dict(record.spec)
        state = ServerState(record.state)
        progress = 1.0 if state == ServerState.READY else next(
            (p.progress for p in PHASES if p.key == record.phase), 0.0
        )
        end = record.ended_at if state not in LIVE_STATES else time.time()
        hint = json.loads(record.hint) if record.hint else {}
        return ServerSnapshot(
            id=record.id,
            owned=record.owned,
            state=record.state,
            phase=record.phase,
            progress=progress,
            model_path=spec.model_path,
            model_id=record.model_id,
            base_url=record.base_url,
            port=spec.port,
            backend=spec.backend if record.owned else "",
            kv_policy=spec.kv_policy if record.owned else "",
            cache_max_entry_count=spec.cache_max_entry_count,
            tp=spec.tp,
            tool_call_parser=spec.tool_call_parser,
            created_at=record.created_at,
            started_at=record.started_at,
            ready_at=record.ready_at,
            ended_at=record.ended_at,
            ready_seconds=(record.ready_at - record.started_at) if record.ready_at and record.started_at else None,
            uptime_seconds=(end - record.started_at) if record.started_at and end else None,
            exit_code=record.exit_code,
            hint=hint.get("key", ""),
            hint_line=hint.get("line", ""),
            detail=record.detail,
            active=record.id == active_id,
            pid=record.pid,
            command=command_preview(spec) if record.owned else "",
            gpu_blocks=record.gpu_blocks,
            has_api_key=bool(spec.api_keys),
        )


def normalize_base_url(raw: str) -> str:
    """`host:port`, `http://host:port/` or `…/v1` all mean the same server root."""
    text = (raw or "").strip()
    if not text:
        raise ValueError("empty URL")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or not HOSTNAME.fullmatch(parts.hostname):
        raise ValueError(f"not an http(s) URL: {raw!r}")
    _ = parts.port  # raises ValueError for a port that is not a number in range
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}"


def _hint_json(hint: Hint | None) -> str:
    return json.dumps({"key": hint.key, "line": hint.line}) if hint else ""


def _request(base_url: str, path: str, api_key: str = "", timeout: float = 1.0) -> tuple[int, bytes]:
    parts = urlsplit(base_url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        conn.request("GET", parts.path.rstrip("/") + path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(1_000_000)
    finally:
        conn.close()


def _health(base_url: str) -> int | None:
    """HTTP status of GET /health (200 ready, 503 initializing), or None when nothing answers."""
    try:
        return _request(base_url, "/health", timeout=1.0)[0]
    except (OSError, http.client.HTTPException):
        return None


def _first_model_id(base_url: str, api_key: str) -> str:
    try:
        status, body = _request(base_url, "/v1/models", api_key, timeout=2.0)
        if status != 200:
            return ""
        data = json.loads(body).get("data") or []
        return str(data[0].get("id", "")) if data else ""
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return ""

