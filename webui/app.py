"""Composition root: builds the Blocks from injected services; knows nothing about processes itself."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.i18n.catalog import Catalog
from webui.services.container import Services
from webui.ui.serve_tab import ServeHandlers, build_serve_tab

CSS = """
.state { padding: 2px 10px; border-radius: 10px; font-size: 0.9em; }
.state-ready { background: #d1fae5; color: #065f46; }
.state-starting, .state-stopping { background: #fef3c7; color: #92400e; }
.state-failed, .state-lost, .state-unreachable { background: #fee2e2; color: #991b1b; }
.state-stopped { background: #e5e7eb; color: #374151; }
#serve-detail progress { width: 40%; vertical-align: middle; }
#serve-log textarea { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
"""


def build_i18n(catalog: Catalog) -> gr.I18n:
    return gr.I18n(**catalog.messages)


def build_app(services: Services, catalog: Catalog | None = None) -> tuple[gr.Blocks, dict[str, Any]]:
    """The console's Blocks and the keyword arguments that launch() must receive with it."""
    catalog = catalog or Catalog.load()
    i18n = build_i18n(catalog)
    with gr.Blocks(title="LMDeploy Console") as demo:
        gr.Markdown(i18n("app.header"), elem_id="app-header")
        with gr.Tabs():
            with gr.Tab(i18n("tabs.serve"), id="serve"):
                build_serve_tab(demo, ServeHandlers(services.servers, services.roots, catalog), i18n)
    launch_kwargs: dict[str, Any] = {"i18n": i18n, "css": CSS, "theme": gr.themes.Soft()}
    return demo, launch_kwargs
