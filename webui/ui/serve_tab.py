"""The Serve tab: a form for `lmdeploy serve api_server`, its command preview, and the servers it runs."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from webui.i18n.catalog import Catalog
from webui.services.fit import GpuFit, check_fit
from webui.services.gpu import GpuProbe
from webui.services.models import ModelInfo, ModelRoots, read_model_info
from webui.services.placement import EXECUTORS, parse_gpus
from webui.services.planner import MIB
from webui.services.serve import ServerManager, ServerSnapshot, normalize_base_url
from webui.services.serve_spec import (
    BACKENDS,
    KV_POLICIES,
    MODEL_FORMATS,
    TOOL_CALL_PARSERS,
    FieldError,
    ServerSpec,
)
from webui.services.server_states import ServerState, is_live
from webui.ui import forms
from webui.ui.common import duration, format_errors, locale_of, model_choices, picked_row, short_model, state_refusal

LOG_LINES = 40  # the box grows to show them all, so the newest line is always in view
# Detail parameters that carry the OS's or a program's own words (quoted as code in the page).
FOREIGN_PARAMS = frozenset({"program", "reason", "text"})


@dataclass(frozen=True)
class ServeValues:
    """The Serve form's values; the field names are start_server's and preview_command's API parameters."""

    model_path: str = forms.path(required=True)
    backend: str = forms.text(ServerSpec.backend, max_chars=64)
    model_format: str = forms.text(ServerSpec.model_format, max_chars=64)
    kv_policy: str = forms.text(ServerSpec.kv_policy, max_chars=64)
    cache_max_entry_count: float = forms.number(ServerSpec.cache_max_entry_count)
    session_len: int = forms.whole(ServerSpec.session_len)
    max_batch_size: int = forms.whole(ServerSpec.max_batch_size)
    tp: int = forms.whole(ServerSpec.tp)
    port: int = forms.whole(ServerSpec.port)
    host: str = forms.host(ServerSpec.host)
    model_name: str = forms.text(ServerSpec.model_name)
    api_keys: str = forms.text("", max_chars=4096)  # space- or comma-separated
    tool_call_parser: str = forms.text(ServerSpec.tool_call_parser, max_chars=64)
    eager_mode: bool = forms.flag(ServerSpec.eager_mode)
    extra_args: str = forms.text(ServerSpec.extra_args, max_chars=4096)
    gpus: str = forms.numbers("", max_chars=400)  # NVML numbers, "0,1"; empty = every GPU visible
    executor: str = forms.text(ServerSpec.executor, max_chars=16)

    def to_spec(self) -> ServerSpec:
        gpus = parse_gpus(self.gpus)  # unreadable text goes on as typed: the spec check names the field
        return ServerSpec(
            model_path=self.model_path.strip(), backend=self.backend, model_format=self.model_format,
            kv_policy=self.kv_policy, cache_max_entry_count=self.cache_max_entry_count, session_len=self.session_len,
            max_batch_size=self.max_batch_size, tp=self.tp, port=self.port, host=self.host,
            model_name=self.model_name, api_keys=forms.key_list(self.api_keys),
            tool_call_parser=self.tool_call_parser, eager_mode=self.eager_mode, extra_args=self.extra_args,
            gpus=gpus if isinstance(gpus, tuple) else self.gpus,  # type: ignore[arg-type]
            executor=self.executor.strip(),
        )


SERVE_FORM = forms.Form(ServeValues)


@dataclass(frozen=True)
class ServeForm:
    """The form's components, one per ServeValues field and named like it (SERVE_FORM finds them by name)."""

    model_path: gr.Dropdown
    backend: gr.Radio
    model_format: gr.Dropdown
    kv_policy: gr.Dropdown
    cache_max_entry_count: gr.Slider
    session_len: gr.Number
    max_batch_size: gr.Number
    tp: gr.Number
    port: gr.Number
    host: gr.Textbox
    model_name: gr.Textbox
    api_keys: gr.Textbox
    tool_call_parser: gr.Dropdown
    eager_mode: gr.Checkbox
    extra_args: gr.Textbox
    gpus: gr.Textbox
    executor: gr.Dropdown


