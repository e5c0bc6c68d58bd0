"""The Tools tab: a function-calling playground. Edit (and check) a tools list, run the loop, see every step.

Two histories, kept apart: the chatbot shows steps as collapsible blocks; a gr.State holds the ToolRun (the
OpenAI messages sent, the recorded steps, the manual calls waiting for the user).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import gradio as gr

from webui.i18n.catalog import Catalog
from webui.services.chat import ChatError, Endpoint, SamplingParams
from webui.services.models import ModelInfo, ModelRoots, read_model_info
from webui.services.serve import ServerManager
from webui.services.serve_spec import TOOL_CALL_PARSERS
from webui.services.tool_loop import (
    MANUAL,
    MAX_STEPS,
    PRESETS,
    ToolLoop,
    ToolRun,
    give_result,
    implementation_of,
    new_run,
    parse_tool_choice,
    preset,
)
from webui.services.tools import ToolProblem, check_tools
from webui.ui import forms
from webui.ui.common import as_int, locale_of, reply_numbers
from webui.ui.target_picker import (
    OTHER_URL,
    PageError,
    TargetHandlers,
    TargetPicker,
    build_target_picker,
    wire_target_picker,
)

BASE_CHOICES = ("auto", "required", "none")
# Who answered a tool call (tool_loop's step "source"), in the page's words.
SOURCE_KEYS = MappingProxyType({"builtin": "tools.source.builtin", MANUAL: "tools.source.manual",
                                "none": "tools.source.none"})


def _run_from(state: dict[str, Any] | None) -> ToolRun | None:
    if not state:
        return None
    return ToolRun(messages=state["messages"], steps=state["steps"], waiting=state["waiting"],
                   answer=state["answer"], error=state["error"], model_calls=state["model_calls"])


def split_checked(checked: list[dict[str, Any]] | list[ToolProblem]
                  ) -> tuple[list[dict[str, Any]], list[ToolProblem]]:
    """check_tools' answer as (tools, problems), each typed: one of the two is empty."""
    return ([t for t in checked if not isinstance(t, ToolProblem)],
            [p for p in checked if isinstance(p, ToolProblem)])


def tool_choices(tools: list[dict[str, Any]]) -> list[str]:
    """tool_choice's offers for a tools list: the three modes, each tool, and a plan through all of them."""
    names = [t["function"]["name"] for t in tools]
    plan = ", ".join([*names, "none"]) if len(names) > 1 else ""
    return [*BASE_CHOICES, *names, *([plan] if plan else [])]


def _arguments(raw: str) -> str:
    try:
        return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in json.loads(raw).items())
    except (json.JSONDecodeError, AttributeError):
        return raw


