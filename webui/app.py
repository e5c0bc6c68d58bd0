"""Composition root: builds the Blocks from injected services; knows nothing about processes itself."""

from __future__ import annotations

import gc
from typing import Any

import gradio as gr

from webui.i18n.catalog import Catalog
from webui.services.container import Services
from webui.settings import is_loopback
from webui.ui.chat_tab import ChatHandlers, build_chat_tab
from webui.ui.compare_tab import CompareHandlers, build_compare_tab
from webui.ui.demos_tab import DemosHandlers, build_demos_tab
from webui.ui.fleet_tab import FleetHandlers, build_fleet_tab
from webui.ui.forms import RAW_INPUTS
from webui.ui.memory_tab import MemoryHandlers, build_memory_tab
from webui.ui.models_tab import MODELS_FORM, ModelsHandlers, build_models_tab
from webui.ui.quantize_tab import QuantizeHandlers, build_quantize_tab
from webui.ui.serve_tab import ServeHandlers, build_serve_tab
from webui.ui.target_picker import TargetHandlers
from webui.ui.tools_tab import ToolsHandlers, build_tools_tab

CSS = """
.state { padding: 2px 10px; border-radius: 10px; font-size: 0.9em; }
.state-ready { background: #d1fae5; color: #065f46; }
.state-starting, .state-stopping { background: #fef3c7; color: #92400e; }
.state-sleeping { background: #e0e7ff; color: #3730a3; }
.state-failed, .state-lost, .state-unreachable { background: #fee2e2; color: #991b1b; }
.state-stopped, .state-cancelled, .state-queued { background: #e5e7eb; color: #374151; }
.state-running, .state-cancelling { background: #fef3c7; color: #92400e; }
.state-succeeded { background: #d1fae5; color: #065f46; }
#quantize-detail progress { width: 40%; vertical-align: middle; }
#quantize-log textarea { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
#serve-detail progress { width: 40%; vertical-align: middle; }
#serve-log textarea { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
#models-detail progress { width: 40%; vertical-align: middle; }
#models-detail .download-files td { padding: 1px 8px; border: none; }
#models-detail .download-files progress { width: 160px; }
#models-log textarea { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
"""


def prepare_to_serve(demo: gr.Blocks) -> None:
    """What the console does between building the app and launching it: its queue settings, then gc.freeze().

    NOTE: the built app (Gradio, pandas, plotly, the services) is hundreds of thousands of long-lived objects;
    freezing them keeps Python's full garbage collections from walking them all, which held one button in twenty
    for about half a second (measured with benchmarks/ui_latency: a stop's max 548 ms, 83 ms frozen)."""
    demo.queue(max_size=64, default_concurrency_limit=4)
    gc.freeze()


def build_i18n(catalog: Catalog) -> gr.I18n:
    return gr.I18n(**catalog.messages)


# The tabs whose timers poll their services, in the order of build_app's `timers`.
TIMED_TABS = ("models", "quantize", "serve", "memory", "demos", "compare", "fleet")


def _timers(on: str | None):
    """A handler that switches the tabs' timers: only the visible tab (`on`, None for one without a timer) polls
    its services."""

    def switch() -> tuple[gr.Timer, ...]:
        return tuple(gr.Timer(active=name == on) for name in TIMED_TABS)

    return switch


