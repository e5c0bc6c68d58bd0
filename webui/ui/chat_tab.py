"""The Chat tab: streaming multi-turn chat with any OpenAI-compatible server, with TTFT and tokens/s per reply.

Two histories, kept apart: the chatbot shows the conversation, a gr.State holds the OpenAI messages sent,
the numbers of each reply and the id of the request in flight (so Stop can close exactly that stream).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from webui.i18n.catalog import Catalog
from webui.services.chat import (
    ChatError,
    ChatService,
    SamplingParams,
    export_json,
    export_markdown,
    with_system,
)
from webui.services.server_states import ServerState
from webui.ui import forms
from webui.ui.common import as_int, format_errors, locale_of, reply_numbers, state_refusal
from webui.ui.target_picker import OTHER_URL, TargetHandlers, TargetPicker, build_target_picker, wire_target_picker

# At most one update of the streaming reply per this many seconds (the last always shows): each update sends and
# re-renders the whole reply, so one per token makes a long reply's page sluggish (a click on Stop can wait behind
# it), while 20 a second still reads as streaming.
REDRAW_S = 0.05


def empty_state() -> dict[str, Any]:
    """A new conversation's state: fresh lists each time (a shared module-level dict would leak between users)."""
    return {"messages": [], "stats": [], "request_id": ""}


def sampling(temperature: float, top_p: float, max_tokens: float | None, top_k: float | None,
             repetition_penalty: float, seed: float | None) -> SamplingParams:
    return SamplingParams(temperature=float(temperature), top_p=float(top_p), max_tokens=as_int(max_tokens, 512),
                          top_k=as_int(top_k), repetition_penalty=float(repetition_penalty),
                          seed=None if seed in (None, "", -1) else as_int(seed))


