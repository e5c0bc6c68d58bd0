"""The Fleet tab: LMDeploy's own proxy (`lmdeploy serve proxy`) in front of several api_servers, its nodes, and
what lies beyond one box (attached remote servers, LMDeploy's Ray recipe for several machines, the Ray cluster).

The ProxyManager owns the proxy and reads the fleet, webui/services/ray_cluster.py builds the recipe and reads the
cluster (in LMDeploy's interpreter, whose path this tab is given); this module only words what they return. Once
READY the proxy is also a server of the console, so Chat, Tools and Compare pick it like any other.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr
import pandas as pd

from webui.i18n.catalog import Catalog
from webui.services.field_errors import FieldError
from webui.services.proxy import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_PROXY_PORT,
    ROUTING_STRATEGIES,
    FleetStatus,
    NodeOutcome,
    NodeStatus,
    ProxyManager,
    ProxySnapshot,
    ProxySpec,
)
from webui.services.ray_cluster import (
    DEFAULT_API_PORT,
    DEFAULT_RAY_PORT,
    MAX_HOST,
    MAX_MODEL_NAME,
    MAX_MODEL_PATH,
    RayClusterSpec,
    RayStatus,
    build_recipe,
    check_cluster_fits,
    ray_status,
)
from webui.services.serve import ServerManager, normalize_base_url
from webui.services.server_states import ServerState, is_live
from webui.settings import host_port
from webui.ui import forms
from webui.ui.common import format_errors, locale_of, short_model

LOG_LINES = 60
MAX_LOG_LINES = 5000
TICK_S = 2.5  # each tick asks the proxy and every node (in parallel, 2 s timeouts): cheap, not free
COLUMNS = ("url", "server", "models", "health", "served", "kv", "load", "unfinished", "latency")
COLUMN_WIDTHS = ("17%", "9%", "15%", "8%", "15%", "8%", "10%", "8%", "10%")
RAY_COLUMNS = ("ip", "hostname", "role", "alive", "gpus", "cpus")
STATE_PARAMS = frozenset({"state", "needs"})  # parameters that carry a ServerState value, worded per locale
# Other programs' words (the proxy's, httpx's, Ray's, pip's), paths, commands and URLs: quoted as code (a URL
# followed by Chinese punctuation would otherwise be linked with it).
FOREIGN_PARAMS = frozenset({"detail", "reason", "command", "python", "url"})


@dataclass(frozen=True)
class ProxyValues:
    """The proxy form's values; the field names are start_proxy's API parameters."""

    port: int = forms.whole(DEFAULT_PROXY_PORT)
    host: str = forms.host(ProxySpec.host)
    routing_strategy: str = forms.text(ProxySpec.routing_strategy, max_chars=64)
    api_keys: str = forms.text("", max_chars=4096)  # space- or comma-separated
    disable_cache_status: bool = forms.flag(ProxySpec.disable_cache_status)
    heartbeat_s: int = forms.whole(DEFAULT_HEARTBEAT_S)

    def to_spec(self) -> ProxySpec:
        return ProxySpec(port=self.port, host=self.host, routing_strategy=self.routing_strategy.strip(),
                         api_keys=forms.key_list(self.api_keys),
                         disable_cache_status=self.disable_cache_status, heartbeat_s=self.heartbeat_s)


PROXY_FORM = forms.Form(ProxyValues)


@dataclass(frozen=True)
class RayValues:
    """The Ray recipe's values (LMDeploy's multi-node guide, filled in)."""

    head_host: str = forms.text("", max_chars=MAX_HOST)
    ray_port: int = forms.whole(DEFAULT_RAY_PORT)
    nodes: int = forms.whole(2)
    gpus_per_node: int = forms.whole(8)
    model_path: str = forms.text("", max_chars=MAX_MODEL_PATH)
    api_port: int = forms.whole(DEFAULT_API_PORT)
    model_name: str = forms.text("", max_chars=MAX_MODEL_NAME)
    socket_ifname: str = forms.text("", max_chars=64)

    def to_spec(self) -> RayClusterSpec:
        return RayClusterSpec(head_host=self.head_host.strip(), nodes=self.nodes, gpus_per_node=self.gpus_per_node,
                              model_path=self.model_path.strip(), ray_port=self.ray_port, api_port=self.api_port,
                              model_name=self.model_name.strip(), socket_ifname=self.socket_ifname.strip())


RAY_FORM = forms.Form(RayValues)


@dataclass(frozen=True)
class ProxyForm:
    """The form's components, one per ProxyValues field and named like it (PROXY_FORM finds them by name)."""

    port: gr.Number
    host: gr.Textbox
    routing_strategy: gr.Dropdown
    api_keys: gr.Textbox
    disable_cache_status: gr.Checkbox
    heartbeat_s: gr.Number


