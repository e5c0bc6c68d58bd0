"""A fleet behind LMDeploy's own proxy (`lmdeploy serve proxy`): start and stop it, add and remove nodes, watch them.

The proxy is LMDeploy's; the console only starts it (webui/workers/proxy_worker.py, which moves its node file into
the state folder), calls its routes and reads its nodes. What LMDeploy 0.18.0's proxy does, read from its source
(lmdeploy/serve/proxy/proxy.py) and checked against the running proxy in tests/test_proxy.py:
- `POST /nodes/add {"url", "status": {"models": [...]}}` registers a node; without `models` the proxy asks the
  node's `/v1/models` itself, without any API key, so a node with keys could not be added that way: the console
  reads the models itself (with the node's key) and hands them over. The answer is 200 even when adding failed.
- `/nodes/*` routes skip the proxy's API keys (anyone who reaches the proxy could add or remove nodes): with keys,
  the worker makes them ask for one too, and the console sends it. `/v1/*` need them, and the proxy forwards the
  caller's Authorization header to the node unchanged, so a node guarded by another key is refused here.
- Routing is by model name: nodes that serve different names are different models to it (`mixed_models`).
- A heartbeat thread checks every node's `/health` every LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION seconds
  (90 by default) and drops those that do not answer 200; until then a dead node stays listed, and a request
  routed to it is answered 200 with `{"error_code": 10402, ...}`. That dropped every node without a `/health`
  route (llama-cpp-python's) at the first beat: the worker keeps a node whose `/health` answers 404.
- `/nodes/remove` races the routing of requests under way (a KeyError, answered 500); the worker closes it.
- It has no `/health` of its own: it is READY when `GET /nodes/status` answers.

One proxy per console. Its record (pid, create_time, log, spec without keys) is a JSON pref, its API keys live
in the SecretStore, so a console restart finds it again by (pid, create_time) like a server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from webui.services.compare import parse_kv_usage
from webui.services.lifecycle import SpawnFailure, handle_of, observe_process, spawn_safely
from webui.services.load import bearer
from webui.services.placement import env_prefix
from webui.services.processes import ProcessHandle, ProcessSupervisor, StopTicket
from webui.services.secrets import SecretStore
from webui.services.serve import ServerManager, model_ids, normalize_base_url
from webui.services.serve_log import tail
from webui.services.serve_spec import (
    MAX_KEYS_CHARS,
    MAX_NAME_CHARS,
    FieldError,
    check_listening,
    listen_host,
    local_url,
    suggest_port,
    too_long,
)
from webui.services.server_states import ServerState, is_live
from webui.services.store import Store
from webui.workers.proxy_worker import KEYS_ENV  # read (and removed from its environment) by the worker

__all__ = (
    "FleetStatus", "NodeOutcome", "NodeStatus", "ProxyManager", "ProxyOutcome", "ProxySnapshot", "ProxySpec",
    "check_proxy_spec", "proxy_argv", "proxy_cli_args", "proxy_preview",
)

log = logging.getLogger(__name__)

ROUTING_STRATEGIES = ("min_expected_latency", "min_observed_latency", "random")
DEFAULT_PROXY_PORT = 8000  # LMDeploy's own default for the proxy
DEFAULT_HEARTBEAT_S = 90  # LMDeploy's LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION default
MAX_HEARTBEAT_S = 3600
RECORD_PREF = "proxy.record"
NODES_PREF = "proxy.nodes"  # node URL -> the console server id it came from ("" for a URL)
KEYS_SECRET = "proxy/api_keys"
NODE_KEYS_SECRET = "proxy/node_keys"
HEARTBEAT_ENV = "LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION"
NODE_FILE = "proxy_config.json"
PROBE_TIMEOUT_S = 2.0
ADD_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0
# Prometheus names of LMDeploy's scheduler gauges (lmdeploy/metrics/loggers.py), one sample per engine.
RUNNING_METRIC = "lmdeploy:num_requests_running"
WAITING_METRIC = "lmdeploy:num_requests_waiting"


@dataclass(frozen=True)
class ProxySpec:
    """What a user asks of `lmdeploy serve proxy`, as plain values (the keys never leave the SecretStore)."""

    port: int = DEFAULT_PROXY_PORT
    host: str = "127.0.0.1"
    routing_strategy: str = "min_expected_latency"
    api_keys: tuple[str, ...] = ()
    disable_cache_status: bool = False
    heartbeat_s: int = DEFAULT_HEARTBEAT_S

    def to_json_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["api_keys"] = list(self.api_keys)
        return data

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> ProxySpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        keys = known.get("api_keys") or ()
        known["api_keys"] = (keys,) if isinstance(keys, str) else tuple(str(k) for k in keys)
        return cls(**known)

    @property
    def base_url(self) -> str:
        return local_url(self.host, self.port)


def check_proxy_spec(spec: ProxySpec, ports_claimed: set[int] | None = None) -> list[FieldError]:
    """Every reason the spec cannot start (the Serve form's rules for host, port and keys); [] when it can."""
    errors = too_long(("host", spec.host, MAX_NAME_CHARS), ("api_keys", " ".join(spec.api_keys), MAX_KEYS_CHARS))
    if errors:
        return errors
    if spec.routing_strategy not in ROUTING_STRATEGIES:
        errors.append(FieldError("routing_strategy", "errors.choice",
                                 {"value": spec.routing_strategy, "choices": ", ".join(ROUTING_STRATEGIES)}))
    heartbeat = spec.heartbeat_s
    if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or not 1 <= heartbeat <= MAX_HEARTBEAT_S:
        errors.append(FieldError("heartbeat_s", "errors.int_range", {"min": "1", "max": str(MAX_HEARTBEAT_S)}))
    return errors + check_listening(spec.host, spec.port, spec.api_keys, ports_claimed)


def proxy_cli_args(spec: ProxySpec) -> list[str]:
    """Arguments after `lmdeploy`, without the API keys (they travel in the environment): pure, so the preview
    and the real command cannot drift apart."""
    args = ["serve", "proxy", "--server-name", listen_host(spec.host), "--server-port", str(spec.port),
            "--routing-strategy", spec.routing_strategy, "--log-level", "INFO"]
    if spec.disable_cache_status:
        args.append("--disable-cache-status")
    return args


def proxy_argv(spec: ProxySpec, python: str, node_file: Path | None = None) -> list[str]:
    """The exact command: LMDeploy's CLI run by the proxy worker, which only moves the node file (see its doc)."""
    target = "" if spec.disable_cache_status or node_file is None else str(node_file)
    return [python, "-m", "webui.workers.proxy_worker", target, *proxy_cli_args(spec)]


def proxy_preview(spec: ProxySpec) -> str:
    """The copyable shell form (keys masked), as a user would type it without the console."""
    args = proxy_cli_args(spec)
    if spec.api_keys:
        args += ["--api-keys", *("<API_KEY>" for _ in spec.api_keys)]
    env = env_prefix({HEARTBEAT_ENV: str(spec.heartbeat_s)}) if spec.heartbeat_s != DEFAULT_HEARTBEAT_S else ""
    return env + shlex.join(["lmdeploy", *args])


@dataclass(frozen=True)
class ProxySnapshot:
    """Read model of the console's proxy (API keys never included); `exists` is False before the first start."""

    exists: bool
    state: str
    base_url: str
    port: int
    host: str
    routing_strategy: str
    disable_cache_status: bool
    heartbeat_s: int
    has_api_key: bool
    pid: int | None
    started_at: float | None
    ready_at: float | None
    ended_at: float | None
    exit_code: int | None
    command: str
    log_path: str
    node_file: str
    detail: str = ""
    server_id: str = ""  # the proxy as a server of the console (attached once READY): Chat, Tools and Compare use it

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ProxyOutcome:
    """A start: the proxy as it is now, or the field errors that stopped it (then nothing was spawned)."""

    proxy: ProxySnapshot
    errors: tuple[FieldError, ...] = ()


@dataclass(frozen=True)
class NodeOutcome:
    """An add or a remove: the node's URL, and the catalog key and values of what refused it (or "")."""

    url: str
    error: str = ""
    params: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class NodeStatus:
    """One node as the proxy lists it, with what the node itself answers (None where it did not)."""

    url: str
    server_id: str
    models: tuple[str, ...]  # as registered with the proxy (what it routes by)
    unfinished: int
    latency_s: float | None  # mean of the proxy's recent observations
    health: int | None  # HTTP status of GET /health; None: nothing answered
    served_models: tuple[str, ...]  # what the node's /v1/models says now
    kv_usage: float | None
    running: float | None
    waiting: float | None

    @property
    def reachable(self) -> bool:
        return self.health is not None

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "reachable": self.reachable}


