"""The Demos tab: publish a READY server as a guest demo (a link and its QR code), see its use, revoke it.

Guests never reach this tab: they get the guest app on its own port (webui/guest_app.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from webui.i18n.catalog import Catalog
from webui.services.demos import DemoManager, DemoSnapshot, DemoSpec
from webui.services.serve import ServerManager
from webui.services.server_states import ServerState
from webui.ui import forms
from webui.ui.common import format_errors, locale_of, picked_row


@dataclass(frozen=True)
class DemoValues:
    """The publish form's values; the field names are publish_demo's API parameters."""

    server_id: str = forms.text("", max_chars=64)
    title: str = forms.text("", max_chars=4000)
    welcome: str = forms.text("", max_chars=16000)
    system_prompt: str = forms.text("", max_chars=16000)
    temperature: float = forms.number(DemoSpec.temperature)
    top_p: float = forms.number(DemoSpec.top_p)
    max_new_tokens: int = forms.whole(DemoSpec.max_new_tokens)
    rate_per_minute: int = forms.whole(DemoSpec.rate_per_minute)
    max_concurrent: int = forms.whole(DemoSpec.max_concurrent)
    max_guests: int = forms.whole(DemoSpec.max_guests)
    expires_minutes: int = forms.whole(DemoSpec.expires_minutes)
    transcripts: bool = forms.flag(DemoSpec.transcripts)

    def to_spec(self) -> DemoSpec:
        return DemoSpec(
            server_id=self.server_id.strip(), title=self.title.strip(), welcome=self.welcome.strip(),
            system_prompt=self.system_prompt.strip(), temperature=self.temperature, top_p=self.top_p,
            max_new_tokens=self.max_new_tokens, rate_per_minute=self.rate_per_minute,
            max_concurrent=self.max_concurrent, max_guests=self.max_guests, expires_minutes=self.expires_minutes,
            transcripts=self.transcripts)


DEMO_FORM = forms.Form(DemoValues)


@dataclass(frozen=True)
class DemoForm:
    server_id: gr.Dropdown
    title: gr.Textbox
    welcome: gr.Textbox
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Number
    rate_per_minute: gr.Number
    max_concurrent: gr.Number
    max_guests: gr.Number
    expires_minutes: gr.Number
    transcripts: gr.Checkbox


class DemosHandlers:
    """Event handlers of the Demos tab; they command the DemoManager and read its snapshots."""

    def __init__(self, demos: DemoManager, servers: ServerManager, guest_url: str, qr_dir: Path,
                 catalog: Catalog, share_state: Callable[[], str] = lambda: "off") -> None:
        self.demos = demos
        self.servers = servers
        self.guest_url = guest_url.rstrip("/")
        self.qr_dir = qr_dir
        self.catalog = catalog
        self.share_state = share_state  # "off", "unreachable" or the share link the guest app got

    def link(self, snap: DemoSnapshot) -> str:
        return self.guest_url + snap.link_path if snap.link_path else ""

    def server_choices(self, current: str | None) -> gr.Dropdown:
        ready = [s for s in self.servers.snapshots() if s.state == ServerState.READY]
        choices = [(f"{s.id} · {s.model_id.rsplit('/', 1)[-1]}", s.id) for s in ready]
        ids = {s.id for s in ready}
        return gr.Dropdown(choices=choices, value=current if current in ids else (ready[0].id if ready else None))

    def publish_demo(self, form: forms.Parsed[DemoValues], request: gr.Request | None) -> tuple[str, str, str | None]:
        """Publish a demo of a READY server; returns a message, the guest link ("" if refused) and its QR code."""
        locale = locale_of(request)
        if form.errors:
            return format_errors(self.catalog, form.errors, locale, "demos"), "", None
        snap, _token, errors = self.demos.publish(form.values.to_spec())
        if snap is None:
            return format_errors(self.catalog, errors, locale, "demos"), "", None
        link = self.link(snap)
        message = self.catalog.text("demos.msg.published", locale, id=snap.id, link=link)
        share = self.share_state()
        if share == "unreachable":
            message += "\n\n" + self.catalog.text("demos.msg.share_unreachable", locale)
        elif share.startswith("http"):  # the public link reaches the same guest app
            public = share.rstrip("/") + snap.link_path
            message += "\n\n" + self.catalog.text("demos.msg.share_link", locale, link=public)
            link = public
        return message, link, self._qr(snap.id, link)

    def _qr(self, demo_id: str, link: str) -> str | None:
        import segno

        self.qr_dir.mkdir(parents=True, exist_ok=True)
        path = self.qr_dir / f"{demo_id}.png"
        buffer = io.BytesIO()
        segno.make(link, error="m").save(buffer, kind="png", scale=6, border=2)
        path.write_bytes(buffer.getvalue())
        return str(path)

    def from_chat(self, target: str | None, system_prompt: str, temperature: float, top_p: float,
                  max_tokens: float | None, request: gr.Request) -> tuple[Any, ...]:
        """Share this chat: the Demos form filled from the Chat tab's server and settings, and that tab shown."""
        locale = locale_of(request)
        server = self.servers.get(target) if target else self.servers.active()
        if server is None or server.state != ServerState.READY:
            return (gr.Dropdown(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Tabs(),
                    self.catalog.text("demos.msg.chat_needs_server", locale))
        return (self.server_choices(server.id), system_prompt or "", temperature, top_p,
                int(max_tokens or DemoSpec.max_new_tokens), gr.Tabs(selected="demos"),
                self.catalog.text("demos.msg.from_chat", locale, id=server.id))

    def revoke_demo(self, demo_id: str, request: gr.Request | None = None) -> str:
        """End a demo now: its link stops working and its guests' open replies are closed."""
        locale = locale_of(request)
        try:
            snap = self.demos.revoke(demo_id)
        except KeyError:
            return self.catalog.text("demos.msg.unknown", locale, id=demo_id)
        (self.qr_dir / f"{snap.id}.png").unlink(missing_ok=True)  # its link no longer opens anything
        return self.catalog.text("demos.msg.revoked", locale, id=snap.id)

    def list_demos_api(self) -> list[dict]:
        """Every demo: state (live, back_soon, expired, revoked), server, settings, the guest link."""
        return [{**d.as_dict(), "link": self.link(d)} for d in self.demos.snapshots()]

    def demo_usage_api(self, demo_id: str) -> dict:
        """Guests now, requests, tokens, refusals by limit, errors and the latest audit rows ({} if unknown)."""
        try:
            return self.demos.usage(demo_id)
        except KeyError:
            return {}

    def table(self, request: gr.Request) -> pd.DataFrame:
        locale = locale_of(request)
        t = self.catalog.text
        columns = [t("quantize.col.id", locale), *(t(f"demos.col.{c}", locale) for c in (
            "state", "server", "title", "guests", "requests", "tokens", "refused"))]
        rows = []
        for d in self.demos.snapshots():
            u = self.demos.usage(d.id, audit_rows=0)
            rows.append([d.id, t(f"demos.state.{d.state}", locale), d.server_id, d.spec.get("title", ""),
                         u["guests_now"], u["requests"], u["tokens"], sum(u["refusals"].values())])
        return pd.DataFrame(rows, columns=columns)

    def detail(self, demo_id: str | None, request: gr.Request) -> tuple[str, pd.DataFrame]:
        locale = locale_of(request)
        t = self.catalog.text
        columns = [t(f"demos.audit.{c}", locale) for c in ("at", "guest", "outcome", "tokens", "ttft", "text")]
        snap = self.demos.get(demo_id) if demo_id else None
        if snap is None:
            return t("demos.msg.no_selection", locale), pd.DataFrame(columns=columns)
        u = self.demos.usage(snap.id)
        refusals = ", ".join(f"{t(f'demo.outcome.{k}', locale)} × {n}" for k, n in u["refusals"].items()) or "—"
        lines = [f"### `{snap.id}` · {t(f'demos.state.{snap.state}', locale)}",
                 t("demos.detail.use", locale, guests=u["guests_now"], total=u["guests_total"],
                   requests=u["requests"], tokens=u["tokens"], errors=u["errors"]),
                 f"{t('demos.detail.refusals', locale)}: {refusals}"]
        if self.link(snap):
            lines.append(f"{t('demos.detail.link', locale)}: `{self.link(snap)}`")
        rows = [[_clock(r["at"]), r["guest"], t(f"demo.outcome.{r['outcome']}", locale) if r["outcome"] != "ok"
                 else "✓", r["completion_tokens"], f"{r['ttft_ms']:.0f} ms" if r["ttft_ms"] is not None else "",
                 r["text"][:200]] for r in u["audit"]]
        return "\n\n".join(lines), pd.DataFrame(rows, columns=columns)

    def refresh(self, demo_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        snaps = self.demos.snapshots()
        ids = {d.id for d in snaps}
        choices = [(f"{d.id} · {d.spec.get('title', '') or d.server_id}", d.id) for d in snaps]
        selected = gr.Dropdown(choices=choices) if demo_id in ids else gr.Dropdown(
            choices=choices, value=snaps[0].id if snaps else None)
        return (self.table(request), selected, *self.detail(demo_id, request))

    def load_page(self, server_id: str | None, demo_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return (self.server_choices(server_id), *self.refresh(demo_id, request))

    def pick_from_table(self, table: pd.DataFrame, evt: gr.SelectData) -> str | None:
        return picked_row(table, evt, column=0)


def _clock(at: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(at))


@dataclass(frozen=True)
class DemosTab:
    """What the app wires across tabs: the timer, the form (Share this chat fills it) and the message."""

    timer: gr.Timer
    form: DemoForm
    message: gr.Markdown


def build_demos_tab(demo: gr.Blocks, handlers: DemosHandlers, i18n: gr.I18n) -> DemosTab:
    """Lay out the Demos tab and wire its events."""
    d = DemoValues()
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown(i18n("demos.form_heading"))
            server_id = gr.Dropdown(label=i18n("demos.server_id.label"), info=i18n("demos.server_id.info"),
                                    choices=[], elem_id="demos-server")
            title = gr.Textbox(label=i18n("demos.title.label"), elem_id="demos-title")
            welcome = gr.Textbox(label=i18n("demos.welcome.label"), lines=2, elem_id="demos-welcome")
            system_prompt = gr.Textbox(label=i18n("demos.system_prompt.label"), lines=2,
                                       info=i18n("demos.system_prompt.info"))
            with gr.Row():
                temperature = gr.Slider(0, 2, value=d.temperature, step=0.05, label=i18n("demos.temperature.label"))
                top_p = gr.Slider(0.05, 1, value=d.top_p, step=0.05, label=i18n("demos.top_p.label"))
            with gr.Row():
                max_new_tokens = gr.Number(d.max_new_tokens, precision=0, label=i18n("demos.max_new_tokens.label"))
                rate_per_minute = gr.Number(d.rate_per_minute, precision=0,
                                            label=i18n("demos.rate_per_minute.label"))
                max_concurrent = gr.Number(d.max_concurrent, precision=0, label=i18n("demos.max_concurrent.label"))
            with gr.Row():
                max_guests = gr.Number(d.max_guests, precision=0, label=i18n("demos.max_guests.label"))
                expires_minutes = gr.Number(d.expires_minutes, precision=0,
                                            label=i18n("demos.expires_minutes.label"))
                transcripts = gr.Checkbox(d.transcripts, label=i18n("demos.transcripts.label"),
                                          info=i18n("demos.transcripts.info"))
            publish = gr.Button(i18n("demos.publish_button"), variant="primary", elem_id="demos-publish")
            message = gr.Markdown(elem_id="demos-message")
            link = gr.Textbox(label=i18n("demos.link.label"), interactive=False, elem_id="demos-link")
            qr = gr.Image(label=i18n("demos.qr.label"), interactive=False, height=220, elem_id="demos-qr")
        with gr.Column(scale=6):
            gr.Markdown(i18n("demos.list_heading"))
            table = gr.Dataframe(interactive=False, wrap=True, elem_id="demos-table")
            with gr.Row():
                selected = gr.Dropdown(label=i18n("demos.selected.label"), choices=[], scale=3,
                                       elem_id="demos-selected")
                revoke = gr.Button(i18n("demos.revoke_button"), variant="stop", scale=1, elem_id="demos-revoke")
            revoke_message = gr.Markdown(elem_id="demos-revoke-message")
            detail = gr.Markdown(elem_id="demos-detail")
            audit = gr.Dataframe(interactive=False, wrap=True, elem_id="demos-audit")
    form = DemoForm(server_id=server_id, title=title, welcome=welcome, system_prompt=system_prompt,
                    temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                    rate_per_minute=rate_per_minute, max_concurrent=max_concurrent, max_guests=max_guests,
                    expires_minutes=expires_minutes, transcripts=transcripts)
    inputs = DEMO_FORM.inputs(form)
    quiet: dict[str, Any] = {"show_progress": "hidden", "api_visibility": "private"}
    timer = gr.Timer(2.0, active=False)
    publish.click(DEMO_FORM.bind(handlers.publish_demo), inputs, [message, link, qr], api_name="publish_demo",
                  **forms.RAW_INPUTS)
    revoke.click(handlers.revoke_demo, selected, revoke_message, api_name="revoke_demo")
    table.select(handlers.pick_from_table, table, selected, api_visibility="private")
    selected.change(handlers.detail, selected, [detail, audit], **quiet)
    timer.tick(handlers.load_page, [server_id, selected], [server_id, table, selected, detail, audit], **quiet)
    demo.load(handlers.load_page, [server_id, selected], [server_id, table, selected, detail, audit], **quiet)
    gr.api(handlers.list_demos_api, api_name="list_demos")
    gr.api(handlers.demo_usage_api, api_name="demo_usage")
    return DemosTab(timer, form, message)