class ToolsHandlers:
    """Event handlers of the Tools tab; the loop itself lives in services.tool_loop."""

    def __init__(self, loop: ToolLoop, targets: TargetHandlers, servers: ServerManager, roots: ModelRoots,
                 catalog: Catalog) -> None:
        self.loop = loop
        self.targets = targets
        self.servers = servers
        self.roots = roots
        self.catalog = catalog

    # the tools list ------------------------------------------------------------------------------
    def load_preset(self, name: str) -> tuple[str, str]:
        tools, prompt = preset(name)
        return json.dumps(tools, ensure_ascii=False, indent=2), prompt

    def check_tools_json(self, tools_json: str, current_choice: str | None, request: gr.Request
                         ) -> tuple[str, gr.Dropdown]:
        """What is wrong (by JSON path, with the fix), or which tools run built-in and which are manual."""
        locale = locale_of(request)
        checked, problems = split_checked(check_tools(tools_json or ""))
        if problems:
            return self.problems_text(problems, locale), gr.Dropdown(choices=list(BASE_CHOICES), value="auto")
        names = [t["function"]["name"] for t in checked]
        lines = [f"- `{n}`: " + self.catalog.text(
            "tools.impl.builtin" if implementation_of(n) != MANUAL else "tools.impl.manual", locale) for n in names]
        choices = tool_choices(checked)
        try:
            parse_tool_choice(current_choice or "auto", checked)
            value = current_choice
        except ValueError:
            value = "auto"
        return "\n".join(lines), gr.Dropdown(choices=choices, value=value)

    def problems_text(self, problems: list[ToolProblem], locale: str) -> str:
        heading = self.catalog.text("tools.msg.problems", locale)
        return f"**{heading}**\n\n" + "\n".join(
            f"- `{p.path}`: {self.catalog.text(p.key, locale, **p.params)}" for p in problems)

    # the loop --------------------------------------------------------------------------------------
    def prepare(self, tools_json: str, tool_choice: str | None, target: str | None, base_url: str, api_key: str,
                model: str | None, locale: str) -> tuple[list[dict[str, Any]], Any, Endpoint]:
        """The checked tools, the parsed tool_choice and the endpoint of a run, for the tab and for scripts.

        Raises ChatError: "bad_tools" (the problems, by JSON path), "bad_choice", or the endpoint's own kinds.
        """
        checked, problems = split_checked(check_tools(tools_json or ""))
        if problems:
            raise ChatError("bad_tools", self.problems_text(problems, locale))
        try:
            choice = parse_tool_choice(tool_choice or "auto", checked)
        except ValueError as exc:
            raise PageError("bad_choice", str(exc), "tools.msg.bad_choice", choice=tool_choice) from exc
        return checked, choice, self.targets.endpoint(target, base_url, api_key, model)

    def start_run(self, prompt: str, system_prompt: str, request: gr.Request
                  ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], str]:
        """A new run for the prompt, and the request id that Stop will close."""
        if not (prompt or "").strip():
            return None, [], ""
        run = new_run(prompt, system_prompt)
        return run.as_dict(), self.transcript(run, locale_of(request)), self.loop.chat.new_request_id()

    def stop_run(self, request_id: str) -> None:
        """Close the model request in flight; the run ends as stopped, its steps so far kept."""
        if request_id:
            self.loop.chat.cancel(request_id)

    def advance_run(
        self, target: str | None, base_url: str, api_key: str, model: str | None, tools_json: str,
        tool_choice: str | None, max_steps: float | None, temperature: float, max_tokens: float | None,
        state: dict[str, Any] | None, request_id: str, request: gr.Request,
    ) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any] | None, str, gr.Row, gr.Textbox, gr.Row,
                        gr.Dropdown]]:
        """Advance the run (until an answer, an error, a manual tool or the step limit), showing each step."""
        locale = locale_of(request)
        hidden = (gr.Row(visible=False), gr.skip(), gr.Row(visible=False), gr.skip())
        run = _run_from(state)
        if run is None:
            yield [], None, self.catalog.text("tools.msg.no_prompt", locale), *hidden
            return
        try:
            checked, choice, endpoint = self.prepare(tools_json, tool_choice, target, base_url, api_key, model,
                                                     locale)
        except ChatError as exc:
            if exc.kind == "bad_tools":
                text = exc.message  # already a heading and one line per problem, in the page's language
            else:
                text = self.targets.error_text(exc, locale)
            yield self.transcript(run, locale), state, text, *hidden
            return
        params = SamplingParams(temperature=float(temperature), max_tokens=as_int(max_tokens, 256))
        for current in self.loop.run(endpoint, run, checked, choice, params, as_int(max_steps, 5),
                                     request_id=request_id):
            yield self.transcript(current, locale), current.as_dict(), "", *hidden
        yield (self.transcript(run, locale), run.as_dict(), self.outcome_text(run, locale),
               *self.waiting_widgets(run, locale), *self.parser_widgets(run, endpoint.server_id, locale))

    def submit_result(self, result: str, state: dict[str, Any] | None, request: gr.Request
                      ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str]:
        """The user's result for the first waiting manual call; the run goes on from there (new request id)."""
        run = _run_from(state)
        if run is None or not run.waiting:
            return gr.skip(), state, gr.skip()
        run = give_result(run, run.waiting[0]["call_id"], result or "")
        return self.transcript(run, locale_of(request)), run.as_dict(), self.loop.chat.new_request_id()

    def restart_with_parser(self, target: str | None, parser: str, request: gr.Request) -> str:
        """Restart the target server with --tool-call-parser; the Serve tab shows it come back."""
        locale = locale_of(request)
        if not target or target == OTHER_URL or not parser:
            return self.catalog.text("tools.msg.cannot_restart", locale)
        try:
            outcome = self.servers.restart(target, tool_call_parser=parser)
        except KeyError:
            return "⚠ " + self.catalog.text("errors.unknown_server", locale, id=target)
        except ValueError:  # an attached server: watched, never restarted here
            return "⚠ " + self.catalog.text("errors.not_owned", locale)
        if outcome.errors:
            return "⚠ " + "; ".join(self.catalog.text(e.key, locale, **e.params) for e in outcome.errors)
        return self.catalog.text("tools.msg.restarting", locale, id=target, parser=parser)

    def run_tools_api(self, prompt: str, tools: str = "", tool_choice: str = "auto",
                      max_steps: int = 5, server_id: str = "", base_url: str = "", api_key: str = "",
                      model: str = "", temperature: float = 0.0, max_tokens: int = 256,
                      system_prompt: str = "") -> dict[str, Any]:
        """Run the whole loop for scripts; `tools` is the tools list as JSON text (default: the add/mul preset).
        Manual tools are not run: the answer then lists them under "waiting". Errors come back as {"error": …}."""
        numbers, problems = forms.convert_numbers({"max_steps": (max_steps, 5), "temperature": (temperature, 0.0),
                                                   "max_tokens": (max_tokens, 256)})
        if problems:
            return {"error": {"kind": "bad_request", "message": "; ".join(
                f"{e.field}: {self.catalog.text(e.key, 'en', **e.params)}" for e in problems)}}
        try:
            checked, choice, endpoint = self.prepare(tools or json.dumps(preset("add_mul")[0]), tool_choice,
                                                     "url" if base_url else server_id, base_url, api_key, model, "en")
        except ChatError as exc:
            kind = "bad_request" if exc.kind == "bad_choice" else exc.kind
            return {"error": {"kind": kind, "message": exc.message}}
        run = new_run(prompt, system_prompt)
        params = SamplingParams(temperature=numbers["temperature"], max_tokens=numbers["max_tokens"])
        for _ in self.loop.run(endpoint, run, checked, choice, params, numbers["max_steps"]):
            pass
        return run.as_dict()

    # views -------------------------------------------------------------------------------------------
    def transcript(self, run: ToolRun, locale: str) -> list[dict[str, Any]]:
        """The run as chat messages: the prompt, then per step a collapsible block for the raw model text,
        one per call with its arguments, one per result, and the answer as a plain message."""
        t = self.catalog.text
        shown: list[dict[str, Any]] = [{"role": m["role"], "content": m["content"]} for m in run.messages
                                       if m["role"] == "user"][:1]
        for step in run.steps:
            if step["type"] == "model":
                if not step["tool_calls"] and run.answer is not None and step is run.steps[-1]:
                    continue  # the answer is shown as the final message
                numbers = reply_numbers(self.catalog, step["stats"], locale)
                title = f"🧠 #{step['step']} · tool_choice={step['tool_choice']} · {numbers}"
                calls = "\n".join(f"- `{c['function']['name']}({_arguments(c['function']['arguments'])})`"
                                  for c in step["tool_calls"])
                raw = f"```text\n{step['raw']}\n```" if step["raw"] else t("tools.step.no_text", locale)
                body = raw + (f"\n\n{calls}" if calls else "")
                shown.append({"role": "assistant", "content": body, "metadata": {"title": title, "status": "done"}})
            else:
                pending = step["ok"] is None
                mark = "⏳" if pending else ("🛠" if step["ok"] else "⚠")
                result = "…" if pending else step["result"]
                title = f"{mark} {step['name']}({_arguments(step['arguments'])}) → {result}"
                source = SOURCE_KEYS.get(step["source"])
                body = (f"**{t('tools.step.arguments', locale)}** `{step['arguments']}`\n\n"
                        f"**{t(source, locale) if source else step['source']}** → `{result}`\n\n"
                        f"`tool_call_id` {step['call_id']}")
                shown.append({"role": "assistant", "content": body,
                              "metadata": {"title": title[:200], "status": "pending" if pending else "done"}})
        if run.live_text:
            shown.append({"role": "assistant", "content": run.live_text})
        if run.answer is not None:
            shown.append({"role": "assistant", "content": run.answer or t("tools.step.empty_answer", locale)})
        return shown

    def outcome_text(self, run: ToolRun, locale: str) -> str:
        if run.error and run.error["kind"] == "step_limit":  # the loop's own words are for scripts
            return "⚠ " + self.catalog.text("tools.msg.step_limit", locale, steps=run.model_calls)
        if run.error:
            return self.targets.error_text(ChatError(run.error["kind"], run.error["message"]), locale)
        if run.waiting:
            return self.catalog.text("tools.msg.waiting", locale, name=run.waiting[0]["name"])
        if run.answer is not None:
            return self.catalog.text("tools.msg.answered", locale, steps=run.model_calls)
        return ""

    def waiting_widgets(self, run: ToolRun, locale: str) -> tuple[gr.Row, gr.Textbox]:
        if not run.waiting:
            return gr.Row(visible=False), gr.Textbox(value="")
        call = run.waiting[0]
        label = self.catalog.text("tools.manual_result.label", locale,
                                  call=f"{call['name']}({_arguments(call['arguments'])})")
        return gr.Row(visible=True), gr.Textbox(value="", label=label)

    def parser_widgets(self, run: ToolRun, server_id: str, locale: str) -> tuple[gr.Row, gr.Dropdown]:
        """When the server wants --tool-call-parser: the parser that fits its model, and a restart button."""
        if not run.error or run.error["kind"] != "needs_parser" or not server_id:
            return gr.Row(visible=False), gr.skip()
        snap = self.servers.get(server_id)
        suggestion = ""
        if snap is not None and snap.owned:
            resolved = self.roots.resolve(snap.model_path)
            info = read_model_info(resolved) if isinstance(resolved, Path) else None
            suggestion = info.suggested_parser if isinstance(info, ModelInfo) else ""
        return gr.Row(visible=bool(snap and snap.owned)), gr.Dropdown(value=suggestion or TOOL_CALL_PARSERS[0])


