"""The Chat and Tools services against LMDeploy's own response shapes.

The stand-in server replays what LMDeploy 0.18.0 answered on the GPU (tests/data/api_record.json): its
stream chunks, its flat error JSON, the 400 for tools without --tool-call-parser. The same services run
against a real model in test_chat_real.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.conftest import fake_argv_factory
from webui.services.chat import (
    ChatError,
    Endpoint,
    SamplingParams,
    classify,
    error_message,
    export_json,
    export_markdown,
    with_system,
)
from webui.services.container import Services
from webui.services.serve_spec import ServerSpec, suggest_port
from webui.services.tool_loop import new_run, parse_tool_choice, preset
from webui.settings import Settings

DATA = Path(__file__).resolve().parent / "data"
RECORD = json.loads((DATA / "api_record.json").read_text(encoding="utf-8"))


def requests_logged(services: Services, server_id: str) -> list[dict]:
    return [json.loads(line.removeprefix("request: ")) for line in services.servers.log(server_id, 5000)
            if line.startswith("request: ")]


@pytest.fixture
def lmdeploy_like(settings: Settings, model_root: Path):
    services = Services.build(settings, argv_factory=fake_argv_factory())
    spec = ServerSpec(model_path=str(model_root / "tiny llama; echo pwned"), port=suggest_port(31500),
                      api_keys=("sk-secret-1",))
    server = services.servers.start(spec).server
    ready = services.servers.wait_for(server.id, {"READY", "FAILED"}, timeout_s=30)
    assert ready.state == "READY", services.servers.log(server.id)
    try:
        yield services, ready
    finally:
        services.close()


def test_stream_from_lmdeploy_counts_usage_and_sends_its_extras(lmdeploy_like) -> None:
    services, server = lmdeploy_like
    endpoint = services.chat.endpoint_for_server()  # the active server
    assert endpoint.lmdeploy and endpoint.server_id == server.id and endpoint.api_key == "sk-secret-1"
    assert endpoint.model == server.model_id
    params = SamplingParams(temperature=0.3, top_p=0.9, max_tokens=32, top_k=40, repetition_penalty=1.1)
    events = list(services.chat.stream(endpoint, with_system([{"role": "user", "content": "hi"}], "Be brief."),
                                       params))
    text = "".join(e.content for e in events)
    expected = "".join(json.loads(line.removeprefix("data: "))["choices"][0]["delta"]["content"]
                       for line in RECORD["stream"]["lines"] if line.startswith("data: {"))
    assert text == expected
    stats = events[-1].stats
    assert stats.usage_reported and stats.prompt_tokens == 36 and stats.completion_tokens == 4
    assert stats.ttft_s is not None and 0 < stats.ttft_s <= stats.seconds
    sent = requests_logged(services, server.id)[-1]
    assert sent["top_k"] == 40 and sent["repetition_penalty"] == 1.1
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "sk-secret-1" not in json.dumps(endpoint.masked())


def test_lmdeploy_errors_are_classified_with_its_own_words(lmdeploy_like) -> None:
    services, server = lmdeploy_like
    endpoint = services.chat.endpoint_for_server(server.id)
    with pytest.raises(ChatError) as wrong_model:
        services.chat.complete(replace(endpoint, model="nope"), [{"role": "user", "content": "x"}],
                               SamplingParams())
    assert wrong_model.value.kind == "not_found" and "'nope' does not exist" in wrong_model.value.message
    with pytest.raises(ChatError) as wrong_key:
        services.chat.complete(replace(endpoint, api_key="sk-wrong"), [{"role": "user", "content": "x"}],
                               SamplingParams())
    assert wrong_key.value.kind == "auth" and wrong_key.value.status == 401
    with pytest.raises(ChatError) as unlisted:
        services.chat.endpoint_for_url(server.base_url, "sk-secret-1", model="other")
    assert unlisted.value.kind == "not_found"


def test_tools_without_parser_say_so_and_a_restart_with_the_parser_fixes_it(lmdeploy_like) -> None:
    services, server = lmdeploy_like
    endpoint = services.chat.endpoint_for_server(server.id)
    tools, prompt = preset("add_mul")
    run = new_run(prompt)
    list(services.tool_loop.run(endpoint, run, tools, "auto", SamplingParams(temperature=0), max_steps=3))
    assert run.error["kind"] == "needs_parser" and "--tool-call-parser" in run.error["message"]

    outcome = services.servers.restart(server.id, tool_call_parser="qwen")
    assert outcome.errors == ()
    ready = services.servers.wait_for(server.id, {"READY", "FAILED"}, timeout_s=30)
    assert ready.state == "READY" and ready.tool_call_parser == "qwen"
    assert "--tool-call-parser qwen" in ready.command
    assert any(e.kind == "spec_changed" for e in services.store.events(server.id))
    run = new_run(prompt)
    list(services.tool_loop.run(services.chat.endpoint_for_server(server.id), run, tools, "auto",
                                SamplingParams(temperature=0), max_steps=3))
    assert run.error is None and run.answer  # the recorded tiny model answers in text, no calls
    sent = requests_logged(services, server.id)[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["add", "mul"] and sent["tool_choice"] == "auto"


def test_a_server_that_is_not_ready_is_refused_before_any_request(settings: Settings, model_root: Path) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory("--phase-delay", "1"))
    try:
        with pytest.raises(ChatError) as none:
            services.chat.endpoint_for_server()
        assert none.value.kind == "no_server"
        server = services.servers.start(ServerSpec(model_path=str(model_root / "tiny llama; echo pwned"),
                                                   port=suggest_port(31600))).server
        with pytest.raises(ChatError) as starting:
            services.chat.endpoint_for_server(server.id)
        assert starting.value.kind == "not_ready" and "STARTING" in starting.value.message
    finally:
        services.close()


def _status_error(status: int, body: str) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    response = httpx.Response(status, content=body.encode(), request=request)
    return openai.APIStatusError("x", response=response, body=None)


def test_recorded_error_bodies_become_readable_kinds() -> None:
    tools = classify(_status_error(400, json.dumps(RECORD["tools"]["json"])), "u")
    assert tools.kind == "needs_parser" and tools.message.startswith("Please launch the api_server")
    bad = classify(_status_error(400, RECORD["bad"]["body"]), "u")
    assert bad.kind == "bad_request" and bad.message == "messages: Input should be a valid list"
    missing = classify(_status_error(404, RECORD["bad_model"]["body"]), "u")
    assert missing.kind == "not_found" and "nope" in missing.message
    assert classify(_status_error(503, '{"status": "initializing"}'), "u").kind == "not_ready"
    assert classify(_status_error(500, "Internal Server Error"), "u").message == "Internal Server Error"
    openai_style = httpx.Response(401, json={"error": {"message": "Invalid API key"}})
    assert error_message(openai_style) == "Invalid API key"
    fastapi_style = httpx.Response(405, json={"detail": "Method Not Allowed"})
    assert error_message(fastapi_style) == "Method Not Allowed"


def test_sampling_checks_name_the_field_and_extras_go_only_to_lmdeploy() -> None:
    errors = SamplingParams(temperature=5, top_p=0, max_tokens=0, top_k=-1, repetition_penalty=9).check()
    assert [e.field for e in errors] == ["temperature", "top_p", "max_tokens", "top_k", "repetition_penalty"]
    params = SamplingParams(top_k=20, repetition_penalty=1.2, seed=7)
    assert params.request_kwargs(lmdeploy=True)["extra_body"] == {"top_k": 20, "repetition_penalty": 1.2}
    plain = params.request_kwargs(lmdeploy=False)
    assert "extra_body" not in plain and plain["seed"] == 7


def test_tool_choice_forms() -> None:
    tools, _ = preset("add_mul")
    assert parse_tool_choice("required", tools) == "required"
    assert parse_tool_choice("mul", tools) == {"type": "function", "function": {"name": "mul"}}
    assert parse_tool_choice("add, mul ,none", tools) == [
        {"type": "function", "function": {"name": "add"}}, {"type": "function", "function": {"name": "mul"}}, "none"]
    with pytest.raises(ValueError, match="not auto, required, none or a tool"):
        parse_tool_choice("eval", tools)


def test_exports_replay_and_share_without_the_key() -> None:
    endpoint = Endpoint("http://127.0.0.1:23333", "sk-very-secret", "m", True, "abc")
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    stats = [{"ttft_s": 0.042, "tokens_per_s": 31.25, "completion_tokens": 3, "prompt_tokens": 12,
              "usage_reported": True, "cancelled": False, "finish_reason": "stop"}]
    dumped = export_json(messages, endpoint, SamplingParams(), stats)
    assert "sk-very-secret" not in dumped
    loaded = json.loads(dumped)
    assert loaded["messages"] == messages and loaded["endpoint"]["has_api_key"] is True
    from webui.i18n.catalog import Catalog
    from webui.ui.common import reply_numbers

    catalog = Catalog.load()
    markdown = export_markdown(messages, [reply_numbers(catalog, s, "en") for s in stats])
    assert "**user**\n\n2+2?" in markdown and "TTFT 42 ms · 31.2 tok/s · 12 + 3 tokens" in markdown
    chinese = export_markdown(messages, [reply_numbers(catalog, s, "zh") for s in stats])
    assert "首 token 延迟 42 ms · 31.2 token/秒 · 12 + 3 个 token" in chinese  # the UI words it, in its language


def test_invalid_arguments_from_the_model_do_not_poison_the_history(lmdeploy_like) -> None:
    """What LMDeploy's grammar gave a random model on the GPU (tests/data/tool_choice-probe.json: whitespace
    arguments under tool_choice required): the tool reports the error, and the history sent next has "{}"."""
    from webui.services.tool_loop import ToolLoop, _sendable

    probe = json.loads((DATA / "tool_choice-probe.json").read_text(encoding="utf-8"))
    call = probe["eager_qwen"]["required"]["body"]["choices"][0]["message"]["tool_calls"][0]
    sent = _sendable(call)
    assert sent["function"] == {"name": "add", "arguments": "{}"} and sent["id"] == call["id"]
    assert call["function"]["arguments"].startswith("{\n")  # the original is untouched
    good = {"id": "c", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    assert _sendable(good) is good
    run = new_run("Compute (3+5)*2")
    ToolLoop._run_call(run, call, {"add", "mul"})
    assert run.steps[-1]["ok"] is False and "not JSON" in run.steps[-1]["result"]


def test_every_error_kind_has_words_in_both_languages() -> None:
    """The UI words a ChatError by its kind: each kind the service can raise has a message in en and zh."""
    from webui.i18n.catalog import Catalog
    from webui.services.chat import ERROR_KINDS

    catalog = Catalog.load()
    for locale in ("en", "zh"):
        missing = [k for k in ERROR_KINDS if f"chat.errors.{k}" not in catalog.messages[locale]]
        assert not missing, (locale, missing)


@pytest.fixture
def odd_server():
    """A real HTTP server on loopback that is not an OpenAI API: a web page for /v1/models and an empty SSE
    stream for chat completions (what the console's own address, or a broken proxy, answers)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"<html>a web page</html>" if self.path == "/v1/models" else b""
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"data: [DONE]\n\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_is_not_openai_an_empty_reply_and_a_huge_message_are_named(odd_server: str,
                                                                                lmdeploy_like) -> None:
    from webui.services.chat import ChatService

    chat = ChatService()
    with pytest.raises(ChatError) as not_api:
        chat.endpoint_for_url(odd_server)
    assert not_api.value.kind == "not_openai"
    with pytest.raises(ChatError) as empty:
        chat.complete(Endpoint(odd_server, "", "m"), [{"role": "user", "content": "hi"}], SamplingParams())
    assert empty.value.kind == "empty_reply"
    services, ready = lmdeploy_like
    endpoint = services.chat.endpoint_for_server(ready.id)
    before = len(requests_logged(services, ready.id))
    with pytest.raises(ChatError) as huge:
        services.chat.complete(endpoint, [{"role": "user", "content": "x" * (1 << 20)}], SamplingParams())
    assert huge.value.kind == "too_long" and "1,048,576" in huge.value.message
    assert len(requests_logged(services, ready.id)) == before  # nothing was sent
    chat.close()