class ServeHandlers:
    """Event handlers of the Serve tab; they read and command the ServerManager and never touch processes.

    preview_command and start_server take the form as one parsed value (bind them with SERVE_FORM.bind).
    `gpu` (the app's one NVML probe) lets the preview say whether the launch fits on its GPUs; without it, or
    without NVML, nothing is said.
    """

    def __init__(self, manager: ServerManager, roots: ModelRoots, catalog: Catalog,
                 gpu: GpuProbe | None = None) -> None:
        self.manager = manager
        self.roots = roots
        self.catalog = catalog
        self.gpu = gpu

    # form ----------------------------------------------------------------------------------------
    def problems(self, form: forms.Parsed[ServeValues]) -> list[FieldError]:
        """The form's own errors, then the service's checks of the rest (empty: the server can start)."""
        checked = self.manager.check(form.values.to_spec())
        return forms.merge_errors(form.errors, checked if isinstance(checked, list) else [])

    def preview_command(self, form: forms.Parsed[ServeValues], request: gr.Request | None) -> tuple[str, str]:
        """The exact command (keys masked) and what is wrong with the form right now."""
        locale = locale_of(request)
        errors = self.problems(form)
        status = format_errors(self.catalog, errors, locale, "serve") if errors else (
            "**" + self.catalog.text("serve.msg.ready_to_start", locale) + "**"
        )
        # A refused value was replaced by its default: a command with that default would be a guess.
        command = "" if form.errors else self.manager.preview(form.values.to_spec())
        return command, status

    def preview_placement(self, form: forms.Parsed[ServeValues], request: gr.Request | None) -> str:
        """Under the command: what the executor `auto` chose, and whether the launch fits on each of its GPUs
        with what they hold now (one short line a GPU)."""
        locale = locale_of(request)
        if form.errors:
            return ""
        spec = form.values.to_spec()
        lines = []
        if note := self.manager.executor_note(spec):
            lines.append("ℹ " + self.catalog.text(note, locale))
        checked = self.manager.check(spec)
        refused = {e.field for e in checked} if isinstance(checked, list) else set()
        if not refused & {"model_path", "gpus", "tp"}:  # the GPUs are known and the model reads
            devices = self.gpu.devices() if self.gpu is not None else []
            usable = self.manager.usable_gpus()
            if not usable.opaque:  # under MIG slices NVML's GPUs are not the ones the server gets
                lines += [self.fit_line(fit, locale) for fit in check_fit(spec, self.roots, devices, usable.indices)]
        return "\n\n".join(lines)

    def fit_line(self, fit: GpuFit, locale: str) -> str:
        """`GPU 1 (H200): 61,230 of 143,771 MiB predicted ✓`, or what does not fit."""
        params = {"gpu": str(fit.gpu), "name": html.escape(fit.name), "predicted": f"{fit.predicted_bytes / MIB:,.0f}",
                  "total": f"{fit.total_bytes / MIB:,.0f}", "used": f"{fit.used_bytes / MIB:,.0f}",
                  "free": f"{max(fit.total_bytes - fit.used_bytes, 0) / MIB:,.0f}",
                  "needs": f"{fit.base_bytes / MIB:,.0f}", "weights": f"{fit.weights_bytes / MIB:,.0f}"}
        return self.catalog.text("serve.fit.fits" if fit.fits else "serve.fit.does_not_fit", locale, **params)

    def refresh_models(self, current: str | None) -> gr.Dropdown:
        return model_choices(self.roots, current)

    def suggest_parser(self, model_path: str | None, current: str | None, request: gr.Request) -> gr.Dropdown:
        """Fill the parser from the model's architecture when the user has not picked one."""
        resolved = self.roots.resolve(model_path or "")
        info = read_model_info(resolved) if isinstance(resolved, Path) else None
        suggestion = info.suggested_parser if isinstance(info, ModelInfo) else ""
        info_text = self.catalog.text("serve.tool_call_parser.info", locale_of(request))
        if suggestion:
            info_text += " " + self.catalog.text("serve.msg.parser_suggested", locale_of(request), parser=suggestion)
        return gr.Dropdown(value=current or suggestion or "", info=info_text)

    # actions -------------------------------------------------------------------------------------
    def start_server(self, form: forms.Parsed[ServeValues], request: gr.Request | None) -> tuple[str, str, int]:
        """Start an api_server; returns a message, the new server's id ("" if refused) and a free port for the next."""
        locale = locale_of(request)
        if form.errors:
            return format_errors(self.catalog, self.problems(form), locale, "serve"), "", form.values.port
        outcome = self.manager.start(form.values.to_spec())
        if outcome.server is None:
            return format_errors(self.catalog, outcome.errors, locale, "serve"), "", form.values.port
        if outcome.server.state == ServerState.FAILED:  # the process could not even be spawned: say so here too
            msg = self.catalog.text("serve.msg.spawn_failed", locale, id=outcome.server.id)
        else:
            msg = self.catalog.text("serve.msg.started", locale, id=outcome.server.id, url=outcome.server.base_url)
        return msg, outcome.server.id, self.manager.suggest_port()

    def stop_server(self, server_id: str | None, request: gr.Request) -> str:
        locale = locale_of(request)
        if not server_id:
            return self.catalog.text("serve.msg.no_selection", locale)
        try:
            snap = self.manager.stop(server_id)
        except KeyError:
            return self.catalog.text("errors.unknown_server", locale, id=server_id)
        if snap.state == ServerState.STOPPING:  # stop() returns at once; the monitor sees the processes go
            return self.catalog.text("serve.msg.stopping", locale, id=snap.id)
        state = self.catalog.text(f"serve.state.{snap.state}", locale)
        if snap.state != ServerState.STOPPED:  # it had ended before (failed, lost): nothing was stopped
            return self.catalog.text("serve.msg.not_running", locale, id=snap.id, state=state)
        return self.catalog.text("serve.msg.stopped", locale, id=snap.id,
                                 detail=self.detail_text(snap, locale) if snap.detail else state)

    def detail_text(self, s: ServerSnapshot, locale: str) -> str:
        """The snapshot's detail worded in `locale`; the OS's words in it (a spawn failure's reason, an old
        row's text) are quoted, never worded as ours."""
        params = {k: f"`{v.replace('`', chr(39))}`" if k in FOREIGN_PARAMS and v else html.escape(v)
                  for k, v in s.detail_params.items()}
        return self.catalog.text(s.detail, locale, **params)

    def restart_server(self, server_id: str | None, request: gr.Request) -> str:
        locale = locale_of(request)
        if not server_id:
            return self.catalog.text("serve.msg.no_selection", locale)
        try:
            outcome = self.manager.restart(server_id)
        except KeyError:
            return self.catalog.text("errors.unknown_server", locale, id=server_id)
        except ValueError:
            return self.catalog.text("errors.not_owned", locale)
        if outcome.errors:
            return format_errors(self.catalog, outcome.errors, locale, "serve")
        return self.catalog.text("serve.msg.restarted", locale, id=server_id)

    def attach_server(self, base_url: str, api_key: str, request: gr.Request) -> tuple[str, str]:
        """Watch a server started elsewhere; returns a message and its id ("" if the URL is refused)."""
        locale = locale_of(request)
        try:
            url = normalize_base_url(base_url)
        except ValueError:
            return self.catalog.text("errors.bad_url", locale, url=base_url), ""
        snap = self.manager.attach(url, api_key.strip())
        msg = self.catalog.text("serve.msg.attached", locale, id=snap.id, url=snap.base_url,
                                state=self.catalog.text(f"serve.state.{snap.state}", locale))
        return msg, snap.id

    def set_active_server(self, server_id: str | None, request: gr.Request) -> str:
        locale = locale_of(request)
        if not server_id:
            return self.catalog.text("serve.msg.no_selection", locale)
        try:
            snap = self.manager.set_active(server_id)
        except KeyError:
            return self.catalog.text("errors.unknown_server", locale, id=server_id)
        return self.catalog.text("serve.msg.active", locale, id=snap.id, url=snap.base_url)

    def remove_server(self, server_id: str | None, request: gr.Request) -> str:
        locale = locale_of(request)
        if not server_id:
            return self.catalog.text("serve.msg.no_selection", locale)
        try:
            self.manager.forget(server_id)
        except KeyError:
            return self.catalog.text("errors.unknown_server", locale, id=server_id)
        except ValueError:
            return self.catalog.text("errors.stop_first", locale)
        return self.catalog.text("serve.msg.removed", locale, id=server_id)

    # views ---------------------------------------------------------------------------------------
    def list_servers(self, request: gr.Request) -> pd.DataFrame:
        """Every server with state, model, config and uptime (the active one marked ★)."""
        locale = locale_of(request)
        t = self.catalog.text
        rows = []
        for s in self.manager.snapshots():
            config = (
                f"{s.backend} · KV {s.kv_policy} · {s.cache_max_entry_count:g} · tp {s.tp}"
                if s.owned else t("serve.msg.attached_config", locale)
            )
            rows.append({
                t("serve.col.active", locale): "★" if s.active else "",
                t("serve.col.id", locale): s.id,
                t("serve.col.state", locale): t(f"serve.state.{s.state}", locale),
                t("serve.col.model", locale): short_model(s.model_id or s.model_path),
                t("serve.col.config", locale): config,
                t("serve.col.gpus", locale): (",".join(map(str, s.gpus)) or t("serve.msg.all_gpus", locale))
                if s.owned else "",
                t("serve.col.uptime", locale): duration(s.uptime_seconds),
            })
        columns = [t(f"serve.col.{c}", locale) for c in ("active", "id", "state", "model", "config", "gpus", "uptime")]
        return pd.DataFrame(rows, columns=columns)

    def server_log(self, server_id: str | None) -> str:
        """The last lines of the server's log (ANSI colours and progress-bar redraws removed)."""
        if not server_id:
            return ""
        return "\n".join(self.manager.log(server_id, LOG_LINES))

    def server_detail(self, server_id: str | None, request: gr.Request) -> str:
        locale = locale_of(request)
        snap = self.manager.get(server_id) if server_id else None
        if snap is None:
            return self.catalog.text("serve.msg.no_selection", locale)
        return self._detail_markdown(snap, locale)

    def refresh(self, server_id: str | None, request: gr.Request, tick: bool = True) -> tuple[
        pd.DataFrame, gr.Dropdown, str, str, gr.Button, gr.Button, gr.Button, gr.Button, gr.Button, gr.Button
    ]:
        """Timer tick: table, server choices, detail, log and the buttons that fit its state, from snapshots."""
        return (
            self.list_servers(request),
            self._server_choices(server_id, locale_of(request), keep=tick),
            self.server_detail(server_id, request),
            self.server_log(server_id),
            *self.controls(server_id),
        )

    def show_selected(self, server_id: str | None, request: gr.Request) -> tuple[
        str, gr.Button, gr.Button, gr.Button, gr.Button, gr.Button, gr.Button
    ]:
        """A server was picked: its detail and the buttons that fit its state."""
        return (self.server_detail(server_id, request), *self.controls(server_id))

    def controls(self, server_id: str | None) -> tuple[gr.Button, gr.Button, gr.Button, gr.Button, gr.Button,
                                                        gr.Button]:
        """Stop, Restart, Use in Chat, Remove, Sleep and Wake, usable only where they mean something: Stop while
        the server lives (also while STOPPING: it cancels a pending restart), Restart for a server started here,
        Use in Chat and Sleep when it is READY, Remove once it is down, Wake when it sleeps."""
        snap = self.manager.get(server_id) if server_id else None
        live = snap is not None and is_live(snap.state)
        ready = snap is not None and snap.state == ServerState.READY
        return (gr.Button(interactive=live), gr.Button(interactive=snap is not None and snap.owned),
                gr.Button(interactive=ready), gr.Button(interactive=snap is not None and not live),
                gr.Button(interactive=ready), gr.Button(interactive=snap is not None and
                                                        snap.state == ServerState.SLEEPING))

    def sleep_server(self, server_id: str | None, request: gr.Request) -> str:
        """Free a READY server's KV cache (LMDeploy's POST /sleep); it keeps its process and port."""
        return self._control(server_id, request, wake=False)

    def wake_server(self, server_id: str | None, request: gr.Request) -> str:
        """Give a sleeping server its KV cache back (POST /wakeup): READY again."""
        return self._control(server_id, request, wake=True)

    def _control(self, server_id: str | None, request: gr.Request, wake: bool) -> str:
        locale = locale_of(request)
        if not server_id:
            return self.catalog.text("serve.msg.no_selection", locale)
        try:
            outcome = self.manager.wake(server_id) if wake else self.manager.sleep(server_id)
        except KeyError:
            return self.catalog.text("errors.unknown_server", locale, id=server_id)
        if outcome.error:
            return state_refusal(self.catalog, outcome.error, outcome.params, locale)
        return self.catalog.text("serve.msg.woke" if wake else "serve.msg.slept", locale, id=server_id,
                                 seconds=f"{outcome.seconds or 0:.2f}")

    def pick_from_table(self, table: pd.DataFrame, evt: gr.SelectData) -> str | None:
        """Clicking a row selects that server."""
        return picked_row(table, evt, column=1)

    def load_page(self, server_id: str | None, request: gr.Request) -> tuple[
        gr.Dropdown, int, pd.DataFrame, gr.Dropdown, str, str, gr.Button, gr.Button, gr.Button, gr.Button,
        gr.Button, gr.Button
    ]:
        """demo.load: models, a free port and the current servers, so a reload shows the truth."""
        active = self.manager.active()
        selected = server_id or (active.id if active else None)
        if selected is None:
            servers = self.manager.snapshots()
            selected = servers[0].id if servers else None
        return (self.refresh_models(None), self.manager.suggest_port(),
                *self.refresh(selected, request, tick=False))  # a load sets the selection

    # scripting -----------------------------------------------------------------------------------
    def list_servers_api(self) -> list[dict]:
        """Every server as a JSON object (state, model id, base URL, timings, hint); API keys never included."""
        return [s.as_dict() for s in self.manager.snapshots()]

    def server_log_api(self, server_id: str, lines: int = 200) -> str:
        """The last `lines` lines of a server's log."""
        return "\n".join(self.manager.log(server_id, max(1, min(int(lines), 5000))))

    def select_server(self, server_id: str | None, current: str | None, request: gr.Request) -> gr.Dropdown:
        """After an action: list the servers again and select the one it touched (if any)."""
        return self._server_choices(server_id or current, locale_of(request))

    # helpers -------------------------------------------------------------------------------------
    def _server_choices(self, selected: str | None, locale: str, keep: bool = False) -> gr.Dropdown:
        """The servers as choices; with `keep` (a timer tick) a valid selection is not sent back, so a tick that
        read it before the user picked another cannot undo the pick."""
        servers = self.manager.snapshots()
        choices = [(f"{s.id} · {self.catalog.text(f'serve.state.{s.state}', locale)} · "
                    f"{short_model(s.model_id) or s.base_url}", s.id) for s in servers]
        ids = {s.id for s in servers}
        if keep and selected in ids:
            return gr.Dropdown(choices=choices)
        value = selected if selected in ids else (servers[0].id if servers else None)
        return gr.Dropdown(choices=choices, value=value)

    def _detail_markdown(self, s: ServerSnapshot, locale: str) -> str:
        t = self.catalog.text
        state = t(f"serve.state.{s.state}", locale)
        lines = [f"### <span class='state state-{s.state.lower()}'>{state}</span> `{s.id}`"
                 + (" ★" if s.active else "")]
        if s.state == ServerState.STARTING:
            phase = t(f"serve.phase.{s.phase}", locale)
            pct = int(round(s.progress * 100))
            lines.append(f"{t('serve.detail.phase', locale)}: **{phase}** "
                         f"<progress value='{pct}' max='100'></progress> {pct}%")
        elif s.state == ServerState.STOPPING:
            lines.append(t("serve.detail.stopping", locale))
        lines.append(f"- {t('serve.detail.base_url', locale)}: `{s.base_url}/v1`")
        if s.model_id:
            lines.append(f"- {t('serve.detail.model_id', locale)}: `{s.model_id}`")
        if s.ready_seconds is not None:
            lines.append(f"- {t('serve.detail.ready_in', locale)}: {s.ready_seconds:.1f} s")
        if s.uptime_seconds is not None and is_live(s.state):
            lines.append(f"- {t('serve.detail.uptime', locale)}: {duration(s.uptime_seconds)}")
        if s.gpu_blocks:
            lines.append(f"- {t('serve.detail.kv_blocks', locale)}: {s.gpu_blocks:,}")
        if s.has_api_key:
            lines.append(f"- {t('serve.detail.api_key', locale)}")
        if s.exit_code is not None:
            lines.append(f"- {t('serve.detail.exit_code', locale)}: {s.exit_code}")
        if s.state in (ServerState.FAILED, ServerState.LOST):
            hint_key = s.hint or "hints.unknown"
            lines.append(f"\n> **{t('serve.detail.hint', locale)}**: {t(hint_key, locale)}")
            if s.hint_line:
                lines.append(f"\n```text\n{s.hint_line}\n```")
        if s.detail:
            lines.append(f"- {self.detail_text(s, locale)}")
        if s.command:
            lines.append(f"\n```bash\n{s.command}\n```")
        return "\n".join(lines)