def build_tools_tab(handlers: ToolsHandlers, targets: TargetHandlers, i18n: gr.I18n) -> TargetPicker:
    """Lay out the tab and wire its events; returns the target picker (refreshed when the tab opens)."""
    state = gr.State(None)
    picker = build_target_picker(i18n, "tools")
    first_tools, first_prompt = handlers.load_preset("add_mul")
    with gr.Row():
        with gr.Column(scale=2):
            preset = gr.Dropdown([(i18n(f"tools.preset.{k}"), k) for k in PRESETS], value="add_mul",
                                 label=i18n("tools.preset.label"), elem_id="tools-preset")
            tools_json = gr.Code(value=first_tools, language="json", label=i18n("tools.tools_json.label"),
                                 interactive=True, lines=14, max_lines=30, elem_id="tools-json")
            tools_status = gr.Markdown(elem_id="tools-status")
            with gr.Row():
                tool_choice = gr.Dropdown(tool_choices(json.loads(first_tools)), value="auto",
                                          allow_custom_value=True, label=i18n("tools.tool_choice.label"),
                                          info=i18n("tools.tool_choice.info"), elem_id="tools-choice", scale=2)
                max_steps = gr.Number(value=5, precision=0, minimum=1, maximum=MAX_STEPS,
                                      label=i18n("tools.max_steps.label"))
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label=i18n("chat.temperature.label"))
                max_tokens = gr.Number(value=256, precision=0, minimum=1, label=i18n("chat.max_tokens.label"))
            system_prompt = gr.Textbox(label=i18n("chat.system_prompt.label"), lines=2)
        with gr.Column(scale=3):
            transcript = gr.Chatbot(label=i18n("tools.transcript.label"), height=460, elem_id="tools-transcript")
            with gr.Row():
                prompt = gr.Textbox(value=first_prompt, show_label=False, scale=5, elem_id="tools-prompt")
                run = gr.Button(i18n("tools.run_button"), variant="primary", scale=1, elem_id="tools-run")
                stop = gr.Button(i18n("chat.stop_button"), variant="stop", scale=1, elem_id="tools-stop")
            outcome = gr.Markdown(elem_id="tools-outcome")
            with gr.Row(visible=False) as manual_row:
                manual_result = gr.Textbox(label=i18n("tools.manual_result.heading"), scale=4,
                                           elem_id="tools-manual-result")
                send_result = gr.Button(i18n("tools.send_result_button"), scale=1)
            with gr.Row(visible=False) as parser_row:
                parser = gr.Dropdown(list(TOOL_CALL_PARSERS), label=i18n("tools.parser.label"), scale=2)
                restart = gr.Button(i18n("tools.restart_button"), variant="primary", scale=2,
                                    elem_id="tools-restart")

    wire_target_picker(picker, targets, outcome)
    private: dict[str, Any] = {"api_visibility": "private"}
    preset.change(handlers.load_preset, preset, [tools_json, prompt], **private)
    gr.on([tools_json.change], handlers.check_tools_json, [tools_json, tool_choice], [tools_status, tool_choice],
          show_progress="hidden", trigger_mode="always_last", **private)
    request_id = gr.State("")
    loop_inputs = [*picker.inputs(), tools_json, tool_choice, max_steps, temperature, max_tokens, state, request_id]
    loop_outputs = [transcript, state, outcome, manual_row, manual_result, parser_row, parser]
    gr.on([run.click, prompt.submit], handlers.start_run, [prompt, system_prompt], [state, transcript, request_id],
          queue=False, **private).then(handlers.advance_run, loop_inputs, loop_outputs,
                                                 concurrency_limit=None, **private)
    send_result.click(handlers.submit_result, [manual_result, state], [transcript, state, request_id], queue=False,
                                **private).then(handlers.advance_run, loop_inputs, loop_outputs,
                                                concurrency_limit=None, **private)
    stop.click(handlers.stop_run, request_id, None, queue=False, **private)
    restart.click(handlers.restart_with_parser, [picker.target, parser], outcome, **private)
    gr.api(handlers.run_tools_api, api_name="run_tools")
    return picker