@dataclass(frozen=True)
class RayForm:
    head_host: gr.Textbox
    ray_port: gr.Number
    nodes: gr.Number
    gpus_per_node: gr.Number
    model_path: gr.Textbox
    api_port: gr.Number
    model_name: gr.Textbox
    socket_ifname: gr.Textbox


class FleetHandlers:
    """Event handlers of the Fleet tab; they command the ProxyManager (and attach through the ServerManager).

    `python` is LMDeploy's interpreter: the Ray cluster is read with the `ray` that LMDeploy would use."""

    def __init__(self, proxy: ProxyManager, servers: ServerManager, catalog: Catalog, python: str) -> None:
        self.proxy = proxy
        self.servers = servers
        self.catalog = catalog
        self.python = python

    # form ----------------------------------------------------------------------------------------------
    def problems(self, form: forms.Parsed[ProxyValues]) -> list[FieldError]:
        """The form's own errors, then the service's checks of the rest (empty: the proxy can start)."""
        return forms.merge_errors(form.errors, self.proxy.check(form.values.to_spec()))

    def preview_proxy(self, form: forms.Parsed[ProxyValues], request: gr.Request | None) -> tuple[str, str]:
        """The exact command (keys masked) and what is wrong with the form now (or that the proxy runs)."""
        return self._preview(form, self.proxy.snapshot(), locale_of(request))

    def _preview(self, form: forms.Parsed[ProxyValues], current: ProxySnapshot, locale: str) -> tuple[str, str]:
        if current.exists and is_live(current.state):  # its own port is taken by itself: say so, not "in use"
            return current.command, self.catalog.text("fleet.msg.running_note", locale, url=current.base_url)
        errors = self.problems(form)
        status = self.errors_text(errors, locale) if errors else (
            "**" + self.catalog.text("fleet.msg.ready_to_start", locale) + "**")
        command = "" if form.errors else self.proxy.preview(form.values.to_spec())
        return command, status

    def errors_text(self, errors: list[FieldError] | tuple[FieldError, ...], locale: str) -> str:
        """Field errors naming the form's fields (`fleet.<field>.label`), states worded in the page's language."""
        return format_errors(self.catalog, [replace(e, params=self._params(e.params, locale)) for e in errors],
                             locale, "fleet")

    # actions -------------------------------------------------------------------------------------------
    def start_proxy(self, form: forms.Parsed[ProxyValues], request: gr.Request | None) -> tuple[str, str]:
        """Start LMDeploy's proxy; returns a message and its base URL ("" if refused: the message names the field)."""
        locale = locale_of(request)
        if form.errors:
            return self.errors_text(self.problems(form), locale), ""
        outcome = self.proxy.start(form.values.to_spec())
        if outcome.errors:
            return self.errors_text(outcome.errors, locale), ""
        snap = outcome.proxy
        if snap.state == ServerState.FAILED.value:
            return self.catalog.text("fleet.msg.spawn_failed", locale, detail=_code(snap.detail)), ""
        return self.catalog.text("fleet.msg.started", locale, url=snap.base_url), snap.base_url

    def stop_proxy(self, request: gr.Request | None = None) -> str:
        """Stop the proxy (it returns at once: STOPPING, then STOPPED); its nodes keep running."""
        locale = locale_of(request)
        before = self.proxy.snapshot()
        if not before.exists or not is_live(before.state):
            return self.catalog.text("fleet.msg.not_running", locale, state=self._state(before.state, locale))
        snap = self.proxy.stop()
        if snap.state == ServerState.STOPPING.value:
            return self.catalog.text("fleet.msg.stopping", locale, url=snap.base_url)
        return self.catalog.text("fleet.msg.stopped", locale, url=snap.base_url)

    def add_node(self, target: str, api_key: str = "", request: gr.Request | None = None) -> str:
        """Register a console server (by id, once READY) or an api_server's URL (with its key, if it has one)."""
        locale = locale_of(request)
        target = (target or "").strip()
        if not target:
            return self.catalog.text("fleet.msg.no_target", locale)
        outcome = self.proxy.add_node(target, (api_key or "").strip())
        if not outcome.ok:
            return self.outcome_text(outcome, locale)
        return self.catalog.text("fleet.msg.node_added", locale, url=outcome.url)

    def add_server(self, server_id: str | None, request: gr.Request) -> str:
        """The page's "Add server": a console server by id (its key is the console's)."""
        if not server_id:
            return self.catalog.text("fleet.msg.no_server", locale_of(request))
        return self.add_node(server_id, "", request)

    def remove_node(self, target: str, request: gr.Request | None = None) -> str:
        """Take a node (a console server id or its URL) out of the proxy; the node keeps running."""
        locale = locale_of(request)
        target = (target or "").strip()
        if not target:
            return self.catalog.text("fleet.msg.no_node", locale)
        outcome = self.proxy.remove_node(target)
        if not outcome.ok:
            return self.outcome_text(outcome, locale)
        return self.catalog.text("fleet.msg.node_removed", locale, url=outcome.url)

    def attach_remote(self, base_url: str, api_key: str, request: gr.Request) -> str:
        """Watch an api_server or proxy started elsewhere (the Serve tab's attach_server): never stopped here."""
        locale = locale_of(request)
        try:
            url = normalize_base_url(base_url)
        except ValueError:
            return "⚠ " + self.catalog.text("errors.bad_url", locale, url=html.escape((base_url or "")[:200]))
        snap = self.servers.attach(url, (api_key or "").strip())
        return self.catalog.text("serve.msg.attached", locale, id=snap.id, url=snap.base_url,
                                 state=self._state(snap.state, locale))

    def outcome_text(self, outcome: NodeOutcome, locale: str) -> str:
        return "⚠ " + self.catalog.text(outcome.error, locale, **self._params(outcome.params, locale))

    # ray -----------------------------------------------------------------------------------------------
    def ray_recipe(self, form: forms.Parsed[RayValues], request: gr.Request | None) -> tuple[str, str]:
        """The commands to run on each node, in order, and what each does; or the fields to fix."""
        locale = locale_of(request)
        if not form.values.head_host.strip() and not form.errors:
            return "", self.catalog.text("fleet.ray.msg.fill_in", locale)
        built = build_recipe(form.values.to_spec())
        if form.errors or isinstance(built, list):
            return "", self.ray_errors(forms.merge_errors(form.errors, [] if not isinstance(built, list) else built),
                                       locale)
        notes = [f"{number}. {self.catalog.text(step.note_key, locale, **self._params(step.note_params, locale))}"
                 for number, step in enumerate(built.steps, 1)]
        server = _code(built.base_url.removesuffix("/v1"))
        notes.append(self.catalog.text("fleet.ray.msg.then_attach", locale, url=server))
        return built.script, "\n".join(notes)

    def check_cluster(self, address: str, head_host: Any, ray_port: Any, nodes: Any, gpus_per_node: Any,
                      model_path: Any, api_port: Any, model_name: Any, socket_ifname: Any,
                      request: gr.Request) -> tuple[str, pd.DataFrame]:
        """The page's "Check cluster" (the address, then the recipe's fields as sent): the nodes and GPUs at
        `address` (the recipe's head when empty), and what the recipe still lacks there."""
        locale = locale_of(request)
        form = RAY_FORM.parse({"head_host": head_host, "ray_port": ray_port, "nodes": nodes,
                               "gpus_per_node": gpus_per_node, "model_path": model_path, "api_port": api_port,
                               "model_name": model_name, "socket_ifname": socket_ifname})
        values = form.values
        address = (address or "").strip() or (host_port(values.head_host.strip(), values.ray_port)
                                               if values.head_host.strip() else "")
        if not address:
            return self.catalog.text("fleet.ray.msg.no_address", locale), self.ray_table(None, locale)
        status = ray_status(self.python, address)
        text = self.ray_status_text(status, locale)
        built = None if form.errors else build_recipe(values.to_spec())
        if status.ok and built is not None and not isinstance(built, list):
            missing = check_cluster_fits(built, status)
            words = [self.catalog.text(e.key, locale, **self._params(e.params, locale)) for e in missing]
            text += "\n\n" + ("\n".join(f"- ⚠ {w}" for w in words) if words else
                               "✓ " + self.catalog.text("fleet.ray.msg.fits", locale, tp=built.tp))
        return text, self.ray_table(status, locale)

    def ray_status_text(self, status: RayStatus, locale: str) -> str:
        t = self.catalog.text
        if status.state == "invalid":
            return self.ray_errors(status.errors, locale)
        if not status.ok:
            return "⚠ " + t(status.key, locale, **self._params(status.params, locale))
        lines = [t("fleet.ray.msg.summary", locale, alive=len(status.alive_nodes), nodes=len(status.nodes),
                   free=f"{status.gpus_available:g}", gpus=f"{status.gpus_total:g}",
                   version=status.ray_version or "?", seconds=f"{status.elapsed_s:.1f}")]
        lines += ["⚠ " + t(key, locale, **self._params(params, locale)) for key, params in status.notes]
        return "\n\n".join(lines)

    def ray_table(self, status: RayStatus | None, locale: str) -> pd.DataFrame:
        t = self.catalog.text
        columns = [t(f"fleet.ray.col.{c}", locale) for c in RAY_COLUMNS]
        nodes = status.nodes if status is not None else ()
        rows = [[n.ip, n.hostname, t("fleet.ray.msg.head" if n.head else "fleet.ray.msg.worker", locale),
                 "✓" if n.alive else "✗", _share(n.gpus_available, n.gpus_total),
                 _share(n.cpus_available, n.cpus_total)] for n in nodes]
        return pd.DataFrame(rows, columns=columns)

    def ray_errors(self, errors: list[FieldError] | tuple[FieldError, ...], locale: str) -> str:
        return format_errors(self.catalog, [replace(e, params=self._params(e.params, locale)) for e in errors],
                             locale, "fleet.ray")

    def ray_status_api(self, address: str, request: gr.Request | None = None) -> dict:
        """The Ray cluster at `address` (HOST:PORT, Ray's port 6379 when left out), read with LMDeploy's
        interpreter: state (ok, invalid, no_ray, unreachable, timeout, error), a message saying why, the nodes
        with their GPUs and CPUs, and the command that installs ray where it is missing."""
        status = ray_status(self.python, address or "")
        locale = locale_of(request)
        message = "" if status.ok else self.catalog.text(status.key, locale, **status.params) if status.key else ""
        return {
            "state": status.state, "address": status.address, "python": status.python, "message": message,
            "errors": [{"field": e.field, "message": self.catalog.text(e.key, locale, **e.params)}
                       for e in status.errors],
            "install_command": status.install_line, "ray_version": status.ray_version,
            "cluster_ray_version": status.cluster_ray_version,
            "nodes": [dict(n.__dict__) for n in status.nodes],
            "gpus_total": status.gpus_total, "gpus_available": status.gpus_available,
            "cpus_total": status.cpus_total, "cpus_available": status.cpus_available,
            "notes": [self.catalog.text(key, locale, **params) for key, params in status.notes],
            "elapsed_s": status.elapsed_s,
        }

    # scripting -----------------------------------------------------------------------------------------
    def fleet_status_api(self) -> dict:
        """The proxy (state, URL, command with keys masked, server_id) and each node: models, health, KV use,
        requests running and waiting, unfinished, latency; `mixed_models` when nodes serve different names;
        `dropped`: nodes added through the console that LMDeploy's heartbeat has dropped since."""
        return self.proxy.fleet_status().as_dict()

    def proxy_log_api(self, lines: int = 200) -> str:
        """The last `lines` lines of the proxy's log."""
        numbers, _ = forms.convert_numbers({"lines": (lines, 200)})
        return "\n".join(self.proxy.log(max(1, min(int(numbers["lines"]), MAX_LOG_LINES))))

    # views ---------------------------------------------------------------------------------------------
    def refresh(self, server_pick: str | None, node_pick: str | None, port: Any = None, host: Any = None,
                routing_strategy: Any = None, api_keys: Any = None, disable_cache_status: Any = None,
                heartbeat_s: Any = None, request: gr.Request | None = None) -> tuple[Any, ...]:
        """Timer tick (the pickers, then the form's values as sent): the proxy, the command and the form's status,
        its nodes and the pickers, from one fleet_status() (the proxy's /nodes/status and each node's /health,
        /v1/models and /metrics, read in parallel)."""
        locale = locale_of(request)
        form = PROXY_FORM.parse({"port": port, "host": host, "routing_strategy": routing_strategy,
                                 "api_keys": api_keys, "disable_cache_status": disable_cache_status,
                                 "heartbeat_s": heartbeat_s})
        fleet = self.proxy.fleet_status()
        proxy = fleet.proxy
        live = proxy.exists and is_live(proxy.state)
        return (
            self.proxy_markdown(proxy, locale),
            *self._preview(form, proxy, locale),
            self.fleet_table(fleet, locale),
            self.fleet_notes(fleet, locale),
            self.server_choices(fleet, server_pick),
            self.node_choices(fleet, node_pick, locale),
            "\n".join(self.proxy.log(LOG_LINES)),
            gr.Button(interactive=not live),
            gr.Button(interactive=live),
        )

    def load_page(self, server_pick: str | None, node_pick: str | None, request: gr.Request) -> tuple[Any, ...]:
        """demo.load: a free port (or the running proxy's) with its command, and the current fleet, so a reload
        shows the truth."""
        snap = self.proxy.snapshot()
        port = snap.port if snap.exists and is_live(snap.state) else self.proxy.default_spec().port
        return (port, *self.refresh(server_pick, node_pick, port, request=request))

    def proxy_markdown(self, proxy: ProxySnapshot, locale: str) -> str:
        t = self.catalog.text
        if not proxy.exists:
            return t("fleet.msg.no_proxy", locale)
        state = proxy.state
        badge = f'<span class="state state-{state.lower()}">{self._state(state, locale)}</span>'
        lines = [f"**{t('fleet.detail.state', locale)}**: {badge} · {proxy.base_url}"
                 + (f" · pid {proxy.pid}" if proxy.pid and is_live(state) else "")]
        lines.append(f"- {t('fleet.detail.strategy', locale)}: `{proxy.routing_strategy}` · "
                     f"{t('fleet.detail.heartbeat', locale, seconds=proxy.heartbeat_s)}")
        if proxy.node_file:
            lines.append(f"- {t('fleet.detail.node_file', locale)}: `{proxy.node_file}`")
        else:
            lines.append(f"- {t('fleet.detail.no_node_file', locale)}")
        if proxy.has_api_key:
            lines.append(f"- {t('fleet.detail.api_key', locale)}")
        if state == ServerState.READY.value and proxy.server_id:
            lines.append(f"- **{t('fleet.detail.target', locale, id=proxy.server_id)}**")
        if state == ServerState.STARTING.value:
            lines.append(f"- {t('fleet.detail.starting', locale)}")
        if proxy.exit_code is not None:
            lines.append(f"- {t('fleet.detail.exit_code', locale, code=proxy.exit_code)}")
        if proxy.detail and state == ServerState.FAILED.value:
            lines.append(f"- {_code(proxy.detail)}")
        if state == ServerState.STOPPED.value and proxy.detail:
            lines.append(f"- {t('fleet.detail.stopped_after', locale, seconds=proxy.detail)}")
        return "\n".join(lines)

    def fleet_table(self, fleet: FleetStatus, locale: str) -> pd.DataFrame:
        t = self.catalog.text
        columns = [t(f"fleet.col.{c}", locale) for c in COLUMNS]
        rows = [[n.url, n.server_id or t("fleet.msg.remote", locale), ", ".join(short_model(m) for m in n.models),
                 self._health(n, locale), ", ".join(short_model(m) for m in n.served_models),
                 "" if n.kv_usage is None else f"{n.kv_usage * 100:.0f}%", _load(n), n.unfinished,
                 "" if n.latency_s is None else f"{n.latency_s * 1000:.0f} ms"] for n in fleet.nodes]
        return pd.DataFrame(rows, columns=columns)

    def fleet_notes(self, fleet: FleetStatus, locale: str) -> str:
        """The mixed-models warning, a node that does not answer, and what LMDeploy's heartbeat does about it."""
        t = self.catalog.text
        proxy = fleet.proxy
        if not (proxy.exists and is_live(proxy.state)):
            return ""
        if not fleet.answered:
            return t("fleet.msg.not_answering", locale)
        notes = []
        if fleet.mixed_models:
            models = ", ".join(_code(m) for m in fleet.models)  # the proxy's words: never markup
            notes.append("⚠ **" + t("fleet.msg.mixed_models", locale, models=models) + "**")
        dead = [n.url for n in fleet.nodes if not n.reachable]
        if dead:
            notes.append("⚠ " + t("fleet.msg.dead_nodes", locale, urls=", ".join(_code(u) for u in dead),
                                  seconds=proxy.heartbeat_s))
        if fleet.dropped:
            notes.append("↺ " + t("fleet.msg.dropped_nodes", locale,
                                  urls=", ".join(_code(u) for u in fleet.dropped)))
        if not fleet.nodes:
            notes.append(t("fleet.msg.no_nodes", locale))
        notes.append(t("fleet.msg.heartbeat_note", locale, seconds=proxy.heartbeat_s))
        return "\n\n".join(notes)

    def server_choices(self, fleet: FleetStatus, current: str | None) -> gr.Dropdown:
        """READY console servers that are not in the fleet yet (never the proxy itself)."""
        taken = {n.server_id for n in fleet.nodes if n.server_id} | {fleet.proxy.server_id}
        ready = [s for s in self.servers.snapshots() if s.state == ServerState.READY.value and s.id not in taken]
        choices = [(f"{s.id} · {short_model(s.model_id or s.model_path)} · {s.base_url}", s.id) for s in ready]
        ids = [c[1] for c in choices]
        return gr.Dropdown(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    def node_choices(self, fleet: FleetStatus, current: str | None, locale: str) -> gr.Dropdown:
        remote = self.catalog.text("fleet.msg.remote", locale)
        dropped = self.catalog.text("fleet.msg.dropped", locale)
        choices = [(f"{n.url} · {n.server_id or remote}", n.url) for n in fleet.nodes]
        choices += [(f"{url} · {dropped}", url) for url in fleet.dropped]  # removable: the console forgets them
        urls = [c[1] for c in choices]
        return gr.Dropdown(choices=choices, value=current if current in urls else (urls[0] if urls else None))

    # words ---------------------------------------------------------------------------------------------
    def _state(self, state: str, locale: str) -> str:
        return self.catalog.text(f"serve.state.{state}", locale)

    def _params(self, params: Mapping[str, str], locale: str) -> dict[str, str]:
        words = {}
        for key, value in params.items():
            if key in STATE_PARAMS and value in ServerState.__members__:
                words[key] = self._state(value, locale)
            elif key in FOREIGN_PARAMS:
                words[key] = _code(value)
            else:
                words[key] = html.escape(str(value))
        return words

    def _health(self, node: NodeStatus, locale: str) -> str:
        if node.health is None:
            return "✗ " + self.catalog.text("fleet.msg.unreachable", locale)
        if node.health == 404 and node.served_models:  # a server without /health (llama.cpp's): the heartbeat keeps it
            return "✓ " + self.catalog.text("fleet.msg.no_health_route", locale)
        return ("✓ " if node.health == 200 else "⚠ ") + str(node.health)


def _code(text: str) -> str:
    """Words that are not ours (a process's, the OS's) as inline code, backticks removed."""
    words = " ".join(str(text).replace("`", "'").split())
    return f"`{words}`" if words else ""


def _share(available: float | None, total: float) -> str:
    """"free / total" (a node that left reports nothing free)."""
    return f"{total:g}" if available is None else f"{available:g} / {total:g}"


def _load(node: NodeStatus) -> str:
    if node.running is None and node.waiting is None:
        return ""
    return f"{node.running or 0:g} / {node.waiting or 0:g}"


@dataclass(frozen=True)
class FleetTab:
    """What the app wires beyond the tab: its timer (active only while the tab is open) and its first view."""

    timer: gr.Timer
    on_open: tuple[tuple[Any, Any, Any], ...]


def build_fleet_tab(demo: gr.Blocks, handlers: FleetHandlers, i18n: gr.I18n) -> FleetTab:
    """Lay out the Fleet tab and wire its events."""
    v = ProxyValues()
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown(i18n("fleet.proxy_heading"))
            gr.Markdown(i18n("fleet.explain"))
            with gr.Row():
                port = gr.Number(value=v.port, precision=0, label=i18n("fleet.port.label"),
                                 info=i18n("fleet.port.info"), elem_id="fleet-port")
                routing = gr.Dropdown(list(ROUTING_STRATEGIES), value=v.routing_strategy,
                                      label=i18n("fleet.routing_strategy.label"),
                                      info=i18n("fleet.routing_strategy.info"), elem_id="fleet-routing")
                heartbeat = gr.Number(value=v.heartbeat_s, precision=0, label=i18n("fleet.heartbeat_s.label"),
                                      info=i18n("fleet.heartbeat_s.info"), elem_id="fleet-heartbeat")
            with gr.Row():
                host = gr.Textbox(value=v.host, label=i18n("fleet.host.label"), info=i18n("fleet.host.info"),
                                  elem_id="fleet-host")
                api_keys = gr.Textbox(value="", label=i18n("fleet.api_keys.label"), info=i18n("fleet.api_keys.info"),
                                      type="password", elem_id="fleet-api-keys")
                no_cache = gr.Checkbox(v.disable_cache_status, label=i18n("fleet.disable_cache_status.label"),
                                       info=i18n("fleet.disable_cache_status.info"), elem_id="fleet-no-cache")
            form_status = gr.Markdown(elem_id="fleet-form-status")
            command = gr.Code(label=i18n("fleet.command.label"), language="shell", interactive=False, lines=2,
                              max_lines=6, wrap_lines=True, elem_id="fleet-command")
            with gr.Row():
                start = gr.Button(i18n("fleet.start_button"), variant="primary", elem_id="fleet-start")
                stop = gr.Button(i18n("fleet.stop_button"), variant="stop", interactive=False, elem_id="fleet-stop")
            message = gr.Markdown(elem_id="fleet-message")
            proxy_view = gr.Markdown(elem_id="fleet-proxy")
            with gr.Accordion(i18n("fleet.log.label"), open=False):
                log = gr.Textbox(show_label=False, lines=10, max_lines=16, autoscroll=True, interactive=False,
                                 elem_id="fleet-log")
        with gr.Column(scale=6):
            gr.Markdown(i18n("fleet.nodes_heading"))
            with gr.Row():
                node_server = gr.Dropdown(label=i18n("fleet.node_server.label"), info=i18n("fleet.node_server.info"),
                                          choices=[], allow_custom_value=True, scale=3, elem_id="fleet-node-server")
                add_server = gr.Button(i18n("fleet.add_server_button"), scale=1, elem_id="fleet-add-server")
            with gr.Row():
                node_url = gr.Textbox(label=i18n("fleet.node_url.label"), placeholder="http://10.0.0.2:23333",
                                      scale=3, elem_id="fleet-node-url")
                node_key = gr.Textbox(label=i18n("fleet.node_key.label"), type="password", scale=2,
                                      elem_id="fleet-node-key")
                add_url = gr.Button(i18n("fleet.add_url_button"), scale=1, elem_id="fleet-add-url")
            with gr.Row():
                node_pick = gr.Dropdown(label=i18n("fleet.node_pick.label"), choices=[], allow_custom_value=True,
                                        scale=3, elem_id="fleet-node-pick")
                remove = gr.Button(i18n("fleet.remove_button"), scale=1, elem_id="fleet-remove")
            node_message = gr.Markdown(elem_id="fleet-node-message")
    table = gr.Dataframe(interactive=False, wrap=True, label=i18n("fleet.table.label"), elem_id="fleet-table",
                         column_widths=list(COLUMN_WIDTHS))
    notes = gr.Markdown(elem_id="fleet-notes")
    with gr.Accordion(i18n("fleet.beyond.heading"), open=False, elem_id="fleet-beyond"):
        gr.Markdown(i18n("fleet.beyond.attach_explain"))
        with gr.Row():
            attach_url = gr.Textbox(label=i18n("fleet.attach_url.label"),
                                    placeholder="http://10.0.0.2:23333", scale=3, elem_id="fleet-attach-url")
            attach_key = gr.Textbox(label=i18n("fleet.attach_key.label"), type="password", scale=2)
            attach = gr.Button(i18n("fleet.attach_button"), scale=1, elem_id="fleet-attach")
        attach_message = gr.Markdown(elem_id="fleet-attach-message")
        gr.Markdown(i18n("fleet.ray.explain"))
        r = RayValues()
        with gr.Row():
            head_host = gr.Textbox(label=i18n("fleet.ray.head_host.label"), placeholder="10.0.0.1", scale=2,
                                   elem_id="fleet-ray-head")
            ray_port = gr.Number(r.ray_port, precision=0, label=i18n("fleet.ray.ray_port.label"),
                                 elem_id="fleet-ray-port")
            ray_nodes = gr.Number(r.nodes, precision=0, label=i18n("fleet.ray.nodes.label"),
                                  elem_id="fleet-ray-nodes")
            gpus_per_node = gr.Number(r.gpus_per_node, precision=0, label=i18n("fleet.ray.gpus_per_node.label"),
                                      elem_id="fleet-ray-gpus")
        with gr.Row():
            ray_model = gr.Textbox(label=i18n("fleet.ray.model_path.label"),
                                   info=i18n("fleet.ray.model_path.info"), scale=3, elem_id="fleet-ray-model")
            ray_api_port = gr.Number(r.api_port, precision=0, label=i18n("fleet.ray.api_port.label"))
            ray_model_name = gr.Textbox(label=i18n("fleet.ray.model_name.label"))
            ray_ifname = gr.Textbox(label=i18n("fleet.ray.socket_ifname.label"),
                                    info=i18n("fleet.ray.socket_ifname.info"), placeholder="eth0")
        recipe_notes = gr.Markdown(elem_id="fleet-ray-notes")
        recipe = gr.Code(label=i18n("fleet.ray.recipe.label"), language="shell", interactive=False,
                         wrap_lines=True, elem_id="fleet-ray-recipe")
        with gr.Row():
            ray_address = gr.Textbox(label=i18n("fleet.ray.address.label"), info=i18n("fleet.ray.address.info"),
                                     placeholder="10.0.0.1:6379", scale=3, elem_id="fleet-ray-address")
            check = gr.Button(i18n("fleet.ray.check_button"), scale=1, elem_id="fleet-ray-check")
        ray_summary = gr.Markdown(elem_id="fleet-ray-status")
        ray_nodes_table = gr.Dataframe(interactive=False, wrap=True, label=i18n("fleet.ray.nodes_table.label"),
                                       elem_id="fleet-ray-table")

    form = ProxyForm(port=port, host=host, routing_strategy=routing, api_keys=api_keys,
                     disable_cache_status=no_cache, heartbeat_s=heartbeat)
    inputs = PROXY_FORM.inputs(form)
    timer = gr.Timer(TICK_S, active=False)
    quiet: dict[str, Any] = {"show_progress": "hidden", "api_visibility": "private"}
    view = [proxy_view, command, form_status, table, notes, node_server, node_pick, log, start, stop]
    refresh = (handlers.refresh, [node_server, node_pick, *inputs], view)

    raw: dict[str, Any] = {**forms.RAW_INPUTS, **quiet}  # the form's values reach Form.parse as sent
    gr.on([c.change for c in inputs], PROXY_FORM.bind(handlers.preview_proxy), inputs, [command, form_status],
          trigger_mode="always_last", concurrency_limit=None, **raw)
    proxy_url = gr.Textbox(visible=False)  # start_proxy's second value, for scripts
    start.click(PROXY_FORM.bind(handlers.start_proxy), inputs, [message, proxy_url], api_name="start_proxy",
                concurrency_id="proxy_control", **forms.RAW_INPUTS).then(*refresh, **raw)
    stop.click(handlers.stop_proxy, None, message, api_name="stop_proxy", concurrency_id="proxy_control").then(
        *refresh, **raw)
    add_url.click(handlers.add_node, [node_url, node_key], node_message, api_name="add_node",
                  concurrency_id="proxy_control").then(*refresh, **raw)
    add_server.click(handlers.add_server, node_server, node_message, concurrency_id="proxy_control",
                     api_visibility="private").then(*refresh, **raw)
    remove.click(handlers.remove_node, node_pick, node_message, api_name="remove_node",
                 concurrency_id="proxy_control").then(*refresh, **raw)
    attach.click(handlers.attach_remote, [attach_url, attach_key], attach_message, api_visibility="private").then(
        *refresh, **raw)
    timer.tick(*refresh, concurrency_limit=None, **raw)
    ray_form = RayForm(head_host=head_host, ray_port=ray_port, nodes=ray_nodes, gpus_per_node=gpus_per_node,
                       model_path=ray_model, api_port=ray_api_port, model_name=ray_model_name,
                       socket_ifname=ray_ifname)
    ray_inputs = RAY_FORM.inputs(ray_form)
    gr.on([c.change for c in ray_inputs], RAY_FORM.bind(handlers.ray_recipe), ray_inputs, [recipe, recipe_notes],
          trigger_mode="always_last", concurrency_limit=None, **forms.RAW_INPUTS, **quiet)
    # One child process of LMDeploy's Python per check (about a second, up to 20 s): a few at a time.
    check.click(handlers.check_cluster, [ray_address, *ray_inputs], [ray_summary, ray_nodes_table],
                concurrency_id="ray_status", concurrency_limit=2, **forms.RAW_INPUTS, api_visibility="private")
    gr.api(handlers.ray_status_api, api_name="ray_status", concurrency_id="ray_status", concurrency_limit=2)
    demo.load(handlers.load_page, [node_server, node_pick], [port, *view], **quiet)
    gr.api(handlers.fleet_status_api, api_name="fleet_status")
    gr.api(handlers.proxy_log_api, api_name="proxy_log")
    return FleetTab(timer, (refresh,))
