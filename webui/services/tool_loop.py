"""The function-calling loop: model → tool_calls → run each → `role: "tool"` messages → model, up to a step
limit. Built-in tools are safe Python functions (tools.BUILTINS); "manual" tools pause the loop until the
user types the result. Every step is recorded so the UI can show the raw text, the parsed calls and results.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from webui.services.chat import ChatError, ChatService, Endpoint, SamplingParams
from webui.services.tools import BUILTINS, run_builtin

MAX_STEPS = 20
MANUAL = "manual"

# Presets are JSON text (module constants stay immutable); preset() parses a fresh copy.
ADD_MUL = json.dumps([
    {"type": "function", "function": {
        "name": "add", "description": "Compute the sum of two numbers",
        "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "description": "A number"},
            "b": {"type": "integer", "description": "A number"}}, "required": ["a", "b"]}}},
    {"type": "function", "function": {
        "name": "mul", "description": "Calculate the product of two numbers",
        "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "description": "A number"},
            "b": {"type": "integer", "description": "A number"}}, "required": ["a", "b"]}}},
])
CALCULATOR = json.dumps([
    {"type": "function", "function": {
        "name": "calculate", "description": "Evaluate an arithmetic expression with + - * / // % ** and ( )",
        "parameters": {"type": "object", "properties": {
            "expression": {"type": "string", "description": "for example (3+5)*2"}}, "required": ["expression"]}}},
])
WEATHER = json.dumps([
    {"type": "function", "function": {
        "name": "get_current_weather", "description": "Get the current weather in a given city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city, e.g. Shanghai"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
])
# name → (tools, the prompt that shows them off)
PRESETS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "add_mul": (ADD_MUL, "Compute (3+5)*2"),
    "calculator": (CALCULATOR, "What is 17 * 23 + 4?"),
    "weather": (WEATHER, "What's the weather like in Shanghai today?"),
})


def preset(name: str) -> tuple[list[dict[str, Any]], str]:
    """A preset's tools (a fresh list) and its example prompt."""
    tools, prompt = PRESETS[name]
    return json.loads(tools), prompt


def implementation_of(name: str) -> str:
    """A tool with a built-in of the same name runs it; any other is manual (the user types the result)."""
    return "builtin" if name in BUILTINS else MANUAL


@dataclass
class ToolRun:
    """The state of one run: the OpenAI message list (what is sent) and the steps (what is shown).

    `waiting` holds the manual calls that need a result before the run can go on.
    """

    messages: list[dict[str, Any]]
    steps: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[dict[str, Any]] = field(default_factory=list)
    answer: str | None = None
    error: dict[str, str] | None = None
    model_calls: int = 0
    live_text: str = ""

    @property
    def done(self) -> bool:
        return self.answer is not None or self.error is not None

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "steps": self.steps, "waiting": self.waiting, "answer": self.answer,
                "error": self.error, "model_calls": self.model_calls, "done": self.done}


