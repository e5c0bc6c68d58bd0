"""The guest app: a second composition root, chat only, built on `DemoGate` and nothing else of the console.

It is launched on its own port beside the admin console (see cli.py), so a demo link, a LAN address or a
public share link exposes this app alone: its only API name is `chat`, it serves no files, and every request
carries the demo's token, which the gate checks (revoked, expired, server down, the owner's limits).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from webui.i18n.catalog import Catalog
from webui.services.demos import MAX_HISTORY_TURNS, MAX_MESSAGE_CHARS, DemoGate, guest_id
from webui.ui.common import locale_of

MAX_BODY_BYTES = 256 << 10  # a guest request (message + history) is a few kB; more is refused before Gradio reads it
# Routes a chat page never needs: uploads, and files Gradio would serve from its cache (which the console's own
# app shares in this process: exports, QR codes of live links).
CLOSED_PREFIXES = ("/gradio_api/upload", "/gradio_api/file=", "/file=", "/gradio_api/upload_progress")


class GuestGuard:
    """ASGI middleware of the guest app: refuses closed routes and oversized bodies before Gradio sees them."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if path.startswith(CLOSED_PREFIXES):
            await _answer(send, 404, b"not here")
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            if scope.get("method") in ("POST", "PUT", "PATCH") or not length.isdigit():
                await _answer(send, 413, b"too large")
                return
        received = 0

        async def limited() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise ValueError("request body over the guest limit")
            return message

        await self.app(scope, limited, send)


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


GUEST_CSS = """
#guest-ended { font-size: 1.2em; padding: 2em 0; }
"""


def _client_of(request: gr.Request | None) -> tuple[str, str]:
    host = getattr(getattr(request, "client", None), "host", "") or ""
    return str(host), str(getattr(request, "session_hash", "") or "")


class GuestHandlers:
    """The guest page's two events: open a demo by its link's token, and chat within its limits."""

    def __init__(self, gate: DemoGate, catalog: Catalog) -> None:
        self.gate = gate
        self.catalog = catalog

    def open_page(self, request: gr.Request) -> tuple[str, str, gr.Markdown, gr.Column]:
        """Read the token from the link (`?demo=…`); show the owner's words, or why the demo is not open."""
        token = str((getattr(request, "query_params", None) or {}).get("demo", ""))[:200]
        locale = locale_of(request)
        view = self.gate.view(token)
        if not view.open:
            reason = view.reason or "unknown"
            return token, f"## {view.title}" if view.title else "", gr.Markdown(
                self.catalog.text(f"demo.page.{reason}", locale), visible=True), gr.Column(visible=False)
        header = f"## {view.title or view.model}\n\n{view.welcome}".strip()
        header += "\n\n" + self.catalog.text("demo.page.model", locale, model=view.model,
                                             tokens=view.max_new_tokens)
        return token, header, gr.Markdown(visible=False), gr.Column(visible=True)

    def chat(self, message: str, history: list[dict[str, Any]] | None, token: str = "",
             request: gr.Request = None) -> Iterator[tuple[list[dict[str, Any]], Any, Any]]:  # type: ignore[assignment]
        """Send one message to the demo's model; the reply streams in. Refusals are said in the page's words."""
        locale = locale_of(request)
        text = str(message or "")[:MAX_MESSAGE_CHARS + 1]
        turns = [t for t in (history or [])[-MAX_HISTORY_TURNS:] if isinstance(t, dict)]  # echoed on every piece
        if not text.strip():
            yield turns, "", ""
            return
        shown = [*turns, {"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        reply = ""
        cleared = False  # the box and the notice are sent once, not with every piece of the reply
        address, session = _client_of(request)
        for event in self.gate.chat(str(token or ""), guest_id(address, session), text, turns, address=address):
            if event.text:
                reply += event.text
                shown[-1] = {"role": "assistant", "content": reply}
                yield shown, gr.skip() if cleared else "", gr.skip() if cleared else ""
                cleared = True
            if event.done:
                notice = self.catalog.text(f"demo.outcome.{event.refused}", locale) if event.refused else ""
                if event.refused and not reply:
                    shown = shown[:-2]  # a refused message is not kept in the conversation
                    yield shown, text, notice
                else:
                    yield shown, "", notice


def build_guest_app(gate: DemoGate, catalog: Catalog | None = None) -> tuple[gr.Blocks, dict[str, Any]]:
    """The guest Blocks and the launch() keyword arguments it needs (its own i18n and CSS)."""
    catalog = catalog or Catalog.load()
    # Only the guest page's own words travel to the browser (the admin console's texts stay with it).
    i18n = gr.I18n(**{locale: {k: v for k, v in table.items() if k.startswith("demo.page.")}
                      for locale, table in catalog.messages.items()})
    handlers = GuestHandlers(gate, catalog)
    with gr.Blocks(title="LMDeploy demo") as app:
        # A hidden box, not a gr.State: a guest's script must be able to send the token as `chat`'s parameter.
        token = gr.Textbox(visible=False, max_length=200, elem_id="guest-token")
        header = gr.Markdown(elem_id="guest-header")
        ended = gr.Markdown(visible=False, elem_id="guest-ended")
        with gr.Column(visible=False) as chat_column:
            chatbot = gr.Chatbot(elem_id="guest-chat", height=480, label=i18n("demo.page.chat"))
            with gr.Row():
                box = gr.Textbox(placeholder=i18n("demo.page.placeholder"), show_label=False, scale=5,
                                 max_length=MAX_MESSAGE_CHARS, elem_id="guest-box")
                send = gr.Button(i18n("demo.page.send"), variant="primary", scale=1, elem_id="guest-send")
            notice = gr.Markdown(elem_id="guest-notice")
        app.load(handlers.open_page, None, [token, header, ended, chat_column], api_visibility="private")
        send.click(handlers.chat, [box, chatbot, token], [chatbot, box, notice], api_name="chat",
                   concurrency_limit=None)
        box.submit(handlers.chat, [box, chatbot, token], [chatbot, box, notice], api_visibility="private",
                   concurrency_limit=None)
    from starlette.middleware import Middleware

    return app, {"i18n": i18n, "css": GUEST_CSS, "theme": gr.themes.Soft(), "max_file_size": "1kb",
                 "footer_links": [],  # no "Use via API" page for guests
                 "app_kwargs": {"middleware": [Middleware(GuestGuard)]}}
