"""Chat and tools against a real OpenAI-compatible server with a real model: llama.cpp's server with
SmolLM2-135M-Instruct on the CPU (tests/conftest.py: chat_server). Nothing here is stubbed."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.conftest import ChatServer
from webui.services.chat import ChatError, ChatService, Endpoint, SamplingParams
from webui.services.serve_spec import suggest_port
from webui.services.tool_loop import ToolLoop, new_run, parse_tool_choice, preset

GREEDY = SamplingParams(temperature=0.0, max_tokens=48)


@pytest.fixture
def chat() -> ChatService:
    service = ChatService()  # URL targets only
    yield service
    service.close()


@pytest.fixture
def endpoint(chat: ChatService, chat_server: ChatServer) -> Endpoint:
    return chat.endpoint_for_url(chat_server.base_url, chat_server.api_key)


def test_models_are_listed_and_the_server_is_not_taken_for_lmdeploy(endpoint: Endpoint, chat_server) -> None:
    assert endpoint.model == chat_server.model and endpoint.model.endswith(".gguf")
    assert not endpoint.lmdeploy
    assert endpoint.base_url == chat_server.base_url


def test_a_reply_streams_with_its_numbers(chat: ChatService, endpoint: Endpoint) -> None:
    events = list(chat.stream(endpoint, [{"role": "system", "content": "You are brief."},
                                         {"role": "user", "content": "Write a short poem about GPUs."}], GREEDY))
    texts = [e.content for e in events if e.stats is None]
    assert len(texts) > 5 and "".join(texts).strip()  # many pieces, not one block
    stats = events[-1].stats
    assert stats.ttft_s is not None and 0 < stats.ttft_s < stats.seconds
    assert stats.completion_tokens == len(texts) and not stats.usage_reported  # llama.cpp sends no usage
    assert stats.finish_reason in ("stop", "length") and stats.tokens_per_s > 0
    again = list(chat.stream(endpoint, [{"role": "system", "content": "You are brief."},
                                        {"role": "user", "content": "Write a short poem about GPUs."}], GREEDY))
    assert "".join(e.content for e in again) == "".join(texts)  # greedy is repeatable: same server, same text


def test_stop_mid_stream_frees_the_server(chat: ChatService, endpoint: Endpoint) -> None:
    """The server runs one request at a time and does not interrupt it for the next: a second request waits
    until the first ends. Stop on the first must let the second start at once."""
    long = SamplingParams(temperature=0.0, max_tokens=3000)
    essay = "Write a very long essay about the history of computing, at least 3000 words."
    prompt = [{"role": "user", "content": essay}]
    first_id = chat.new_request_id()
    first_events: list = []
    got_tokens = threading.Event()

    def first() -> None:
        for event in chat.stream(endpoint, prompt, long, request_id=first_id):
            first_events.append(event)
            if len(first_events) >= 5:
                got_tokens.set()

    second_events: list = []

    def second() -> None:
        second_events.extend(chat.stream(endpoint, [{"role": "user", "content": "Say hi."}],
                                         SamplingParams(temperature=0.0, max_tokens=8)))

    t1 = threading.Thread(target=first)
    t1.start()
    assert got_tokens.wait(60), "the long reply never started"
    t2 = threading.Thread(target=second)
    t2.start()
    time.sleep(3.0)
    assert first_events[-1].stats is None, "the long reply ended by itself; the test needs a longer one"
    assert not second_events, "the second request was served while the first was running"
    cancelled_at = time.monotonic()
    assert chat.cancel(first_id)
    t1.join(30)
    t2.join(60)
    final = first_events[-1].stats
    assert final.cancelled and final.finish_reason == "cancelled" and final.completion_tokens < 3000
    assert second_events and second_events[-1].stats.completion_tokens > 0
    waited = second_events[-1].stats.ttft_s - 3.0  # it had been waiting 3 s before the stop
    assert waited < 5.0, f"the second request still waited {waited:.1f} s after Stop"
    assert time.monotonic() - cancelled_at < 30


def test_a_dead_server_and_a_wrong_key_are_explained(chat: ChatService, chat_server: ChatServer,
                                                      endpoint: Endpoint) -> None:
    dead = f"http://127.0.0.1:{suggest_port(18900)}"
    with pytest.raises(ChatError) as refused:
        chat.endpoint_for_url(dead)
    assert refused.value.kind == "connection" and dead in refused.value.message
    with pytest.raises(ChatError) as refused_stream:
        list(chat.stream(Endpoint(dead, "", "m"), [{"role": "user", "content": "x"}], GREEDY))
    assert refused_stream.value.kind == "connection"
    with pytest.raises(ChatError) as wrong:
        list(chat.stream(Endpoint(chat_server.base_url, "sk-wrong", endpoint.model),
                         [{"role": "user", "content": "x"}], GREEDY))
    assert wrong.value.kind == "auth" and wrong.value.status == 401


def test_the_add_mul_flow_runs_end_to_end(chat: ChatService, endpoint: Endpoint) -> None:
    """Plan add → mul → answer: real calls from the model, run by the safe built-ins, fed back as
    `role: tool` messages with their tool_call_id, then an answer in text."""
    tools, _ = preset("add_mul")
    run = new_run("What is 3 plus 5? Then multiply by 2.")
    loop = ToolLoop(chat)
    updates = list(loop.run(endpoint, run, tools, parse_tool_choice("add, mul, none", tools), GREEDY, max_steps=5))
    assert run.error is None and run.answer is not None and run.model_calls == 3
    assert [s["type"] for s in run.steps] == ["model", "tool", "model", "tool", "model"]
    add_call, add_result = run.steps[0]["tool_calls"][0], run.steps[1]
    mul_call, mul_result = run.steps[2]["tool_calls"][0], run.steps[3]
    assert add_call["function"]["name"] == "add" and mul_call["function"]["name"] == "mul"
    assert run.steps[0]["streamed"] and run.steps[2]["streamed"]  # deltas assembled from the stream
    a = json.loads(add_call["function"]["arguments"])
    m = json.loads(mul_call["function"]["arguments"])
    assert json.loads(add_result["result"]) == a["a"] + a["b"] and add_result["ok"]
    assert json.loads(mul_result["result"]) == m["a"] * m["b"] and mul_result["ok"]
    tool_messages = [msg for msg in run.messages if msg["role"] == "tool"]
    assert [msg["tool_call_id"] for msg in tool_messages] == [add_call["id"], mul_call["id"]]
    assistant_calls = [msg for msg in run.messages if msg.get("tool_calls")]
    assert all(msg["content"] == "" for msg in assistant_calls)  # never null: llama.cpp refuses it
    assert run.messages[-1] == {"role": "assistant", "content": run.answer}
    assert len(updates) >= 3


def test_auto_falls_back_to_one_request_where_the_server_cannot_stream_it(chat: ChatService,
                                                                          endpoint: Endpoint) -> None:
    tools, _ = preset("add_mul")
    run = new_run("What is 3 plus 5?")
    list(ToolLoop(chat).run(endpoint, run, tools, "auto", GREEDY, max_steps=1))
    step = run.steps[0]
    assert not step["streamed"] and step["fallback"]
    assert step["tool_calls"] and step["tool_calls"][0]["function"]["name"] in ("add", "mul")
    assert run.error == {"kind": "step_limit", "message": "no answer after 1 model calls"}


def test_a_manual_tool_waits_for_the_users_result(chat: ChatService, endpoint: Endpoint) -> None:
    from webui.services.tool_loop import give_result

    tools, prompt = preset("weather")
    run = new_run(prompt)
    loop = ToolLoop(chat)
    list(loop.run(endpoint, run, tools, parse_tool_choice("get_current_weather", tools), GREEDY, max_steps=3))
    assert run.waiting and run.waiting[0]["name"] == "get_current_weather" and not run.done
    resumed = give_result(run, run.waiting[0]["call_id"], '{"temperature": 21, "sky": "clear"}')
    assert not resumed.waiting and resumed.messages[-1]["role"] == "tool"
    list(loop.run(endpoint, resumed, tools, "none", GREEDY, max_steps=3))
    assert resumed.answer is not None and resumed.model_calls == 2
