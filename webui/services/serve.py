"""The api_server lifecycle: start, watch (log phases + GET /health), stop, restart, attach, re-attach.

Long work belongs here, not to a browser page: a monitor thread moves each server through its states, and
the UI only reads snapshots, so a reload (or a console restart) shows the truth.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from webui.services.gpu import GpuProbe
from webui.services.lifecycle import Monitor, SpawnFailure, handle_of, observe_process, spawn_safely, wait_for_state
from webui.services.models import ModelRoots
from webui.services.placement import UsableGpus, ray_importable, resolve_executor
from webui.services.processes import ProcessSupervisor, StopTicket
from webui.services.secrets import SecretStore
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
from webui.services.server_states import LIVE_STATES, ServerFacts, ServerState, decide_server, is_live
from webui.services.store import ServerRecord, Store, json_object

__all__ = ("LIVE_STATES", "ServerManager", "ServerSnapshot", "ServerState", "StartOutcome", "normalize_base_url")

log = logging.getLogger(__name__)

ACTIVE_PREF = "serve.active_server"
HOSTNAME = re.compile(r"[A-Za-z0-9.\-]+|[0-9A-Fa-f:]+")
HEALTH_POLL_S = 0.1
READY_RECHECK_S = 2.0
ATTACHED_RECHECK_S = 2.0
LEADER_FIRST_S = 3.0  # of the 5 s stop grace: a tp > 1 server's leader alone, before its workers get SIGTERM too
CONTROL_TIMEOUT_S = 60.0  # a sleep offloads, a wake reloads: seconds for a large model
RELEASE_MARGIN_BYTES = 256 << 20  # "back where it was" for a GPU: within 256 MiB of the reading before start
RELEASE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServerSnapshot:
    """Read model of one server for the UI and the scripting API (API keys never included).

    `detail` is a catalog key (or "") and `detail_params` its values: the UI words them in the page's language.
    """

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
    detail_params: dict[str, str]
    active: bool
    pid: int | None
    command: str
    gpu_blocks: int | None
    has_api_key: bool
    gpus: tuple[int, ...] = ()  # () = every GPU visible
    executor: str = "auto"

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StartOutcome:
    """Either the new server's snapshot or the field errors that stopped it (then nothing was spawned)."""

    server: ServerSnapshot | None
    errors: tuple[FieldError, ...] = ()


@dataclass(frozen=True)
class ControlOutcome:
    """A sleep or wake: the server as it is now, and the catalog key and values of what refused it (or "")."""

    server: ServerSnapshot
    error: str = ""
    params: dict[str, object] = dataclasses.field(default_factory=dict)
    seconds: float | None = None


@dataclass
class _Stopping:
    """A stop under way: the ticket, when it was asked for, and what to start after it (a restart)."""

    ticket: StopTicket
    requested_at: float
    then_start: CheckedSpec | None = None


@dataclass
class _ReleaseWatch:
    """After a stop: the pids to see gone, and for each GPU the used bytes it must be back under."""

    pids: frozenset[int]
    limits: dict[int, int]  # GPU index -> bytes
    since: float


ArgvFactory = Callable[[CheckedSpec], list[str]]


def _detail(key: str, **params: object) -> str:
    """A detail is stored as a catalog key and its values, never as an English sentence."""
    return json.dumps({"key": key, "params": {k: str(v) for k, v in params.items()}})