class ToolLoop:
    """Runs ToolRuns against a ChatService; holds no state of its own beyond the service."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    def run(
        self,
        endpoint: Endpoint,
        run: ToolRun,
        tools: list[dict[str, Any]],
        tool_choice: str | dict[str, Any] | list[str | dict[str, Any]],
        params: SamplingParams,
        max_steps: int = 5,
        request_id: str = "",
        stream: bool = True,
    ) -> Iterator[ToolRun]:
        """Advance `run` until an answer, an error, a manual tool or the step limit; yield it as it changes.

        A single tool_choice applies to the first request of the run; after tool results the model is asked
        with "auto", as OpenAI advises, so a forced choice cannot loop until the limit. A list is a plan, one
        choice per model call (e.g. add, mul, none), then "auto": it walks a small model through a flow.
        """
        plan = tool_choice if isinstance(tool_choice, list) else [tool_choice]
        max_steps = max(1, min(int(max_steps), MAX_STEPS))
        names = {t["function"]["name"] for t in tools}
        while not run.done and not run.waiting:
            if run.model_calls >= max_steps:
                run.error = {"kind": "step_limit", "message": f"no answer after {max_steps} model calls"}
                yield run
                return
            if run.model_calls < len(plan):
                choice = plan[run.model_calls]
            else:
                choice = "none" if plan[-1] == "none" else "auto"
            run.model_calls += 1
            run.live_text = ""
            final, fallback = None, ""
            if stream:
                try:
                    for event in self.chat.stream(endpoint, run.messages, params, tools=tools,
                                                   tool_choice=choice, request_id=request_id):
                        if event.stats is None:
                            run.live_text += event.content
                            yield run
                        else:
                            final = event
                except ChatError as exc:
                    if exc.kind not in ("stream_broken", "empty_reply"):  # those two: ask once without streaming
                        run.error = {"kind": exc.kind, "message": exc.message}
                        yield run
                        return
                    fallback = exc.message
                if final is not None and final.incomplete and not final.tool_calls and not run.live_text:
                    fallback, final = "the stream ended without a finish reason", None
            if final is None:
                # NOTE: some servers break such streams off (llama.cpp cannot stream tool_choice auto): the
                # step is asked again without streaming, and the step says so.
                try:
                    final = self.chat.request_once(endpoint, run.messages, params, tools=tools,
                                                    tool_choice=choice)
                except ChatError as exc:
                    run.error = {"kind": exc.kind, "message": exc.message}
                    yield run
                    return
                run.live_text = final.content
            calls, stats = final.tool_calls, final.stats.as_dict() if final.stats else {}
            text, run.live_text = run.live_text, ""
            run.steps.append({"type": "model", "step": run.model_calls, "raw": text, "tool_calls": calls,
                              "tool_choice": choice if isinstance(choice, str) else choice["function"]["name"],
                              "stats": stats, "streamed": stream and not fallback, "fallback": fallback})
            if stats["cancelled"]:
                run.error = {"kind": "cancelled", "message": "stopped"}
                yield run
                return
            if not calls:
                run.messages = [*run.messages, {"role": "assistant", "content": text}]
                run.answer = text
                yield run
                return
            # NOTE: content "" rather than None: some servers (llama.cpp) reject null content with tool calls.
            run.messages = [*run.messages, {"role": "assistant", "content": text,
                                            "tool_calls": [_sendable(c) for c in calls]}]
            for call in calls:
                self._run_call(run, call, names)
            yield run

    @staticmethod
    def _run_call(run: ToolRun, call: dict[str, Any], names: set[str]) -> None:
        name = call["function"]["name"]
        arguments = call["function"]["arguments"]
        step = {"type": "tool", "step": run.model_calls, "call_id": call["id"], "name": name,
                "arguments": arguments}
        if name not in names:
            ok, result, source = False, f"the model called {name!r}, which is not in the tools list", "none"
        elif implementation_of(name) == MANUAL:
            run.waiting = [*run.waiting, {"call_id": call["id"], "name": name, "arguments": arguments}]
            run.steps.append({**step, "source": MANUAL, "ok": None, "result": None})
            return
        else:
            source = "builtin"
            ok, result = run_builtin(name, arguments)
        if not ok:
            result = json.dumps({"error": result})
        run.steps.append({**step, "source": source, "ok": ok, "result": result})
        run.messages = [*run.messages, {"role": "tool", "tool_call_id": call["id"], "name": name, "content": result}]


def _sendable(call: dict[str, Any]) -> dict[str, Any]:
    """The call as it goes back to the server. Arguments that are not JSON become "{}": LMDeploy refuses a
    history with invalid arguments (400 "Tool call arguments contain invalid JSON"), and the tool's error
    result already tells the model what was wrong. The step keeps the raw text for the user."""
    try:
        json.loads(call["function"]["arguments"] or "{}")
        return call
    except json.JSONDecodeError:
        return {**call, "function": {**call["function"], "arguments": "{}"}}


def give_result(run: ToolRun, call_id: str, result: str) -> ToolRun:
    """The user's answer for a manual tool call: it becomes the `role: "tool"` message for that call."""
    pending = next((w for w in run.waiting if w["call_id"] == call_id), None)
    if pending is None:
        raise KeyError(f"no manual call {call_id!r} is waiting")
    steps = [({**s, "ok": True, "result": result} if s.get("call_id") == call_id and s["type"] == "tool" else s)
             for s in run.steps]
    message = {"role": "tool", "tool_call_id": call_id, "name": pending["name"], "content": result}
    return ToolRun(messages=[*run.messages, message], steps=steps,
                   waiting=[w for w in run.waiting if w["call_id"] != call_id], model_calls=run.model_calls)


def new_run(prompt: str, system_prompt: str = "") -> ToolRun:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return ToolRun(messages=[*messages, {"role": "user", "content": prompt}])


def parse_tool_choice(choice: str, tools: list[dict[str, Any]]
                      ) -> str | dict[str, Any] | list[str | dict[str, Any]]:
    """`auto` / `required` / `none`, or a function name → the named form; "add, mul, none" → a plan (one per
    model call). Unknown names raise ValueError."""
    parts = [p.strip() for p in (choice or "auto").replace("→", ",").split(",") if p.strip()]
    names = [t["function"]["name"] for t in tools]
    parsed: list[str | dict[str, Any]] = []
    for part in parts or ["auto"]:
        if part in ("auto", "required", "none"):
            parsed.append(part)
        elif part in names:
            parsed.append({"type": "function", "function": {"name": part}})
        else:
            raise ValueError(f"tool_choice {part!r} is not auto, required, none or a tool of the list "
                             f"({', '.join(names)})")
    return parsed if len(parsed) > 1 else parsed[0]