@dataclass(frozen=True)
class FleetStatus:
    """The proxy and its nodes; `mixed_models` when nodes serve different model names (the proxy then treats
    them as different models, so requests for one never reach the others)."""

    proxy: ProxySnapshot
    answered: bool  # whether the proxy's /nodes/status answered
    nodes: tuple[NodeStatus, ...]
    models: tuple[str, ...]
    mixed_models: bool
    dropped: tuple[str, ...] = ()  # added through the console, no longer listed: LMDeploy's heartbeat dropped them

    def as_dict(self) -> dict[str, object]:
        return {"proxy": self.proxy.as_dict(), "answered": self.answered,
                "nodes": [n.as_dict() for n in self.nodes], "models": list(self.models),
                "mixed_models": self.mixed_models, "dropped": list(self.dropped)}


class ProxyManager:
    """Owns the console's one LMDeploy proxy; app-scoped. No method waits on the process: start spawns and
    returns, stop signals and returns; the state is read from the process and the proxy's HTTP when asked."""

    def __init__(self, store: Store, supervisor: ProcessSupervisor, secrets: SecretStore, servers: ServerManager,
                 state_dir: Path, python: str, stop_grace_s: float = STOP_GRACE_S) -> None:
        self._store = store
        self._supervisor = supervisor
        self._secrets = secrets
        self._servers = servers
        self._dir = state_dir / "proxy"
        self._python = python
        self._stop_grace_s = stop_grace_s
        self._lock = threading.RLock()
        self._ticket: StopTicket | None = None
        self._closing = False

    # queries -------------------------------------------------------------------------------------
    @property
    def node_file(self) -> Path:
        return self._dir / NODE_FILE

    def default_spec(self) -> ProxySpec:
        return ProxySpec(port=suggest_port(DEFAULT_PROXY_PORT, taken=self._server_ports()))

    def claimed_ports(self) -> set[int]:
        """The port of a live proxy (it may not have bound it yet: LMDeploy's import takes 10-60 s)."""
        record = self._record()
        if record is None or not is_live(record["state"]):
            return set()
        return {ProxySpec.from_json_dict(record.get("spec") or {}).port}

    def check(self, spec: ProxySpec) -> list[FieldError]:
        return check_proxy_spec(spec, self._server_ports())

    def preview(self, spec: ProxySpec) -> str:
        return proxy_preview(spec)

    def api_key(self) -> str:
        """The proxy's first API key, for this console's own clients (Chat, Tools, Compare); never shown."""
        keys = self._secrets.get(KEYS_SECRET) or []
        return str(keys[0]) if keys else ""

    def snapshot(self) -> ProxySnapshot:
        """The proxy as it is now: observed from its process and its HTTP, settled into the record on the way."""
        with self._lock:
            record = self._record()
            if record is None:
                spec = ProxySpec()
                return ProxySnapshot(False, ServerState.STOPPED.value, spec.base_url, spec.port, spec.host,
                                     spec.routing_strategy, spec.disable_cache_status, spec.heartbeat_s, False, None,
                                     None, None, None, None, proxy_preview(spec), "", "")
            if is_live(record["state"]):
                record = self._observe(record)
            return self._snapshot(record)

    def log(self, max_lines: int = 200) -> list[str]:
        record = self._record()
        if record is None or not record.get("log"):
            return []
        return tail(str(record["log"]), max_lines=max_lines)  # the end only: the proxy logs a line per request

    # actions -------------------------------------------------------------------------------------
    def start(self, spec: ProxySpec) -> ProxyOutcome:
        """Check, then spawn the proxy; refused (nothing spawned) while one is live or the console is closing."""
        with self._lock:
            current = self.snapshot()
            if self._closing:
                return ProxyOutcome(current, (FieldError("port", "errors.console_closing", {}),))
            if current.exists and is_live(current.state):
                return ProxyOutcome(current, (FieldError("port", "errors.proxy_running",
                                                         {"url": current.base_url, "state": current.state}),))
            errors = self.check(spec)
            if errors:
                return ProxyOutcome(current, tuple(errors))
            if (previous := self._record()) is not None:
                self._drop_target(previous)
            self._dir.mkdir(parents=True, exist_ok=True)
            started = time.time()
            log_path = self._dir / f"proxy-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.log"
            if spec.api_keys:
                self._secrets.set(KEYS_SECRET, list(spec.api_keys))
            else:
                self._secrets.delete(KEYS_SECRET)
            env = {**_environ(), HEARTBEAT_ENV: str(int(spec.heartbeat_s)), "PYTHONUNBUFFERED": "1"}
            if spec.api_keys:
                env[KEYS_ENV] = json.dumps(list(spec.api_keys))
            handle = spawn_safely(self._supervisor, proxy_argv(spec, self._python, self.node_file), log_path, env=env)
            record: dict[str, Any] = {
                "spec": dataclasses.replace(spec, api_keys=()).to_json_dict(), "log": str(log_path),
                "started_at": started, "ready_at": None, "ended_at": None, "exit_code": None,
                "stop_requested_at": None, "detail": "",
            }
            if isinstance(handle, SpawnFailure):
                record.update(state=ServerState.FAILED.value, pid=None, create_time=None, ended_at=time.time(),
                              detail=f"{handle.reason} ({handle.errno or 'no errno'})")
                self._store.add_event("proxy", "failed", handle.reason)
            else:
                record.update(state=ServerState.STARTING.value, pid=handle.pid, create_time=handle.create_time)
                self._store.add_event("proxy", "started", f"port {spec.port}")
            self._ticket = None
            self._save(record)
            return ProxyOutcome(self._snapshot(record))

    def stop(self) -> ProxySnapshot:
        """Signal the proxy's process group and return (STOPPING); it is STOPPED once gone. Nodes keep running."""
        with self._lock:
            record = self._record()
            if record is None or not is_live(record["state"]):
                return self.snapshot()
            handle = _handle(record)
            if observe_process(self._supervisor, handle).alive:
                if record["state"] != ServerState.STOPPING.value or self._ticket is None:  # a ticket of this console
                    self._ticket = self._supervisor.request_stop(handle, self._stop_grace_s)
                    record.update(state=ServerState.STOPPING.value, stop_requested_at=time.time())
                    self._save(record)
            else:
                record = self._observe(record)
            return self.snapshot()

    def wait_for(self, states: set[str], timeout_s: float) -> ProxySnapshot:
        """Poll until the proxy is in one of `states` or the time is up (for scripts and tests, never the UI)."""
        deadline = time.monotonic() + timeout_s
        while True:
            snap = self.snapshot()
            if snap.state in states or time.monotonic() > deadline:
                return snap
            time.sleep(0.1)

    def shutdown(self, keep_running: bool = False) -> None:
        """The console is closing: stop the proxy unless it is kept (then the next console re-attaches it)."""
        with self._lock:
            self._closing = True
            if keep_running:
                return
            self.stop()
            ticket = self._ticket
        if ticket is not None:
            ticket.wait(self._stop_grace_s + 6)
            with self._lock:
                record = self._record()
                if record is not None and is_live(record["state"]):
                    self._observe(record)

    def add_node(self, target: str, api_key: str = "") -> NodeOutcome:
        """Register a console server (by id: only once READY) or any api_server URL with the proxy.

        The node's /health must answer 200 (or 404: servers without that route, like llama.cpp's) and its
        /v1/models must list a model; the console reads the models with the node's key and hands them to
        `/nodes/add`, so nodes with keys can be added too.
        """
        proxy = self.snapshot()
        if proxy.state != ServerState.READY.value:
            return NodeOutcome(target, "errors.proxy_not_ready", {"state": proxy.state})
        resolved = self._resolve(target, api_key)
        if isinstance(resolved, NodeOutcome):
            return resolved
        url, server_id, key = resolved
        if url == normalize_base_url(proxy.base_url) or (server_id and server_id == proxy.server_id):
            return NodeOutcome(url, "errors.node_is_proxy", {"url": url})
        proxy_keys = [str(k) for k in self._secrets.get(KEYS_SECRET) or []]
        if key and key not in proxy_keys:
            # The proxy hands each request's own Authorization header to the node it picks: a node guarded by
            # another key would refuse every routed request (401).
            return NodeOutcome(url, "errors.node_key_mismatch", {"url": url})
        if server_id:
            snap = self._servers.get(server_id)
            assert snap is not None  # _resolve found it
            if snap.state != ServerState.READY.value:  # a server is never registered before it is ready
                return NodeOutcome(url, "errors.server_state",
                                   {"id": server_id, "state": snap.state, "needs": ServerState.READY.value})
        health = _status(url, "/health", key)
        if health not in (200, 404):
            return NodeOutcome(url, "errors.node_not_ready", {"url": url, "status": str(health or "-")})
        models = model_ids(url, key, PROBE_TIMEOUT_S)
        if not models:
            return NodeOutcome(url, "errors.node_no_models", {"url": url})
        try:
            with httpx.Client(timeout=ADD_TIMEOUT_S) as client:
                resp = client.post(proxy.base_url + "/nodes/add", json={"url": url, "status": {"models": models}},
                                   headers=bearer(self.api_key()))
        except httpx.HTTPError as exc:
            return NodeOutcome(url, "errors.proxy_call", {"route": "/nodes/add", "detail": str(exc)[:200]})
        listed = self._proxy_nodes(proxy.base_url)
        if resp.status_code != 200 or listed is None or url not in listed:
            return NodeOutcome(url, "errors.proxy_call", {"route": "/nodes/add", "detail": resp.text[:200]})
        with self._lock:
            nodes = self._nodes_pref()
            nodes[url] = server_id
            self._store.set_pref(NODES_PREF, json.dumps(nodes))
            node_keys = dict(self._secrets.get(NODE_KEYS_SECRET) or {})
            if key and not server_id:
                node_keys[url] = key
            else:
                node_keys.pop(url, None)
            self._secrets.set(NODE_KEYS_SECRET, node_keys)
        self._store.add_event("proxy", "node_added", url + (f" (server {server_id})" if server_id else ""))
        return NodeOutcome(url)

    def remove_node(self, target: str) -> NodeOutcome:
        """Take a node (a console server id or its URL) out of the proxy; the node itself keeps running."""
        proxy = self.snapshot()
        if proxy.state not in (ServerState.READY.value, ServerState.UNREACHABLE.value):
            return NodeOutcome(target, "errors.proxy_not_ready", {"state": proxy.state})
        resolved = self._resolve(target, "")
        if isinstance(resolved, NodeOutcome):
            return resolved
        url = resolved[0]
        try:
            with httpx.Client(timeout=ADD_TIMEOUT_S) as client:
                resp = client.post(proxy.base_url + "/nodes/remove", json={"url": url}, headers=bearer(self.api_key()))
        except httpx.HTTPError as exc:
            return NodeOutcome(url, "errors.proxy_call", {"route": "/nodes/remove", "detail": str(exc)[:200]})
        listed = self._proxy_nodes(proxy.base_url)
        if resp.status_code != 200 or listed is None or url in listed:  # LMDeploy answers 200 "Failed to delete"
            return NodeOutcome(url, "errors.proxy_call", {"route": "/nodes/remove", "detail": resp.text[:200]})
        with self._lock:
            nodes = self._nodes_pref()
            nodes.pop(url, None)
            self._store.set_pref(NODES_PREF, json.dumps(nodes))
            node_keys = dict(self._secrets.get(NODE_KEYS_SECRET) or {})
            if node_keys.pop(url, None) is not None:
                self._secrets.set(NODE_KEYS_SECRET, node_keys)
        self._store.add_event("proxy", "node_removed", url)
        return NodeOutcome(url)

    def fleet_status(self) -> FleetStatus:
        """The proxy's `/nodes/status`, and per node its /health, /v1/models and /metrics, read in parallel."""
        proxy = self.snapshot()
        listed = self._proxy_nodes(proxy.base_url) if proxy.state in (
            ServerState.READY.value, ServerState.UNREACHABLE.value, ServerState.STARTING.value) else None
        origin = self._nodes_pref()
        if not listed:
            return FleetStatus(proxy, listed is not None, (), (), False,
                               tuple(sorted(origin)) if listed is not None else ())
        dropped = tuple(sorted(set(origin) - set(listed)))
        with ThreadPoolExecutor(max_workers=min(8, len(listed))) as pool:
            nodes = tuple(pool.map(lambda item: self._probe(item[0], item[1], origin.get(item[0], "")),
                                   sorted(listed.items())))
        names = {n.models for n in nodes if n.models}
        models = tuple(sorted({m for n in nodes for m in n.models}))
        return FleetStatus(proxy, True, nodes, models, len(names) > 1, dropped)

    # internals -----------------------------------------------------------------------------------
    def _probe(self, url: str, status: Any, server_id: str) -> NodeStatus:
        status = status if isinstance(status, dict) else {}
        key = self._node_key(url, server_id)
        latency = [float(x) for x in status.get("latency") or [] if isinstance(x, (int, float))]
        metrics = _text(url, "/metrics", key)
        return NodeStatus(
            url=url, server_id=server_id,
            models=tuple(str(m) for m in status.get("models") or []),
            unfinished=int(status.get("unfinished") or 0),
            latency_s=sum(latency) / len(latency) if latency else None,
            health=_status(url, "/health", key),
            served_models=tuple(model_ids(url, key, PROBE_TIMEOUT_S)),
            kv_usage=parse_kv_usage(metrics) if metrics else None,
            running=metric_sum(metrics, RUNNING_METRIC) if metrics else None,
            waiting=metric_sum(metrics, WAITING_METRIC) if metrics else None,
        )

    def _node_key(self, url: str, server_id: str) -> str:
        if server_id:
            try:
                return self._servers.api_key(server_id)
            except KeyError:
                return ""
        return str((self._secrets.get(NODE_KEYS_SECRET) or {}).get(url, ""))

    def _resolve(self, target: str, api_key: str) -> tuple[str, str, str] | NodeOutcome:
        """(url, server id or "", key) for a console server id or a URL; a refusal for anything else."""
        text = (target or "").strip()
        if text and self._servers.get(text) is not None:
            snap = self._servers.get(text)
            assert snap is not None
            return normalize_base_url(snap.base_url), text, api_key or self._servers.api_key(text)
        try:
            url = normalize_base_url(text)
        except ValueError:
            return NodeOutcome(text[:200], "errors.bad_url", {"url": text[:200]})
        for snap in self._servers.snapshots():  # a console server given by its URL is still that server
            if snap.base_url and normalize_base_url(snap.base_url) == url:
                return url, snap.id, api_key or self._servers.api_key(snap.id)
        # a node added before (and dropped by the heartbeat since) is added again with the key it had
        return url, "", api_key or str((self._secrets.get(NODE_KEYS_SECRET) or {}).get(url, ""))

    def _proxy_nodes(self, base_url: str) -> dict[str, Any] | None:
        try:
            with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
                resp = client.get(base_url + "/nodes/status", headers=bearer(self.api_key()))
            data = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _observe(self, record: dict[str, Any]) -> dict[str, Any]:
        """Settle a live record from what is true now (the lock is held by the caller)."""
        handle = _handle(record)
        facts = observe_process(self._supervisor, handle)
        state = record["state"]
        changes: dict[str, Any] = {}
        if facts.alive and state == ServerState.STOPPING.value and self._ticket is None:
            # asked to stop by a console that closed before it was gone: this console sees the stop through
            self._ticket = self._supervisor.request_stop(handle, self._stop_grace_s)
            return record
        if not facts.alive:
            ticket = self._ticket
            if state == ServerState.STOPPING.value and ticket is not None and not ticket.done:
                return record  # the leader is gone, not yet its whole group
            stopped = state == ServerState.STOPPING.value
            changes = {"state": ServerState.STOPPED.value if stopped else ServerState.FAILED.value,
                       "ended_at": time.time(), "exit_code": facts.exit_code}
            if stopped and record.get("stop_requested_at"):
                changes["detail"] = f"{time.time() - record['stop_requested_at']:.2f} s"
            self._supervisor.forget(handle)
            self._store.add_event("proxy", "stopped" if stopped else "exited",
                                  "" if facts.exit_code is None else f"exit {facts.exit_code}")
            self._drop_target(record)
            changes["server_id"] = ""
        elif state in (ServerState.STARTING.value, ServerState.READY.value, ServerState.UNREACHABLE.value):
            base_url = ProxySpec.from_json_dict(record["spec"]).base_url
            answered = self._proxy_nodes(base_url) is not None
            if answered and state != ServerState.READY.value:
                changes = {"state": ServerState.READY.value}
                if record.get("ready_at") is None:
                    changes["ready_at"] = time.time()
                    self._store.add_event("proxy", "ready", f"{changes['ready_at'] - record['started_at']:.1f} s")
            elif not answered and state == ServerState.READY.value:
                changes = {"state": ServerState.UNREACHABLE.value}
            if answered and not self._target_exists(record):
                changes["server_id"] = self._servers.attach(base_url, self.api_key()).id
                self._store.add_event("proxy", "target", changes["server_id"])
        if changes:
            record = {**record, **changes}
            self._save(record)
        return record

    def _target_exists(self, record: Mapping[str, Any]) -> bool:
        server_id = str(record.get("server_id") or "")
        return bool(server_id) and self._servers.get(server_id) is not None

    def _drop_target(self, record: Mapping[str, Any]) -> None:
        """The proxy is gone: so is its entry among the console's servers (its nodes stay where they are)."""
        if self._target_exists(record):
            try:
                self._servers.forget(str(record["server_id"]))
            except KeyError:  # removed from the Serve tab meanwhile
                pass

    def _snapshot(self, record: dict[str, Any]) -> ProxySnapshot:
        spec = ProxySpec.from_json_dict(record.get("spec") or {})
        has_key = bool(self._secrets.get(KEYS_SECRET))
        shown = dataclasses.replace(spec, api_keys=("<API_KEY>",) if has_key else ())
        return ProxySnapshot(
            exists=True, state=record["state"], base_url=spec.base_url, port=spec.port, host=spec.host,
            routing_strategy=spec.routing_strategy, disable_cache_status=spec.disable_cache_status,
            heartbeat_s=spec.heartbeat_s, has_api_key=has_key, pid=record.get("pid"),
            started_at=record.get("started_at"), ready_at=record.get("ready_at"), ended_at=record.get("ended_at"),
            exit_code=record.get("exit_code"), command=proxy_preview(shown), log_path=str(record.get("log") or ""),
            node_file="" if spec.disable_cache_status else str(self.node_file), detail=str(record.get("detail") or ""),
            server_id=str(record.get("server_id") or ""),
        )

    def _record(self) -> dict[str, Any] | None:
        raw = self._store.get_pref(RECORD_PREF)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        return data if isinstance(data, dict) and "state" in data else None

    def _save(self, record: dict[str, Any]) -> None:
        self._store.set_pref(RECORD_PREF, json.dumps(record))

    def _nodes_pref(self) -> dict[str, str]:
        try:
            data = json.loads(self._store.get_pref(NODES_PREF) or "{}")
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _server_ports(self) -> set[int]:
        return {s.port for s in self._servers.snapshots() if s.owned and is_live(s.state)}


def metric_sum(text: str, name: str) -> float | None:
    """The sum of one gauge's samples over all engines of a Prometheus text page, or None when absent."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)")
    values = []
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            try:
                values.append(float(match.group(1)))
            except ValueError:
                continue
    return sum(values) if values else None


def _handle(record: Mapping[str, Any]) -> ProcessHandle | None:
    return handle_of(record.get("pid"), record.get("create_time"), str(record.get("log") or ""))


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != KEYS_ENV}


def _status(url: str, path: str, key: str) -> int | None:
    try:
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
            return client.get(url + path, headers=bearer(key)).status_code
    except httpx.HTTPError:
        return None


def _text(url: str, path: str, key: str) -> str:
    try:
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
            resp = client.get(url + path, headers=bearer(key))
        return resp.text if resp.status_code == 200 else ""
    except httpx.HTTPError:
        return ""