def _read_detail(raw: str) -> tuple[str, dict[str, str]]:
    if not raw:
        return "", {}
    try:
        data = json.loads(raw)
        return str(data["key"]), {str(k): str(v) for k, v in dict(data.get("params") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return "serve.detail.text", {"text": raw[:500]}  # rows written before details were keys


class ServerManager:
    """Owns every api_server of this console; app-scoped (one GPU box), shared by all browser sessions.

    No public method waits on a process: start spawns and returns, stop and restart signal and return, and
    the monitor thread turns what it observes into state changes through `decide_server`.
    """

    def __init__(
        self,
        store: Store,
        supervisor: ProcessSupervisor,
        roots: ModelRoots,
        gpu: GpuProbe,
        log_dir: Path,
        python: str,
        secrets: SecretStore,
        argv_factory: ArgvFactory | None = None,
        stop_grace_s: float = 5.0,
        child_env: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._store = store
        self._supervisor = supervisor
        self._roots = roots
        self._gpu = gpu
        self._log_dir = log_dir
        self._python = python
        self._secrets = secrets
        self._argv_factory = argv_factory or (lambda checked: build_argv(checked, python, self.ray_ok(checked.spec)))
        self._stop_grace_s = stop_grace_s
        self._child_env = child_env or dict
        self._lock = threading.RLock()
        self._last_check: dict[str, float] = {}
        self._stopping: dict[str, _Stopping] = {}
        self._releases: dict[str, _ReleaseWatch] = {}
        self._closing = False  # set by shutdown: nothing new is spawned once the console is on its way out
        self._ray: bool | None = None  # whether ray imports in LMDeploy's interpreter, asked once when needed
        self._other_ports: Callable[[], set[int]] = set
        self._move_keys_out_of_the_database()
        self._reattach()
        self._monitor: Monitor[ServerRecord] = Monitor(
            "server_monitor", self._store.list_servers, self._check, lambda r: r.id, HEALTH_POLL_S, store,
            after=self._check_releases,
        )

    # queries -------------------------------------------------------------------------------------
    def usable_gpus(self) -> UsableGpus:
        """The GPUs a server may be placed on (inside the console's own CUDA_VISIBLE_DEVICES, if it has one)."""
        return self._gpu.usable()

    def default_spec(self) -> ServerSpec:
        return ServerSpec(model_path="", port=self.suggest_port())

    def suggest_port(self) -> int:
        return suggest_port(taken=self._claimed_ports())

    def check(self, spec: ServerSpec, exclude: str | None = None) -> CheckedSpec | list[FieldError]:
        own_port = None
        if exclude is not None and (record := self._store.get_server(exclude)) is not None:
            own_port = int(record.spec.get("port", 0))
        return check_spec(spec, self._roots, self.usable_gpus(), self._claimed_ports(exclude), own_port=own_port)

    def preview(self, spec: ServerSpec) -> str:
        resolved = self._roots.resolve(spec.model_path)
        return command_preview(spec, str(resolved) if isinstance(resolved, Path) else None, self.ray_ok(spec),
                               self.usable_gpus())

    def ray_ok(self, spec: ServerSpec | None = None) -> bool | None:
        """Whether `ray` imports where LMDeploy runs (asked once, and only for a spec whose executor depends on
        it: PyTorch, tp > 1, executor auto); None when not asked or unknown."""
        if spec is not None and not (spec.backend == "pytorch" and spec.tp > 1 and spec.executor == "auto"):
            return None
        if self._ray is None:
            self._ray = ray_importable(self._python)  # None (the interpreter did not answer): asked again next time
        return self._ray

    def executor_note(self, spec: ServerSpec) -> str:
        """Catalog key of what `auto` did for this spec ("" when nothing is worth saying)."""
        return resolve_executor(spec.executor, spec.tp, spec.backend, self.ray_ok(spec))[1]

    def snapshots(self) -> list[ServerSnapshot]:
        """Every server the console knows; a row it cannot read (written by a newer version?) is left out."""
        active = self._store.get_pref(ACTIVE_PREF)
        snapshots = []
        for record in self._store.list_servers():
            try:
                snapshots.append(self._snapshot(record, active))
            except (ValueError, KeyError, TypeError):
                log.warning("server row %s cannot be read; it is left out of the list", record.id, exc_info=True)
        return snapshots

    def get(self, server_id: str) -> ServerSnapshot | None:
        record = self._store.get_server(server_id)
        return self._snapshot(record, self._store.get_pref(ACTIVE_PREF)) if record else None

    def active(self) -> ServerSnapshot | None:
        active_id = self._store.get_pref(ACTIVE_PREF)
        return self.get(active_id) if active_id else None

    def api_key(self, server_id: str) -> str:
        """The first API key of a server, for clients of this console only (never in a snapshot or a log)."""
        self._require(server_id)
        keys = self._keys(server_id)
        return keys[0] if keys else ""

    def log(self, server_id: str, max_lines: int = 200) -> list[str]:
        record = self._store.get_server(server_id)
        if record is None or not record.log_path:
            return []
        return tail(record.log_path, max_lines=max_lines)

    # actions -------------------------------------------------------------------------------------
    def start(self, spec: ServerSpec) -> StartOutcome:
        """Check, then spawn. Field errors come back with nothing spawned or stored."""
        self.ray_ok(spec)  # asked before the lock (a child process, once): the argv built under it reads the answer
        with self._lock:
            if self._closing:
                return StartOutcome(None, (FieldError("model_path", "errors.console_closing", {}),))
            checked = self.check(spec)
            if isinstance(checked, list):
                return StartOutcome(None, tuple(checked))
            server_id = uuid.uuid4().hex[:8]
            # A repo id is kept as the folder it named: the shown command and a restart use what really ran,
            # never a name that lmdeploy would try to download.
            spec = dataclasses.replace(spec, model_path=str(checked.model_dir))
            record = ServerRecord(
                id=server_id,
                owned=True,
                spec_json=self._spec_json(server_id, spec),
                state=ServerState.STARTING.value,
                base_url=spec.base_url,
                created_at=time.time(),
                phase=PHASES[0].key,
            )
            self._store.insert_server(record)
            self._spawn(server_id, checked)
            if not self._store.get_pref(ACTIVE_PREF):
                self._store.set_pref(ACTIVE_PREF, server_id)
        self._monitor.wake()
        return StartOutcome(self.get(server_id))

    def restart(self, server_id: str, tool_call_parser: str | None = None) -> StartOutcome:
        """Start the same spec again under the same id (its history stays in events); returns at once.

        A running server is signalled to stop and the new one starts when the old one is gone.
        `tool_call_parser` changes that one option on the way (the Tools tab's "restart with a parser").
        """
        record = self._require(server_id)
        if not record.owned:
            raise ValueError("an attached server is observed, not owned: it cannot be restarted here")
        spec = self._spec_of(record)
        if tool_call_parser is not None:
            spec = dataclasses.replace(spec, tool_call_parser=tool_call_parser)
        with self._lock:
            if self._closing:
                return StartOutcome(self.get(server_id), (FieldError("model_path", "errors.console_closing", {}),))
            checked = self.check(spec, exclude=server_id)
            if isinstance(checked, list):
                return StartOutcome(self.get(server_id), tuple(checked))
            if spec.tool_call_parser != str(record.spec.get("tool_call_parser", "")):
                self._store.update_server(server_id, spec_json=self._spec_json(server_id, spec))
                self._store.add_event(server_id, "spec_changed", f"tool_call_parser={spec.tool_call_parser}")
            record = self._require(server_id)
            if server_id in self._stopping:
                self._stopping[server_id].then_start = checked
            elif is_live(record.state) and self._supervisor.is_alive(self._handle(record)):
                self._request_stop(record, then_start=checked)
            else:
                self._spawn(server_id, checked)
        self._monitor.wake()
        return StartOutcome(self.get(server_id))

    def stop(self, server_id: str) -> ServerSnapshot:
        """Signal the whole process tree and return (STOPPING); the monitor marks it STOPPED when it is gone,
        and records "memory_released" once fresh NVML reads show its GPU memory back."""
        with self._lock:
            record = self._require(server_id)
            stopping_now = record.state == ServerState.STOPPING.value
            if not record.owned:
                if record.state != ServerState.STOPPED.value:
                    self._store.update_server(server_id, state=ServerState.STOPPED.value, ended_at=time.time())
                    self._store.add_event(server_id, "detached")
            elif is_live(record.state) and not stopping_now:
                facts = observe_process(self._supervisor, self._handle(record))
                if facts.alive:
                    self._request_stop(record)
                else:  # nothing to signal (it died a moment ago, or never started): say how it ended
                    self._settle(record, ServerFacts(alive=False), facts.exit_code)
            elif stopping_now and server_id in self._stopping:
                self._stopping[server_id].then_start = None  # a stop during a restart cancels the restart
        self._monitor.wake()
        return self._require_snapshot(server_id)

    def sleep(self, server_id: str, level: int = 1) -> ControlOutcome:
        """Free a READY server's KV cache with LMDeploy's `POST /sleep` (level 2 also drops the weights): it keeps
        its process and port, refuses chat with 503, and is SLEEPING until woken. Returns at the engine's answer
        (0.09 s for the tiny model on an H200)."""
        return self._control(server_id, ServerState.READY, f"/sleep?level={level}", ServerState.SLEEPING, "slept")

    def wake(self, server_id: str) -> ControlOutcome:
        """Give a SLEEPING server its memory back (`POST /wakeup`): READY again, with the same KV pool."""
        return self._control(server_id, ServerState.SLEEPING, "/wakeup", ServerState.READY, "woke")

    def _control(self, server_id: str, needs: ServerState, path: str, to: ServerState, event: str) -> ControlOutcome:
        record = self._require(server_id)
        if record.state != needs.value:
            return ControlOutcome(self._require_snapshot(server_id), "errors.server_state",
                                  {"id": server_id, "state": record.state, "needs": needs.value})
        keys = self._keys(server_id)
        started = time.monotonic()
        try:
            status, body = _request(record.base_url, path, keys[0] if keys else "", timeout=CONTROL_TIMEOUT_S,
                                    method="POST")
        except (OSError, http.client.HTTPException) as exc:
            return ControlOutcome(self._require_snapshot(server_id), "errors.server_control",
                                  {"id": server_id, "status": "-", "detail": str(exc)[:200]})
        if status != 200:  # 404: not an LMDeploy server (or a version without sleep); 401: its key
            return ControlOutcome(self._require_snapshot(server_id), "errors.server_control",
                                  {"id": server_id, "status": status, "detail": body[:200].decode("utf-8", "replace")})
        took = time.monotonic() - started
        with self._lock:
            current = self._require(server_id)
            if current.state == needs.value:  # a stop that came meanwhile wins
                self._store.update_server(server_id, state=to.value)
                self._store.add_event(server_id, event, f"{took:.2f} s")
        return ControlOutcome(self._require_snapshot(server_id), seconds=took)

    def attach(self, base_url: str, api_key: str = "") -> ServerSnapshot:
        """Observe an api_server started elsewhere; it is polled, never signalled."""
        url = normalize_base_url(base_url)
        server_id = uuid.uuid4().hex[:8]
        spec = ServerSpec(model_path="", port=urlsplit(url).port or 80)
        if api_key:
            self._secrets.set(_key_name(server_id), [api_key])
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
        self._check(record)
        if not self._store.get_pref(ACTIVE_PREF):
            self._store.set_pref(ACTIVE_PREF, server_id)
        return self._require_snapshot(server_id)

    def set_active(self, server_id: str) -> ServerSnapshot:
        self._require(server_id)
        self._store.set_pref(ACTIVE_PREF, server_id)
        return self._require_snapshot(server_id)

    def forget(self, server_id: str) -> None:
        """Remove a server that is no longer running from the list (and its keys from the secrets file)."""
        with self._lock:
            record = self._require(server_id)
            if record.owned and is_live(record.state):
                raise ValueError("stop the server before removing it")
            self._store.delete_server(server_id)
            self._secrets.delete(_key_name(server_id))
            self._store.delete_pref(_baseline_name(server_id))
            if self._store.get_pref(ACTIVE_PREF) == server_id:
                self._store.set_pref(ACTIVE_PREF, "")

    def shutdown(self, keep_running: bool = False) -> None:
        """Console exit: stop owned servers unless asked to keep them, all at once, and wait for them."""
        with self._lock:
            self._closing = True
        self._monitor.stop()
        if not keep_running:
            with self._lock:
                for record in self._store.list_servers():
                    if (record.owned and not record.keep_running and is_live(record.state)
                            and record.id not in self._stopping):
                        self._request_stop(record)
            for stopping in list(self._stopping.values()):
                stopping.then_start = None
            for stopping in list(self._stopping.values()):
                stopping.ticket.wait(self._stop_grace_s + 6.0)
            for record in self._store.list_servers():
                if record.id in self._stopping:
                    self._check(record)

    def wait_for(self, server_id: str, states: set[str], timeout_s: float) -> ServerSnapshot:
        """Block until the server reaches one of `states` (for scripts, benchmarks and tests, never the UI)."""
        return wait_for_state(lambda: self._require_snapshot(server_id), states, timeout_s)

    def wait_for_event(self, server_id: str, kinds: set[str], timeout_s: float) -> str | None:
        """Block until the server records one of the event kinds; returns the kind (for scripts and tests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [e.kind for e in self._store.events(server_id) if e.kind in kinds]
            if found:
                return found[-1]
            time.sleep(0.02)
        return None

    # internals -----------------------------------------------------------------------------------
    def _spawn(self, server_id: str, checked: CheckedSpec, keep_baseline: bool = False) -> None:
        """Spawn the api_server for an existing row; a spawn that fails marks the row FAILED with the reason.

        The GPUs' memory is read first, as the level to come back to after a stop (kept across a restart, whose
        reading could still hold the old process's memory)."""
        log_path = self._log_dir / f"server-{server_id}.log"
        if not (keep_baseline and self._store.get_pref(_baseline_name(server_id))):
            baseline = {d.index: d.used_bytes for d in self._gpu_devices()}
            self._store.set_pref(_baseline_name(server_id), json.dumps(baseline))  # a re-attaching console needs it
        spec = checked.spec
        now = time.time()
        # The hub token, if one is saved (only ever through the environment), and the server's GPUs.
        usable = self.usable_gpus()
        extra_env = {**self._child_env(), **spec.env(usable)}
        handle = spawn_safely(self._supervisor, self._argv_factory(checked), log_path,
                              env={**os.environ, **extra_env} if extra_env else None)
        if note := self.executor_note(spec):
            self._store.add_event(server_id, "executor", note)
        common: dict[str, Any] = {
            "phase": PHASES[0].key, "log_path": str(log_path), "base_url": spec.base_url,
            "model_id": spec.model_name or str(checked.model_dir), "started_at": now, "ready_at": None,
            "exit_code": None, "gpu_blocks": None,
        }
        self._store.add_event(server_id, "start",
                              command_preview(spec, str(checked.model_dir), self.ray_ok(spec), usable))
        if isinstance(handle, SpawnFailure):
            hint = Hint("hints.spawn_failed", f"{handle.program}: {handle.reason} ({handle.errno})")
            self._store.update_server(
                server_id, state=ServerState.FAILED.value, pid=None, create_time=None, ended_at=time.time(),
                hint=_hint_json(hint), detail=_detail("serve.detail.spawn_failed", program=handle.program,
                                                      reason=handle.reason, errno=handle.errno), **common)
            self._store.add_event(server_id, "failed", hint.key)
            return
        self._store.update_server(
            server_id, state=ServerState.STARTING.value, pid=handle.pid, create_time=handle.create_time,
            ended_at=None, hint="", detail="", **common)

    def _request_stop(self, record: ServerRecord, then_start: CheckedSpec | None = None) -> None:
        """SIGTERM now (the ticket's thread escalates to SIGKILL); called under the lock, returns at once."""
        handle = self._handle(record)
        tree = {p.pid for p in self._supervisor.tree(handle)}
        self._store.update_server(record.id, state=ServerState.STOPPING.value)
        # A tp > 1 engine's leader stops its rank workers itself, given the time (see request_stop).
        tp = int(record.spec.get("tp") or 1)
        ticket = self._supervisor.request_stop(handle, grace_s=self._stop_grace_s,
                                               leader_first_s=LEADER_FIRST_S if tp > 1 else 0.0)
        self._stopping[record.id] = _Stopping(ticket, time.monotonic(), then_start)
        if self._gpu.available:
            pids = frozenset(tree | set(ticket.pids))
            stored = json_object(self._store.get_pref(_baseline_name(record.id)) or "{}")
            baseline = {int(k): int(v) for k, v in stored.items()}
            self._releases[record.id] = _ReleaseWatch(pids, self._release_limits(pids, baseline), time.monotonic())

    def claim_ports_with(self, claimed: Callable[[], set[int]]) -> None:
        """Ports other children of the console hold (the proxy's, which binds 10-60 s after it starts): never
        offered to, or taken by, a server."""
        self._other_ports = claimed

    def _claimed_ports(self, exclude: str | None = None) -> set[int]:
        return {
            int(r.spec.get("port", 0))
            for r in self._store.list_servers()
            if r.owned and r.id != exclude and is_live(r.state)
        } | self._other_ports()

    def _reattach(self) -> None:
        """On console start: live servers it started are watched again; dead ones are marked LOST."""
        for record in self._store.list_servers():
            if not record.owned or not is_live(record.state):
                continue
            alive = self._supervisor.is_alive(self._handle(record))
            if alive:
                self._store.add_event(record.id, "reattached", f"pid {record.pid}")
                if ServerState(record.state) == ServerState.STOPPING:  # a stop the last console did not see end
                    self._request_stop(record)
                    continue
            self._check(record, watched=False)

    def _check(self, record: ServerRecord, watched: bool = True) -> None:
        """Observe one server and apply `decide_server`; the monitor calls this for each row in its own try."""
        state = ServerState(record.state)
        if state not in LIVE_STATES:
            return
        now = time.monotonic()
        if not record.owned:
            if state == ServerState.STOPPING or now - self._last_check.get(record.id, -1e9) >= ATTACHED_RECHECK_S:
                self._last_check[record.id] = now
                keys = self._keys(record.id)
                self._apply(record, ServerFacts(alive=True, health=_reachable(record.base_url,
                                                                              keys[0] if keys else "")))
            return
        facts = observe_process(self._supervisor, self._handle(record))
        if not facts.alive:
            self._settle(record, ServerFacts(alive=False, watched=watched), facts.exit_code)
            return
        if state == ServerState.STARTING:
            status = _health(record.base_url)
            if status != 200:
                reading = read_startup(tail(record.log_path, max_lines=400))
                if reading.phase != record.phase or reading.gpu_blocks != record.gpu_blocks:
                    self._store.update_server(record.id, phase=reading.phase, gpu_blocks=reading.gpu_blocks)
            self._apply(record, ServerFacts(alive=True, health=status, watched=watched))
        elif state == ServerState.READY and now - self._last_check.get(record.id, 0.0) >= READY_RECHECK_S:
            self._last_check[record.id] = now
            status = _health(record.base_url)
            detail = "" if status == 200 else _detail("serve.detail.health", status=status or "-")
            if detail != record.detail:
                self._store.update_server(record.id, detail=detail)

    def _settle(self, record: ServerRecord, facts: ServerFacts, exit_code: int | None = None) -> None:
        """The process is gone: apply the decision, with the exit code and the hint its log gives."""
        transition = decide_server(ServerState(record.state), record.owned, facts)
        if transition is None:
            return
        with self._lock:
            current = self._store.get_server(record.id)
            if current is None or (current.state, current.pid) != (record.state, record.pid):
                return  # someone (a stop, a restart) moved it meanwhile
            if record.id in self._stopping and not self._stopping[record.id].ticket.done:
                return  # the root is gone but not yet its whole tree: STOPPED (or the restart) waits for all of it
            stopping = self._stopping.pop(record.id, None)
            changes: dict[str, Any] = {"state": transition.to.value, "ended_at": time.time(), "exit_code": exit_code}
            if transition.to == ServerState.STOPPED and stopping is not None:
                report = stopping.ticket.report
                seconds = time.monotonic() - stopping.requested_at
                killed = bool(report and report.killed)
                changes["detail"] = _detail("serve.detail.stopped_killed" if killed else "serve.detail.stopped",
                                            seconds=f"{seconds:.2f}")
                event_detail = f"{seconds:.2f} s" + (" killed" if killed else "")
            elif transition.to == ServerState.LOST:
                changes["detail"] = _detail("serve.detail.gone_at_start")
                event_detail = ""
            elif transition.to == ServerState.FAILED:
                hint = find_hint(tail(record.log_path, max_lines=400))
                changes["hint"] = _hint_json(hint)
                changes["detail"] = _detail("serve.detail.exited", code="-" if exit_code is None else exit_code)
                event_detail = hint.key if hint else f"exit {exit_code}"
            else:
                event_detail = ""
            self._supervisor.forget(self._handle(record))
            if stopping is not None and stopping.then_start is not None:  # a restart: straight to STARTING
                self._store.add_event(record.id, transition.event, event_detail)
                self._releases.pop(record.id, None)  # the new process will allocate: judge it at its own stop
                self._spawn(record.id, stopping.then_start, keep_baseline=True)
                self._monitor.wake()
                return
            self._store.update_server(record.id, **changes)
            self._store.add_event(record.id, transition.event, event_detail)

    def _apply(self, record: ServerRecord, facts: ServerFacts) -> None:
        """A live server's transition (READY, UNREACHABLE…), re-checked under the lock against a racing stop."""
        transition = decide_server(ServerState(record.state), record.owned, facts)
        if transition is None:
            if not record.owned and record.state == ServerState.READY.value:
                settled: dict[str, Any] = {"detail": ""} if record.detail else {}
                if not record.model_id:  # a proxy lists no model until a node is added: read it again
                    keys = self._keys(record.id)
                    if found := _first_model_id(record.base_url, keys[0] if keys else ""):
                        settled["model_id"] = found
                if settled:
                    self._store.update_server(record.id, **settled)
            return
        if transition.to == ServerState.READY:
            keys = self._keys(record.id)
            model_id = _first_model_id(record.base_url, keys[0] if keys else "") or record.model_id
        ready_at = time.time()
        with self._lock:
            current = self._store.get_server(record.id)
            if current is None or (current.state, current.pid) != (record.state, record.pid):
                return
            changes: dict[str, Any] = {"state": transition.to.value}
            detail = ""
            if transition.to == ServerState.READY:
                changes.update(model_id=model_id, detail="")
                if record.owned:
                    changes.update(phase="ready", ready_at=ready_at)
                    detail = f"{ready_at - (record.started_at or ready_at):.1f} s"
                elif record.ready_at is None:
                    changes["ready_at"] = ready_at
            elif transition.to == ServerState.UNREACHABLE:
                changes["detail"] = _detail("serve.detail.health", status=facts.health or "-")
            elif transition.to == ServerState.STOPPED:
                changes["ended_at"] = ready_at
            self._store.update_server(record.id, **changes)
            self._store.add_event(record.id, transition.event, detail, at=ready_at)

    def _release_limits(self, pids: frozenset[int], baseline: dict[int, int]) -> dict[int, int]:
        """Per GPU, where its used memory must come back to once the server is gone, read fresh at the stop.

        On each GPU where the server's processes hold memory: that GPU's reading now minus what they hold (so a
        server started later on the same GPU does not keep this one from counting as released), or the reading
        before this server started if higher, plus 256 MiB. Where NVML names none of its processes, every GPU must
        be back within 256 MiB of its reading before the start."""
        held: dict[int, int] = {}
        for proc in self._gpu.process_memory():
            if proc.pid in pids:
                held[proc.gpu_index] = held.get(proc.gpu_index, 0) + proc.used_bytes
        now = {d.index: d.used_bytes for d in self._gpu_devices()}
        if not held:
            return {i: used + RELEASE_MARGIN_BYTES for i, used in baseline.items()}
        return {i: max(baseline.get(i, 0), now.get(i, 0) - held_bytes) + RELEASE_MARGIN_BYTES
                for i, held_bytes in held.items()}

    def _check_releases(self) -> None:
        """After stops: record "memory_released" once fresh NVML reads (never a cached sample) show none of the
        server's pids and each GPU it used back under its limit (see _release_limits)."""
        if not self._releases:
            return
        held = self._gpu.process_memory()
        devices = {d.index: d.used_bytes for d in self._gpu_devices()}
        for server_id, watch in list(self._releases.items()):
            if server_id in self._stopping:
                continue  # still stopping: its pids may still hold memory
            still = [p for p in held if p.pid in watch.pids]
            over = {i: used for i, used in devices.items() if i in watch.limits and used > watch.limits[i]}
            waited = time.monotonic() - watch.since
            if not still and not over:
                del self._releases[server_id]
                self._store.add_event(server_id, "memory_released", f"{waited:.2f} s")
            elif waited > RELEASE_TIMEOUT_S:
                del self._releases[server_id]
                gpus = ", ".join(f"GPU {i}: {used >> 20} MiB (limit {watch.limits[i] >> 20} MiB)"
                                 for i, used in sorted(over.items()))
                pids = ", ".join(str(p.pid) for p in still)
                self._store.add_event(server_id, "memory_not_released",
                                      f"{waited:.0f} s; " + (f"pids {pids}; " if pids else "") + gpus)

    def _gpu_devices(self) -> list[Any]:
        if not self._gpu.available:
            return []
        try:
            return self._gpu.devices()
        except Exception:  # a GPU that vanished must not stop a server from starting
            log.exception("reading GPU memory failed")
            return []

    def _handle(self, record: ServerRecord) -> Any:
        return handle_of(record.pid, record.create_time, record.log_path)

    def _keys(self, server_id: str) -> list[str]:
        return [str(k) for k in self._secrets.get(_key_name(server_id)) or []]

    def _spec_json(self, server_id: str, spec: ServerSpec) -> str:
        """The spec as stored: its API keys go to the secrets file, never into the database."""
        if spec.api_keys:
            self._secrets.set(_key_name(server_id), list(spec.api_keys))
        return json.dumps(dataclasses.replace(spec, api_keys=()).to_json_dict())

    def _spec_of(self, record: ServerRecord) -> ServerSpec:
        return dataclasses.replace(ServerSpec.from_json_dict(record.spec), api_keys=tuple(self._keys(record.id)))

    def _move_keys_out_of_the_database(self) -> None:
        """Rows written by earlier versions kept API keys in spec_json: move them to the secrets file."""
        moved = False
        for record in self._store.list_servers():
            keys = record.spec.get("api_keys") or []
            if keys:
                self._secrets.set(_key_name(record.id), [str(k) for k in keys])
                self._store.update_server(record.id, spec_json=json.dumps({**record.spec, "api_keys": []}))
                moved = True
        if moved:
            self._store.checkpoint()  # with secure_delete, no copy of the old text is left in the files

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
        detail, detail_params = _read_detail(record.detail)
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
            detail=detail,
            detail_params=detail_params,
            active=record.id == active_id,
            pid=record.pid,
            command=command_preview(dataclasses.replace(spec, api_keys=("<API_KEY>",) if self._keys(record.id)
                                                        else ()), ray_ok=self.ray_ok(spec),
                                    usable=self.usable_gpus()) if record.owned else "",
            gpu_blocks=record.gpu_blocks,
            has_api_key=bool(self._keys(record.id)),
            gpus=spec.gpu_list,
            executor=spec.executor,
        )


def _key_name(server_id: str) -> str:
    return f"server/{server_id}/api_keys"


def _baseline_name(server_id: str) -> str:
    """The pref that keeps each GPU's used bytes from just before the server started (for "released")."""
    return f"serve.baseline.{server_id}"


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
    if parts.username or parts.password:  # it would be stored, listed and exported with the URL
        raise ValueError(f"a URL with a user or password in it: {parts.hostname}; give the key as the API key")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}"


def _hint_json(hint: Hint | None) -> str:
    return json.dumps({"key": hint.key, "line": hint.line}) if hint else ""


def _request(base_url: str, path: str, api_key: str = "", timeout: float = 1.0,
             method: str = "GET") -> tuple[int, bytes]:
    parts = urlsplit(base_url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = None
    if method == "POST":  # LMDeploy's control routes refuse a request that does not say it is JSON (422)
        headers["Content-Type"] = "application/json"
        body = b"{}"
    try:
        conn.request(method, parts.path.rstrip("/") + path, body=body, headers=headers)
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


def _reachable(base_url: str, api_key: str) -> int | None:
    """An attached server's readiness: its /health, or where it has none (llama.cpp's server answers 404)
    whether /v1/models answers with the key."""
    status = _health(base_url)
    if status != 404:
        return status
    try:
        return _request(base_url, "/v1/models", api_key, timeout=2.0)[0]
    except (OSError, http.client.HTTPException):
        return None


def model_ids(base_url: str, api_key: str = "", timeout: float = 2.0) -> list[str]:
    """The model ids a server's /v1/models lists (asked with its key); [] when it does not answer 200 with a list."""
    try:
        status, body = _request(base_url, "/v1/models", api_key, timeout=timeout)
        data = json.loads(body).get("data") if status == 200 else None
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return []
    return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")] if isinstance(data, list) else []


def _first_model_id(base_url: str, api_key: str) -> str:
    return next(iter(model_ids(base_url, api_key)), "")

