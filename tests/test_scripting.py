"""Every Serve action works from gradio_client under its stable API name (as the README shows)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from tests.conftest import fake_argv_factory, launched_console
from webui.services.container import Services
from webui.services.serve_spec import suggest_port
from webui.settings import Settings


@pytest.fixture
def client(settings: Settings) -> Iterator[tuple[Client, Services]]:
    with launched_console(settings, argv_factory=fake_argv_factory()) as console:
        client = Client(console.url + "/", verbose=False)
        try:
            yield client, console.services
        finally:
            client.close()


def wait_state(client: Client, server_id: str, state: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        servers = {s["id"]: s for s in client.predict(api_name="/list_servers")}
        if servers[server_id]["state"] == state:
            return servers[server_id]
        time.sleep(0.1)
    raise AssertionError(f"{server_id} never became {state}: {servers[server_id]}")


def test_api_names_are_stable(client) -> None:
    api, _ = client
    names = set(api.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/start_server", "/stop_server", "/list_servers", "/server_log", "/attach_server",
            "/restart_server", "/set_active_server", "/preview_command",
            "/submit_quantize", "/cancel_job", "/list_jobs", "/job_progress", "/preflight_quantize",
            "/chat", "/run_tools"} <= names
    assert "/partial" not in names and "/refresh" not in names


def test_start_list_log_stop_from_a_script(client, model_root: Path) -> None:
    api, services = client
    port = suggest_port(33000)
    model = str(model_root / "tiny llama; echo pwned")
    message, selected, next_port = api.predict(
        model_path=model, backend="pytorch", model_format="auto", kv_policy="int8", cache_max_entry_count=0.4,
        session_len=0, max_batch_size=0, tp=1, port=port, host="127.0.0.1", model_name="tiny", api_keys="",
        tool_call_parser="", eager_mode=False, extra_args="", api_name="/start_server",
    )
    assert "Started server" in message
    server_id = selected
    assert next_port != port
    ready = wait_state(api, server_id, "READY")
    assert ready["model_id"] == "tiny" and ready["kv_policy"] == "int8" and ready["port"] == port
    assert "--quant-policy 8" in ready["command"]
    log = api.predict(server_id=server_id, lines=50, api_name="/server_log")
    assert "Uvicorn running" in log

    refused, _, _ = api.predict(
        model_path=model, backend="turbomind", model_format="auto", kv_policy="fp8", cache_max_entry_count=0.4,
        session_len=0, max_batch_size=0, tp=1, port=port, host="127.0.0.1", model_name="", api_keys="",
        tool_call_parser="", eager_mode=False, extra_args="", api_name="/start_server",
    )
    assert "PyTorch backend" in refused  # fp8 KV with TurboMind
    assert "already in use" in refused or "another server" in refused  # the READY server holds the port
    assert len(api.predict(api_name="/list_servers")) == 1

    stopped = api.predict(server_id=server_id, api_name="/stop_server")
    assert "Stopping" in stopped  # the call signals and returns; the state follows
    assert wait_state(api, server_id, "STOPPED")["ended_at"] is not None


def test_attach_from_a_script(client) -> None:
    api, _ = client
    message, selected = api.predict(base_url="not a url at all", api_key="", api_name="/attach_server")
    assert "not an http(s) URL" in message
    message, selected = api.predict(base_url="http://127.0.0.1:9", api_key="", api_name="/attach_server")
    assert "Unreachable" in message
    assert wait_state(api, selected, "UNREACHABLE")["owned"] is False


@pytest.mark.engine
def test_quantize_from_a_script(client, model_root: Path) -> None:
    api, services = client
    model = str(model_root / "tiny llama; echo pwned")
    form = dict(model_path=model, output_dir="", calib_source="none", calib_dataset="wikitext2", calib_paths="",
                text_field="text", calib_samples=0, calib_seqlen=2048, batch_size=1, w_bits=4, w_group_size=128,
                w_sym=False, search_scale=False, dtype="auto", device="cpu", trust_remote_code=False)
    refused, job_id = api.predict(**{**form, "device": "cuda"}, api_name="/submit_quantize")
    assert job_id == "" and "No GPU" in refused  # this machine has none
    message, job_id = api.predict(**form, api_name="/submit_quantize")
    assert job_id and "started" in message
    queued_message, queued_id = api.predict(**form, api_name="/submit_quantize")
    assert "queued" in queued_message
    assert "Cancelled" in api.predict(job_id=queued_id, api_name="/cancel_job")
    deadline = time.monotonic() + 120
    while (job := api.predict(job_id=job_id, api_name="/job_progress"))["state"] != "SUCCEEDED":
        assert job["state"] in ("QUEUED", "RUNNING") and time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["fraction"] == 1.0 and job["result"]["quantization_config"]["quant_method"] == "awq"
    states = {j["id"]: j["state"] for j in api.predict(api_name="/list_jobs")}
    assert states == {job_id: "SUCCEEDED", queued_id: "CANCELLED"}


def test_chat_and_run_tools_from_a_script(client, chat_server) -> None:
    api, _ = client
    target = {"base_url": chat_server.base_url, "api_key": chat_server.api_key}
    first = api.predict(message="Name one GPU maker.", temperature=0.0, max_tokens=24, api_name="/chat", **target)
    assert first["reply"].strip() and first["model"] == chat_server.model
    assert first["stats"]["ttft_s"] > 0 and first["stats"]["completion_tokens"] > 0
    follow = api.predict(message="And another?", history=first["messages"], temperature=0.0, max_tokens=24,
                         api_name="/chat", **target)
    assert [m["role"] for m in follow["messages"]] == ["user", "assistant", "user", "assistant"]

    wrong = api.predict(message="hi", base_url=chat_server.base_url, api_key="sk-wrong", api_name="/chat")
    assert wrong["error"]["kind"] == "auth"
    no_server = api.predict(message="hi", api_name="/chat")
    assert no_server["error"]["kind"] == "no_server"

    run = api.predict(prompt="What is 3 plus 5? Then multiply by 2.", tool_choice="add, mul, none",
                      api_name="/run_tools", **target)
    assert run["done"] and run["model_calls"] == 3 and run["error"] is None
    assert [s["name"] for s in run["steps"] if s["type"] == "tool"] == ["add", "mul"]
    bad = api.predict(prompt="x", tools='[{"type": "function", "function": {"name": "f", "parameters": '
                      '{"type": "object", "properties": {"n": {"type": "int"}}}}}]', api_name="/run_tools", **target)
    assert bad["error"]["kind"] == "bad_tools" and "write “integer”" in bad["error"]["message"]
    assert "$[0].function.parameters.properties.n.type" in bad["error"]["message"]
    choice = api.predict(prompt="x", tool_choice="eval", api_name="/run_tools", **target)
    assert choice["error"] == {"kind": "bad_request", "message": choice["error"]["message"]}
    assert "'eval' is not auto, required, none or a tool" in choice["error"]["message"]