def build_serve_tab(demo: gr.Blocks, handlers: ServeHandlers, i18n: gr.I18n) -> tuple[ServeForm, gr.Timer,
                                                                                      gr.Button]:
    """Lay out the Serve tab inside the current Blocks and wire its events; returns the form, its timer and the
    button that offers a repo id's download (the app wires it to the Models tab)."""
    default = handlers.manager.default_spec()
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown(i18n("serve.form_heading"))
            with gr.Row():
                model_path = gr.Dropdown(
                    label=i18n("serve.model_path.label"), info=i18n("serve.model_path.info"),
                    choices=[], value=None, allow_custom_value=True, filterable=True, scale=5,
                    elem_id="serve-model-path",
                )
                refresh_models = gr.Button(i18n("serve.refresh_models"), scale=1, size="sm")
            get_model = gr.Button(i18n("models.get_it_button"), visible=False, size="sm", variant="primary",
                                  elem_id="serve-get-model")
            with gr.Row():
                backend = gr.Radio(list(BACKENDS), value=default.backend, label=i18n("serve.backend.label"),
                                   info=i18n("serve.backend.info"), elem_id="serve-backend")
                model_format = gr.Dropdown(list(MODEL_FORMATS), value=default.model_format,
                                           label=i18n("serve.model_format.label"),
                                           info=i18n("serve.model_format.info"))
            with gr.Row():
                kv_policy = gr.Dropdown(
                    [(f"{name} ({num})", name) for name, num in KV_POLICIES.items()], value=default.kv_policy,
                    label=i18n("serve.kv_policy.label"), info=i18n("serve.kv_policy.info"),
                )
                cache_fraction = gr.Slider(
                    0.05, 0.95, value=default.cache_max_entry_count, step=0.05,
                    label=i18n("serve.cache_max_entry_count.label"),
                    info=i18n("serve.cache_max_entry_count.info"), elem_id="serve-cache-fraction",
                )
            with gr.Row():
                port = gr.Number(value=default.port, precision=0, label=i18n("serve.port.label"),
                                 info=i18n("serve.port.info"), elem_id="serve-port")
                tp = gr.Number(value=1, precision=0, minimum=1, label=i18n("serve.tp.label"),
                               info=i18n("serve.tp.info"))
                tool_call_parser = gr.Dropdown(
                    ["", *TOOL_CALL_PARSERS], value="", label=i18n("serve.tool_call_parser.label"),
                    info=i18n("serve.tool_call_parser.info"),
                )
            with gr.Row():
                gpus = gr.Textbox(value="", label=i18n("serve.gpus.label"), info=i18n("serve.gpus.info"),
                                  placeholder=i18n("serve.gpus.placeholder"), elem_id="serve-gpus")
                executor = gr.Dropdown(list(EXECUTORS), value=default.executor, label=i18n("serve.executor.label"),
                                       info=i18n("serve.executor.info"), elem_id="serve-executor")
            with gr.Accordion(i18n("serve.advanced"), open=False):
                with gr.Row():
                    session_len = gr.Number(value=0, precision=0, minimum=0, label=i18n("serve.session_len.label"),
                                            info=i18n("serve.session_len.info"))
                    max_batch_size = gr.Number(value=0, precision=0, minimum=0,
                                               label=i18n("serve.max_batch_size.label"),
                                               info=i18n("serve.max_batch_size.info"))
                    eager_mode = gr.Checkbox(False, label=i18n("serve.eager_mode.label"),
                                             info=i18n("serve.eager_mode.info"))
                with gr.Row():
                    model_name = gr.Textbox(value="", label=i18n("serve.model_name.label"),
                                            info=i18n("serve.model_name.info"))
                    api_keys = gr.Textbox(value="", label=i18n("serve.api_keys.label"),
                                          info=i18n("serve.api_keys.info"), type="password")
                    host = gr.Textbox(value=default.host, label=i18n("serve.host.label"), info=i18n("serve.host.info"))
                extra_args = gr.Textbox(value="", label=i18n("serve.extra_args.label"),
                                        info=i18n("serve.extra_args.info"),
                                        placeholder=i18n("serve.extra_args.placeholder"), elem_id="serve-extra-args")
            command = gr.Code(label=i18n("serve.command.label"), language="shell", interactive=False,
                              elem_id="serve-command")
            placement = gr.Markdown(elem_id="serve-placement")
            form_status = gr.Markdown(elem_id="serve-form-status")
            with gr.Row():
                start = gr.Button(i18n("serve.start_button"), variant="primary", elem_id="serve-start")
        with gr.Column(scale=6):
            gr.Markdown(i18n("serve.servers_heading"))
            servers_table = gr.Dataframe(interactive=False, wrap=True, elem_id="serve-servers")
            with gr.Row():
                # allow_custom_value: scripts pass ids of servers created after the page was built.
                selected = gr.Dropdown(label=i18n("serve.selected.label"), choices=[], scale=3,
                                       allow_custom_value=True, elem_id="serve-selected")
                stop = gr.Button(i18n("serve.stop_button"), variant="stop", elem_id="serve-stop", scale=1)
                restart = gr.Button(i18n("serve.restart_button"), scale=1)
                make_active = gr.Button(i18n("serve.active_button"), scale=1)
                remove = gr.Button(i18n("serve.remove_button"), scale=1, size="sm")
            with gr.Row():
                sleep = gr.Button(i18n("serve.sleep_button"), scale=1, size="sm", elem_id="serve-sleep")
                wake = gr.Button(i18n("serve.wake_button"), scale=1, size="sm", elem_id="serve-wake")
            message = gr.Markdown(elem_id="serve-message")
            detail = gr.Markdown(elem_id="serve-detail")
            log = gr.Textbox(label=i18n("serve.log.label"), lines=14, max_lines=LOG_LINES, autoscroll=True,
                             interactive=False, elem_id="serve-log")
            with gr.Accordion(i18n("serve.attach.heading"), open=False):
                with gr.Row():
                    attach_url = gr.Textbox(label=i18n("serve.attach_url.label"),
                                            placeholder="http://127.0.0.1:23333", scale=3)
                    attach_key = gr.Textbox(label=i18n("serve.attach_key.label"), type="password", scale=2)
                    attach = gr.Button(i18n("serve.attach_button"), scale=1)

    form = ServeForm(
        model_path=model_path, backend=backend, model_format=model_format, kv_policy=kv_policy,
        cache_max_entry_count=cache_fraction, session_len=session_len, max_batch_size=max_batch_size, tp=tp,
        port=port, host=host, model_name=model_name, api_keys=api_keys, tool_call_parser=tool_call_parser,
        eager_mode=eager_mode, extra_args=extra_args, gpus=gpus, executor=executor,
    )
    inputs = SERVE_FORM.inputs(form)
    timer = gr.Timer(1.0)
    quiet: dict[str, Any] = {"show_progress": "hidden", "concurrency_limit": None}

    # always_last: "Serve this" changes the model and its format at once; the last change must win.
    gr.on([c.change for c in inputs], SERVE_FORM.bind(handlers.preview_command), inputs, [command, form_status],
          api_name="preview_command", trigger_mode="always_last", **forms.RAW_INPUTS, **quiet).then(
        SERVE_FORM.bind(handlers.preview_placement), inputs, placement, api_visibility="private",
        **forms.RAW_INPUTS, **quiet)
    model_path.change(handlers.suggest_parser, [model_path, tool_call_parser], tool_call_parser,
                      api_visibility="private", **quiet)
    # Rescanning fills a dropdown: a page action, not a script's (folders are listed with the choices).
    refresh_models.click(handlers.refresh_models, model_path, model_path, api_visibility="private")
    touched = gr.Textbox(visible=False)  # the id an action returned, for scripts and to select it here
    start.click(SERVE_FORM.bind(handlers.start_server), inputs, [message, touched, port], api_name="start_server",
                concurrency_id="server_control", **forms.RAW_INPUTS).then(
        handlers.select_server, [touched, selected], selected, api_visibility="private")
    stop.click(handlers.stop_server, selected, message, api_name="stop_server", concurrency_id="server_control")
    restart.click(handlers.restart_server, selected, message, api_name="restart_server",
                  concurrency_id="server_control")
    make_active.click(handlers.set_active_server, selected, message, api_name="set_active_server")
    sleep.click(handlers.sleep_server, selected, message, api_name="sleep_server", concurrency_id="server_control")
    wake.click(handlers.wake_server, selected, message, api_name="wake_server", concurrency_id="server_control")
    remove.click(handlers.remove_server, selected, message, api_name="remove_server").then(
        handlers.select_server, [touched, selected], selected, api_visibility="private")
    attach.click(handlers.attach_server, [attach_url, attach_key], [message, touched], api_name="attach_server").then(
        handlers.select_server, [touched, selected], selected, api_visibility="private")
    servers_table.select(handlers.pick_from_table, servers_table, selected, api_visibility="private")
    controls = [stop, restart, make_active, remove, sleep, wake]
    selected.change(handlers.show_selected, selected, [detail, *controls], api_visibility="private", **quiet)
    timer.tick(handlers.refresh, selected, [servers_table, selected, detail, log, *controls],
               api_visibility="private", **quiet)
    demo.load(handlers.load_page, selected, [model_path, port, servers_table, selected, detail, log, *controls],
              api_visibility="private")
    # JSON read endpoints for scripts (gradio_client), independent of what the page shows.
    gr.api(handlers.list_servers_api, api_name="list_servers")
    gr.api(handlers.server_log_api, api_name="server_log")
    return form, timer, get_model