def build_app(services: Services, catalog: Catalog | None = None) -> tuple[gr.Blocks, dict[str, Any]]:
    """The console's Blocks and the keyword arguments that launch() must receive with it."""
    catalog = catalog or Catalog.load()
    i18n = build_i18n(catalog)
    serve = ServeHandlers(services.servers, services.roots, catalog, gpu=services.gpu)
    quantize = QuantizeHandlers(services.jobs, services.roots, services.settings, catalog)
    targets = TargetHandlers(services.chat, services.servers, catalog)
    chat = ChatHandlers(services.chat, targets, catalog)
    tools = ToolsHandlers(services.tool_loop, targets, services.servers, services.roots, catalog)
    memory = MemoryHandlers(services.memory, services.servers, services.roots, catalog)
    models = ModelsHandlers(services.downloads, catalog)
    demos = DemosHandlers(services.demos, services.servers, services.settings.guest_url,
                          services.settings.state_dir / "demos", catalog,
                          share_state=lambda: services.store.get_pref("demo.share", "off"))
    compare = CompareHandlers(services.compare, services.servers, services.jobs, services.roots, catalog)
    # LMDeploy's interpreter, as the services were built with: the Ray cluster is read with its `ray`.
    fleet = FleetHandlers(services.proxy, services.servers, catalog, services.settings.lmdeploy_interpreter)
    with gr.Blocks(title="LMDeploy Console") as demo:
        gr.Markdown(i18n("app.header"), elem_id="app-header")
        if not is_loopback(services.settings.host):  # --share publishes the guest app only
            gr.Markdown(i18n("app.exposed"), elem_id="app-exposed")
        with gr.Tabs() as tabs:
            # The loop starts with a model: a newcomer with nothing on disk gets one here.
            with gr.Tab(i18n("tabs.models"), id="models") as models_tab:
                models_ui = build_models_tab(demo, models, i18n)
            with gr.Tab(i18n("tabs.quantize"), id="quantize") as quantize_tab:
                serve_this, job, quantize_message, quantize_timer, quantize_model, quantize_get = build_quantize_tab(
                    demo, quantize, i18n)
            with gr.Tab(i18n("tabs.serve"), id="serve") as serve_tab:
                serve_form, serve_timer, serve_get = build_serve_tab(demo, serve, i18n)
            with gr.Tab(i18n("tabs.chat"), id="chat") as chat_tab:
                chat_picker, chat_share = build_chat_tab(chat, targets, i18n)
            with gr.Tab(i18n("tabs.tools"), id="tools") as tools_tab:
                tools_picker = build_tools_tab(tools, targets, i18n)
            with gr.Tab(i18n("tabs.memory"), id="memory") as memory_tab:
                memory_timer, memory_open = build_memory_tab(memory, i18n)
            with gr.Tab(i18n("tabs.compare"), id="compare") as compare_tab:
                compare_ui = build_compare_tab(demo, compare, i18n)
            with gr.Tab(i18n("tabs.fleet"), id="fleet") as fleet_tab:
                fleet_ui = build_fleet_tab(demo, fleet, i18n)
            with gr.Tab(i18n("tabs.demos"), id="demos") as demos_tab:
                demos_ui = build_demos_tab(demo, demos, i18n)
        # Only the visible tab polls its services.
        timers = [models_ui.timer, quantize_timer, serve_timer, memory_timer, demos_ui.timer, compare_ui.timer,
                  fleet_ui.timer]  # as TIMED_TABS
        quiet: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}
        demos_tab.select(_timers("demos"), None, timers, **quiet)
        compare_tab.select(_timers("compare"), None, timers, **quiet)
        models_tab.select(_timers("models"), None, timers, **quiet)
        quantize_tab.select(_timers("quantize"), None, timers, **quiet)
        serve_tab.select(_timers("serve"), None, timers, **quiet)
        memory_tab.select(_timers("memory"), None, timers, **quiet)
        for fn, inputs, outputs in memory_open:
            memory_tab.select(fn, inputs, outputs, **quiet)
        demo.load(_timers("models"), None, timers, **quiet)
        fleet_tab.select(_timers("fleet"), None, timers, **quiet)
        for fn, inputs, outputs in fleet_ui.on_open:
            fleet_tab.select(fn, inputs, outputs, **quiet)
        # Chat and Tools poll nothing; opening them lists the READY servers (the active one first).
        for tab, picker in ((chat_tab, chat_picker), (tools_tab, tools_picker)):
            tab.select(_timers(None), None, timers, **quiet)
            tab.select(targets.refresh_targets, picker.target, [picker.target, picker.url_row], **quiet)
            demo.load(targets.refresh_targets, picker.target, [picker.target, picker.url_row], **quiet)
        serve_this.click(quantize.serve_this, job,
                         [serve_form.model_path, serve_form.model_format, tabs, quantize_message],
                         api_visibility="private").then(_timers("serve"), None, timers, **quiet)
        models_ui.serve_this.click(models.serve_this, models_ui.selected,
                                   [serve_form.model_path, serve_form.model_format, tabs, models_ui.message],
                                   api_visibility="private").then(
            _timers("serve"), None, timers, **quiet)
        # A repo id typed in a picker that is not on disk: offer its download (never fetched at Start).
        models_inputs = MODELS_FORM.inputs(models_ui.form)
        for model_picker, get_it in ((serve_form.model_path, serve_get), (quantize_model, quantize_get)):
            model_picker.change(models.offer_download, model_picker, get_it, **quiet)
            get_it.click(models.open_in_models, model_picker, [models_ui.form.repo_id, tabs], **quiet).then(
                _timers("models"), None, timers, **quiet).then(
                MODELS_FORM.bind(models.list_files), models_inputs, [models_ui.preview, models_ui.files],
                **quiet, **RAW_INPUTS)
        # Share this chat: the Demos form starts from the Chat tab's server and settings.
        chat_share.button.click(
            demos.from_chat, [chat_picker.target, chat_share.system_prompt, chat_share.temperature, chat_share.top_p,
                              chat_share.max_tokens],
            [demos_ui.form.server_id, demos_ui.form.system_prompt, demos_ui.form.temperature, demos_ui.form.top_p,
             demos_ui.form.max_new_tokens, tabs, demos_ui.message], **quiet).then(
            _timers("demos"), None, timers, **quiet)
        models_ui.quantize_this.click(models.quantize_this, models_ui.selected,
                                      [quantize_model, tabs, models_ui.message],
                                      api_visibility="private").then(
            _timers("quantize"), None, timers, **quiet)
    launch_kwargs: dict[str, Any] = {"i18n": i18n, "css": CSS, "theme": gr.themes.Soft()}
    return demo, launch_kwargs