class ChatHandlers:
    """Event handlers of the Chat tab; they talk to the ChatService only."""

    def __init__(self, chat: ChatService, targets: TargetHandlers, catalog: Catalog) -> None:
        self.chat = chat
        self.targets = targets
        self.catalog = catalog

    def add_message(self, message: str, chatbot: list[dict[str, Any]], state: dict[str, Any]
                    ) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
        """Put the user's turn on screen at once and give the coming request its id."""
        if not (message or "").strip():
            return message, chatbot, state
        messages = [*state["messages"], {"role": "user", "content": message}]
        shown = [*chatbot, {"role": "user", "content": message}]
        return "", shown, {**state, "messages": messages, "request_id": self.chat.new_request_id()}

    def stream_reply(
        self, target: str | None, base_url: str, api_key: str, model: str | None, system_prompt: str,
        temperature: float, top_p: float, max_tokens: float | None, top_k: float | None,
        repetition_penalty: float, seed: float | None, state: dict[str, Any], chatbot: list[dict[str, Any]],
        request: gr.Request,
    ) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any], str, str]]:
        """Stream the assistant's reply into the chatbot; the last yield carries the reply's numbers."""
        locale = locale_of(request)
        messages = state["messages"]
        if not messages or messages[-1]["role"] != "user" or not state.get("request_id"):
            yield chatbot, state, self.stats_table(state, locale), ""
            return
        params = sampling(temperature, top_p, max_tokens, top_k, repetition_penalty, seed)
        errors = params.check()
        if errors:
            yield chatbot, {**state, "request_id": ""}, self.stats_table(state, locale), format_errors(
                self.catalog, errors, locale, "chat")
            return
        text = ""
        shown_at = 0.0
        try:
            endpoint = self.targets.endpoint(target, base_url, api_key, model)
            for event in self.chat.stream(endpoint, with_system(messages, system_prompt), params,
                                          request_id=state["request_id"]):
                if event.stats is None:
                    text += event.content
                    now = time.monotonic()
                    if now - shown_at >= REDRAW_S:  # the page re-renders the whole reply on each update
                        shown_at = now
                        yield [*chatbot, {"role": "assistant", "content": text}], state, gr.skip(), ""
                    continue
                stats = event.stats.as_dict()
                done = {"messages": [*messages, {"role": "assistant", "content": text}],
                        "stats": [*state["stats"], stats], "request_id": ""}
                yield [*chatbot, {"role": "assistant", "content": text}], done, self.stats_table(done, locale), ""
        except ChatError as exc:
            failed = {**state, "messages": messages[:-1], "request_id": ""}
            yield chatbot[:-1], failed, self.stats_table(failed, locale), self.targets.error_text(exc, locale)

    def offer_wake(self, target: str | None) -> gr.Button:
        """Show Wake while the chosen console server is asleep (the notice has just explained its 503)."""
        snap = self.targets.servers.get(target) if target and target != OTHER_URL else None
        return gr.Button(visible=bool(snap and snap.state == ServerState.SLEEPING))

    def wake_target(self, target: str | None, request: gr.Request) -> tuple[str, gr.Button]:
        """Wake the chosen server (LMDeploy's POST /wakeup) from the Chat tab: READY again, send once more."""
        locale = locale_of(request)
        if not target or target == OTHER_URL or self.targets.servers.get(target) is None:
            return "", gr.Button(visible=False)
        outcome = self.targets.servers.wake(target)
        if outcome.error:
            return "⚠ " + state_refusal(self.catalog, outcome.error, outcome.params, locale), gr.Button(visible=True)
        return self.catalog.text("chat.woke", locale, id=target, seconds=f"{outcome.seconds or 0:.2f}"), \
            gr.Button(visible=False)

    def stop_reply(self, state: dict[str, Any]) -> None:
        """Close the stream in flight: the server aborts the request and frees its slot."""
        if state.get("request_id"):
            self.chat.cancel(state["request_id"])

    def regenerate(self, chatbot: list[dict[str, Any]], state: dict[str, Any]
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Drop the last reply so the same user turn is asked again."""
        messages, shown, stats = state["messages"], chatbot, state["stats"]
        if messages and messages[-1]["role"] == "assistant":
            messages, stats = messages[:-1], stats[:-1]
            shown = chatbot[:-1] if chatbot and chatbot[-1]["role"] == "assistant" else chatbot
        if not messages or messages[-1]["role"] != "user":
            return chatbot, state
        return shown, {"messages": messages, "stats": stats, "request_id": self.chat.new_request_id()}

    def clear(self) -> tuple[list[dict[str, Any]], dict[str, Any], str, str]:
        return [], empty_state(), "", ""

    def stats_table(self, state: dict[str, Any], locale: str) -> str:
        """The numbers of every reply so far, newest last, in the page's words."""
        if not state["stats"]:
            return ""
        rows = [f"{i}. {reply_numbers(self.catalog, s, locale)}" for i, s in enumerate(state["stats"], start=1)]
        return "\n".join(rows[-8:])

    def export_conversation(self, kind: str, target: str | None, base_url: str, api_key: str, model: str | None,
                            system_prompt: str, temperature: float, top_p: float, max_tokens: float | None,
                            top_k: float | None, repetition_penalty: float, seed: float | None,
                            state: dict[str, Any], request: gr.Request) -> str | None:
        """Write the conversation to a file for download (JSON to replay, Markdown to share, worded in the
        page's language)."""
        if not state["messages"]:
            return None
        messages = with_system(state["messages"], system_prompt)
        params = sampling(temperature, top_p, max_tokens, top_k, repetition_penalty, seed)
        if kind == "md":
            locale = locale_of(request)
            notes = [reply_numbers(self.catalog, s, locale) for s in state["stats"]]
            text, suffix = export_markdown(messages, notes), ".md"
        else:
            try:
                endpoint = self.targets.endpoint(target, base_url, api_key, model)
            except ChatError:
                endpoint = None
            text, suffix = export_json(messages, endpoint, params, state["stats"]), ".json"
        folder = Path(tempfile.mkdtemp(prefix="chat-export-"))
        path = folder / f"conversation{suffix}"
        path.write_text(text, encoding="utf-8")
        return str(path)

    def chat_api(self, message: str, history: list[dict[str, Any]] | None = None, system_prompt: str = "",
                 server_id: str = "", base_url: str = "", api_key: str = "", model: str = "",
                 temperature: float = 0.7, top_p: float = 1.0, max_tokens: int = 512, top_k: int = 0,
                 repetition_penalty: float = 1.0, seed: int = -1) -> dict[str, Any]:
        """One chat turn for scripts: the reply, its numbers and the messages to send next time.

        Target: `server_id` (a console server, "" = the active one) or `base_url` (+ `api_key`, `model`).
        Errors come back as {"error": {"kind", "message"}}, never as an exception.
        """
        try:
            numbers, errors = forms.convert_numbers({
                "temperature": (temperature, 0.7), "top_p": (top_p, 1.0), "max_tokens": (max_tokens, 512),
                "top_k": (top_k, 0), "repetition_penalty": (repetition_penalty, 1.0), "seed": (seed, -1)})
            params = sampling(**numbers)
            errors = errors or params.check()
            if errors:
                return {"error": {"kind": "bad_request", "message": "; ".join(
                    f"{e.field}: {self.catalog.text(e.key, 'en', **e.params)}" for e in errors)}}
            target = "url" if base_url else server_id
            endpoint = self.targets.endpoint(target, base_url, api_key, model)
            messages = [*(history or []), {"role": "user", "content": message}]
            reply, stats, _ = self.chat.complete(endpoint, with_system(messages, system_prompt), params)
        except ChatError as exc:
            return {"error": {"kind": exc.kind, "message": exc.message}}
        return {"reply": reply, "stats": stats.as_dict(), "model": endpoint.model,
                "messages": [*messages, {"role": "assistant", "content": reply}]}


@dataclass(frozen=True)
class ChatShare:
    """"Share this chat": the button and the settings a demo of this chat starts from (the app wires it)."""

    button: gr.Button
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Number


def build_chat_tab(handlers: ChatHandlers, targets: TargetHandlers, i18n: gr.I18n) -> tuple[TargetPicker, ChatShare]:
    """Lay out the tab and wire its events; returns the target picker (refreshed when the tab opens) and what
    "Share this chat" hands to the Demos tab."""
    state = gr.State(empty_state())
    picker = build_target_picker(i18n, "chat")
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label=i18n("chat.chatbot.label"), height=460, elem_id="chat-chatbot")
            with gr.Row():
                message = gr.Textbox(placeholder=i18n("chat.message.placeholder"), show_label=False, scale=6,
                                     lines=1, max_lines=8, elem_id="chat-message")
                send = gr.Button(i18n("chat.send_button"), variant="primary", scale=1, elem_id="chat-send")
            with gr.Row():
                stop = gr.Button(i18n("chat.stop_button"), variant="stop", size="sm", elem_id="chat-stop")
                regenerate = gr.Button(i18n("chat.regenerate_button"), size="sm", elem_id="chat-regenerate")
                clear = gr.Button(i18n("chat.clear_button"), size="sm", elem_id="chat-clear")
            notice = gr.Markdown(elem_id="chat-notice")
            wake = gr.Button(i18n("chat.wake_button"), size="sm", visible=False, elem_id="chat-wake")
        with gr.Column(scale=2):
            system_prompt = gr.Textbox(label=i18n("chat.system_prompt.label"), lines=3,
                                       placeholder=i18n("chat.system_prompt.placeholder"))
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label=i18n("chat.temperature.label"))
                top_p = gr.Slider(0.01, 1.0, value=1.0, step=0.01, label=i18n("chat.top_p.label"))
            with gr.Row():
                max_tokens = gr.Number(value=512, precision=0, minimum=1, label=i18n("chat.max_tokens.label"))
                seed = gr.Number(value=-1, precision=0, label=i18n("chat.seed.label"), info=i18n("chat.seed.info"))
            with gr.Accordion(i18n("chat.lmdeploy_extras"), open=False):
                top_k = gr.Number(value=0, precision=0, minimum=0, label=i18n("chat.top_k.label"),
                                  info=i18n("chat.top_k.info"))
                repetition_penalty = gr.Slider(0.5, 2.0, value=1.0, step=0.01,
                                               label=i18n("chat.repetition_penalty.label"))
            stats = gr.Markdown(label=i18n("chat.stats.label"), elem_id="chat-stats")
            with gr.Row():
                export_json_button = gr.Button(i18n("chat.export_json"), size="sm")
                export_md_button = gr.Button(i18n("chat.export_md"), size="sm")
                share = gr.Button(i18n("chat.share_button"), size="sm", elem_id="chat-share")
            export_file = gr.File(label=i18n("chat.export_file.label"), interactive=False, height=80)

    wire_target_picker(picker, targets, notice)
    private: dict[str, Any] = {"api_visibility": "private"}
    settings = [system_prompt, temperature, top_p, max_tokens, top_k, repetition_penalty, seed]
    reply_inputs = [*picker.inputs(), *settings, state, chatbot]
    reply_outputs = [chatbot, state, stats, notice]
    for trigger in (send.click, message.submit):
        trigger(handlers.add_message, [message, chatbot, state], [message, chatbot, state],
                              queue=False, **private).then(
            handlers.stream_reply, reply_inputs, reply_outputs, concurrency_limit=None, **private).then(
            handlers.offer_wake, picker.target, wake, queue=False, **private)
    regenerate.click(handlers.regenerate, [chatbot, state], [chatbot, state], queue=False,
                     **private).then(
        handlers.stream_reply, reply_inputs, reply_outputs, concurrency_limit=None, **private).then(
        handlers.offer_wake, picker.target, wake, queue=False, **private)
    picker.target.change(handlers.offer_wake, picker.target, wake, queue=False, **private)
    wake.click(handlers.wake_target, picker.target, [notice, wake], concurrency_id="server_control", **private)
    # NOTE: no `cancels=`: closing the stream ends the generator normally, so the partial reply and its
    # numbers are kept (marked stopped) and the server sees the disconnect at once.
    stop.click(handlers.stop_reply, state, None, queue=False, **private)
    clear.click(handlers.clear, None, [chatbot, state, stats, notice], queue=False, **private)
    chatbot.clear(handlers.clear, None, [chatbot, state, stats, notice], queue=False, **private)
    kind_json, kind_md = gr.State("json"), gr.State("md")
    export_inputs = [*picker.inputs(), *settings, state]
    export_json_button.click(handlers.export_conversation, [kind_json, *export_inputs], export_file, **private)
    export_md_button.click(handlers.export_conversation, [kind_md, *export_inputs], export_file, **private)
    gr.api(handlers.chat_api, api_name="chat")
    return picker, ChatShare(share, system_prompt, temperature, top_p, max_tokens)
