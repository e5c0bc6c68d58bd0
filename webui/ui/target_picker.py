"""Where the Chat and Tools tabs send requests: a READY console server, or any OpenAI-compatible URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.i18n.catalog import Catalog
from webui.services.chat import ERROR_KINDS, ChatError, ChatService, Endpoint
from webui.services.serve import ServerManager
from webui.services.server_states import ServerState
from webui.ui.common import locale_of, short_model

OTHER_URL = "url"


class PageError(ChatError):
    """A ChatError the UI raises itself: the page words it from the catalog (`key`, `params`) in its own
    language, while scripts (chat, run_tools) get `kind` and the plain `message`."""

    def __init__(self, kind: str, message: str, key: str, **params: object) -> None:
        super().__init__(kind, message)
        self.key = key
        self.params = params


@dataclass
class TargetPicker:
    """The picker's components; `inputs()` is what every request handler takes first."""

    target: gr.Dropdown
    base_url: gr.Textbox
    api_key: gr.Textbox
    model: gr.Dropdown
    url_row: gr.Row
    list_models: gr.Button

    def inputs(self) -> list[gr.components.Component]:
        return [self.target, self.base_url, self.api_key, self.model]


class TargetHandlers:
    """Resolves the picker into an Endpoint; shared by the Chat and Tools tabs."""

    def __init__(self, chat: ChatService, servers: ServerManager, catalog: Catalog) -> None:
        self.chat = chat
        self.servers = servers
        self.catalog = catalog

    def choices(self) -> list[tuple[str, str]]:
        ready = [s for s in self.servers.snapshots() if s.state == ServerState.READY]
        ready.sort(key=lambda s: not s.active)
        return [(f"{'★ ' if s.active else ''}{s.id} · {short_model(s.model_id)} · {s.base_url}", s.id)
                for s in ready]

    def refresh_targets(self, current: str | None, request: gr.Request) -> tuple[gr.Dropdown, gr.Row]:
        """READY servers (the active one first) and "Other URL"; keeps the user's pick while it is valid."""
        choices = self.choices()
        other = (self.catalog.text("target.other_url", locale_of(request)), OTHER_URL)
        ids = [c[1] for c in choices]
        value = current if current in ids or current == OTHER_URL else (ids[0] if ids else OTHER_URL)
        return gr.Dropdown(choices=[*choices, other], value=value), gr.Row(visible=value == OTHER_URL)

    def list_models(self, target: str | None, base_url: str, api_key: str, request: gr.Request
                    ) -> tuple[gr.Dropdown, str]:
        """The models the target lists (GET /v1/models), or a readable error."""
        try:
            endpoint = self.endpoint(target, base_url, api_key, "")
            ids = self.chat.models(endpoint)
        except ChatError as exc:
            return gr.Dropdown(choices=[], value=None), self.error_text(exc, locale_of(request))
        return gr.Dropdown(choices=ids, value=endpoint.model or (ids[0] if ids else None)), ""

    def pick_target(self, target: str | None, base_url: str, api_key: str, request: gr.Request
                    ) -> tuple[gr.Row, gr.Dropdown, str]:
        """Show the URL fields for "Other URL"; for a server, fill the model it serves."""
        if target == OTHER_URL:
            return gr.Row(visible=True), gr.skip(), ""
        models, message = self.list_models(target, base_url, api_key, request)
        return gr.Row(visible=False), models, message

    def endpoint(self, target: str | None, base_url: str, api_key: str, model: str | None) -> Endpoint:
        """OTHER_URL (or no target with a URL) → that URL; a server id → that server; nothing → the active one."""
        if target == OTHER_URL or (not target and (base_url or "").strip()):
            if not (base_url or "").strip():
                raise PageError("no_server", "enter a base URL or start a server on the Serve tab",
                                "target.msg.no_url")
            try:
                return self.chat.endpoint_for_url(base_url, api_key or "", model or "")
            except ValueError as exc:
                raise PageError("bad_url", str(exc), "errors.bad_url", url=base_url.strip()) from exc
        endpoint = self.chat.endpoint_for_server(target or "")
        return Endpoint(endpoint.base_url, endpoint.api_key, model or endpoint.model, endpoint.lmdeploy,
                        endpoint.server_id)

    def error_text(self, exc: ChatError, locale: str) -> str:
        """⚠ and the catalog's explanation of the error kind, with the server's (or the client's) own words
        quoted as code: they are not ours to translate."""
        if isinstance(exc, PageError):
            return "⚠ " + self.catalog.text(exc.key, locale, **exc.params)
        key = f"chat.errors.{exc.kind}" if exc.kind in ERROR_KINDS else "chat.errors.server"
        words = " ".join(exc.message.replace("`", "'").split())
        return "⚠ " + self.catalog.text(key, locale, message=f"`{words}`" if words else "",
                                        status=str(exc.status or ""))


def build_target_picker(i18n: gr.I18n, prefix: str) -> TargetPicker:
    with gr.Row():
        # No value until the page loads: then the active READY server is picked, or "Other URL" when none.
        target = gr.Dropdown(label=i18n("target.label"), info=i18n("target.info"), choices=[], value=None,
                             allow_custom_value=True, scale=3, elem_id=f"{prefix}-target")
        model = gr.Dropdown(label=i18n("target.model.label"), choices=[], allow_custom_value=True, scale=2,
                            elem_id=f"{prefix}-model")
        list_models = gr.Button(i18n("target.list_models"), scale=1, size="sm")
    with gr.Row(visible=True) as url_row:
        base_url = gr.Textbox(label=i18n("target.base_url.label"), placeholder="http://127.0.0.1:23333", scale=3,
                              elem_id=f"{prefix}-base-url")
        api_key = gr.Textbox(label=i18n("target.api_key.label"), type="password", scale=2)
    return TargetPicker(target, base_url, api_key, model, url_row, list_models)


def wire_target_picker(picker: TargetPicker, handlers: TargetHandlers, message: gr.Markdown) -> None:
    quiet: dict[str, Any] = {"show_progress": "hidden", "api_visibility": "private"}
    picker.target.change(handlers.pick_target, [picker.target, picker.base_url, picker.api_key],
                         [picker.url_row, picker.model, message], **quiet)
    gr.on([picker.list_models.click, picker.base_url.submit, picker.base_url.blur, picker.api_key.blur],
          handlers.list_models, [picker.target, picker.base_url, picker.api_key], [picker.model, message],
          trigger_mode="always_last", **quiet)
