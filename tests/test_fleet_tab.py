"""The Fleet tab's handlers called as the page and scripts call them, without a browser and without starting the
proxy (tests/test_proxy.py runs the real one; tests/test_browser_fleet.py drives it from the page).

Refusals must name the field (start) or say what is wrong in the page's language (add, remove), start nothing,
and the scripting functions return plain JSON values."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import venv
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import children
from webui.i18n.catalog import Catalog
from webui.services.container import Services
from webui.services.proxy import FleetStatus, NodeOutcome, NodeStatus, ProxySnapshot
from webui.services.serve_spec import suggest_port
from webui.settings import Settings
from webui.ui.fleet_tab import PROXY_FORM, RAY_FORM, FleetHandlers, ProxyValues

EN: Any = SimpleNamespace(headers={"accept-language": "en-US,en;q=0.9"})
ZH: Any = SimpleNamespace(headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.5"})


@pytest.fixture
def fleet(bare_settings: Settings) -> Iterator[tuple[FleetHandlers, Services]]:
    services = Services.build(bare_settings)
    try:
        yield FleetHandlers(services.proxy, services.servers, Catalog.load(), sys.executable), services
    finally:
        services.close()




def start(handlers: FleetHandlers, request: Any = EN, **raw: Any) -> tuple[str, str]:
    return PROXY_FORM.bind(handlers.start_proxy)(**raw, request=request)


def free_port() -> int:
    return suggest_port(29000 + os.getpid() % 500)


def test_a_refused_start_names_the_field_and_spawns_nothing(fleet) -> None:
    handlers, services = fleet
    before = children()
    for raw, label, words in (
        ({"port": 80}, "Proxy port", "1024 to 65535"),
        ({"port": "abc"}, "Proxy port", "is not a whole number"),
        ({"host": "0.0.0.0"}, "Listen address", "add an API key or use 127.0.0.1"),
        ({"host": "not a host!"}, "Listen address", "not an IP address or host name"),
        ({"routing_strategy": "round_robin"}, "Routing strategy", "min_expected_latency"),
        ({"heartbeat_s": 0}, "Heartbeat (s)", "from 1 to 3600"),
        ({"api_keys": "k" * 5000}, "API keys (optional)", "at most 4,096 are accepted"),
        ({"disable_cache_status": "maybe"}, "Disable cache status", "neither true nor false"),
    ):
        message, url = start(handlers, **{"port": free_port(), **raw})
        assert url == "" and f"**{label}**" in message and words in message, (raw, message)
        assert len(message) < 2_000  # a huge value is not echoed back
    with socket.socket() as held:  # a port another program holds
        held.bind(("127.0.0.1", 0))
        held.listen()
        message, url = start(handlers, port=held.getsockname()[1])
        assert url == "" and "**Proxy port**" in message and "already in use" in message
    # the page's language comes from the request
    message, _ = start(handlers, ZH, port=free_port(), host="0.0.0.0")
    assert "**监听地址**" in message and "请设置 API 密钥" in message
    assert not services.proxy.snapshot().exists  # nothing recorded
    assert children() <= before  # nothing spawned


def test_the_preview_shows_the_exact_command_keys_masked(fleet) -> None:
    handlers, _ = fleet
    port = free_port()
    preview = PROXY_FORM.bind(handlers.preview_proxy)
    command, status = preview(port=port, routing_strategy="random", api_keys="sk-one sk-two", heartbeat_s="30",
                              disable_cache_status=True, request=EN)
    assert command == (f"LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION=30 lmdeploy serve proxy --server-name 127.0.0.1 "
                       f"--server-port {port} --routing-strategy random --log-level INFO --disable-cache-status "
                       "--api-keys '<API_KEY>' '<API_KEY>'")
    assert "sk-one" not in command and "Ready to start" in status
    command, status = preview(port="eighty", request=EN)
    assert command == "" and "**Proxy port**" in status  # a refused value would make the command a guess
    assert PROXY_FORM.parse({}).values == ProxyValues()


def test_add_and_remove_refusals_are_readable_text(fleet) -> None:
    handlers, _ = fleet
    assert handlers.add_node("", "", EN) == "Enter a node's URL (or a console server's id) first."
    assert handlers.add_server(None, EN) == "Pick a READY server first (start one on the Serve tab)."
    assert handlers.remove_node("  ", EN) == "Pick a node to remove first."
    not_ready = handlers.add_node("http://127.0.0.1:9", "", EN)
    assert not_ready == "⚠ The proxy is Stopped; start it on the Fleet tab and wait until it is Ready."
    assert handlers.remove_node("http://127.0.0.1:9", ZH).startswith("⚠ 代理当前为已停止；")
    assert "nothing to stop" in handlers.stop_proxy(EN)
    # what the service answers once the proxy runs, worded here (states in the page's words, foreign text as code)
    state = NodeOutcome("http://127.0.0.1:23334", "errors.server_state",
                        {"id": "ab12cd34", "state": "STARTING", "needs": "READY"})
    assert handlers.outcome_text(state, "en") == "⚠ Server `ab12cd34` is Starting; this needs it Ready."
    assert "就绪" in handlers.outcome_text(state, "zh")
    bad = NodeOutcome("not a url <b>", "errors.bad_url", {"url": "not a url <b>"})
    assert handlers.outcome_text(bad, "en") == "⚠ “`not a url <b>`” is not an http(s) URL such as http://127.0.0.1:23333."
    call = NodeOutcome("u", "errors.proxy_call", {"route": "/nodes/add", "detail": "Internal `Server` Error"})
    assert handlers.outcome_text(call, "en") == "⚠ The proxy's /nodes/add failed: `Internal 'Server' Error`"
    refused = handlers.attach_remote("ftp://x", "", EN)
    assert refused.startswith("⚠") and "is not an http(s) URL" in refused


def test_the_scripting_functions_return_json(fleet) -> None:
    handlers, _ = fleet
    status = handlers.fleet_status_api()
    assert json.loads(json.dumps(status)) == status
    assert set(status) == {"proxy", "answered", "nodes", "models", "mixed_models", "dropped"}
    assert status["proxy"]["exists"] is False and status["proxy"]["state"] == "STOPPED" and status["nodes"] == []
    assert "api_keys" not in status["proxy"]
    assert handlers.proxy_log_api() == "" and handlers.proxy_log_api("many") == ""


def snapshot(**changes: Any) -> ProxySnapshot:
    base = ProxySnapshot(exists=True, state="READY", base_url="http://127.0.0.1:8001", port=8001, host="127.0.0.1",
                         routing_strategy="min_expected_latency", disable_cache_status=False, heartbeat_s=90,
                         has_api_key=True, pid=4242, started_at=1.0, ready_at=2.0, ended_at=None, exit_code=None,
                         command="lmdeploy serve proxy … --api-keys '<API_KEY>'", log_path="/tmp/proxy.log",
                         node_file="/state/proxy/proxy_config.json", server_id="fe11a9e0")
    return replace(base, **changes)


def node(url: str, server_id: str = "", models: tuple[str, ...] = ("tiny",), health: int | None = 200) -> NodeStatus:
    up = health is not None
    return NodeStatus(url=url, server_id=server_id, models=models, unfinished=2 if up else 0,
                      latency_s=0.0425 if up else None, health=health, served_models=models if up else (),
                      kv_usage=0.125 if up else None, running=3.0 if up else None, waiting=1.0 if up else None)


def test_the_views_word_the_fleet(fleet) -> None:
    handlers, _ = fleet
    nodes = (node("http://127.0.0.1:23334", "ab12cd34"), node("http://10.0.0.2:23333", models=("other",)),
             node("http://127.0.0.1:23399", "dead0001", health=None))
    fleet_status = FleetStatus(snapshot(), True, nodes, ("other", "tiny"), True)
    table = handlers.fleet_table(fleet_status, "en")
    assert list(table.columns) == ["Node URL", "Console server", "Models registered", "Health", "Models served now",
                                   "KV cache use", "Running / waiting", "Unfinished", "Latency"]
    assert table.iloc[0].tolist() == ["http://127.0.0.1:23334", "ab12cd34", "tiny", "✓ 200", "tiny", "12%", "3 / 1",
                                      2, "42 ms"]
    assert table.iloc[1, 1] == "remote" and table.iloc[2, 3] == "✗ unreachable" and table.iloc[2, 5] == ""
    assert handlers.fleet_table(fleet_status, "zh").iloc[1, 1] == "远程"
    # a server without /health (llama.cpp's) whose /v1/models answers is healthy to the heartbeat: said so
    no_route = replace(fleet_status, nodes=(node("http://127.0.0.1:18200", health=404),))
    assert handlers.fleet_table(no_route, "en").iloc[0, 3] == "✓ no /health route (kept while the server answers)"
    assert handlers.fleet_table(no_route, "zh").iloc[0, 3] == "✓ 没有 /health 路由（服务有响应就保留）"
    assert handlers.fleet_table(replace(no_route, nodes=(node("http://x:1", health=503),)), "en").iloc[0, 3] == "⚠ 503"
    notes = handlers.fleet_notes(fleet_status, "en")
    assert "different model names (`other`, `tiny`)" in notes and "requests for one never reach the others" in notes
    assert "`http://127.0.0.1:23399` does not answer" in notes and "within 90 s" in notes  # its URL as code
    assert "every 90 s the proxy checks each node's /health (a server without" in notes
    assert "不同" in handlers.fleet_notes(fleet_status, "zh")
    proxy = handlers.proxy_markdown(fleet_status.proxy, "en")
    assert "Chat/Tools/Compare target: server fe11a9e0" in proxy and "/state/proxy/proxy_config.json" in proxy
    assert "state-ready" in proxy and "pid 4242" in proxy and "/nodes/* routes are not" in proxy
    starting = handlers.proxy_markdown(snapshot(state="STARTING", server_id=""), "en")
    assert "target" not in starting and "Loading LMDeploy" in starting
    assert handlers.proxy_markdown(replace(snapshot(), exists=False), "en").startswith("No proxy yet")
    picks = handlers.node_choices(fleet_status, None, "en")
    assert picks.choices[1] == ("http://10.0.0.2:23333 · remote", "http://10.0.0.2:23333")
    assert picks.value == "http://127.0.0.1:23334"
    assert handlers.fleet_notes(FleetStatus(snapshot(state="STOPPED"), False, (), (), False), "en") == ""
    # a node the heartbeat dropped: said, with its URL as code, and offered for removal
    gone = replace(fleet_status, dropped=("http://10.0.0.9:23333",))
    assert "`http://10.0.0.9:23333`: dropped by the proxy's heartbeat" in handlers.fleet_notes(gone, "en")
    assert "已被心跳移除" in handlers.node_choices(gone, None, "zh").choices[-1][0]
    assert handlers.node_choices(gone, None, "en").choices[-1][1] == "http://10.0.0.9:23333"
    assert "dropped" not in handlers.fleet_notes(fleet_status, "en")


def recipe(handlers: FleetHandlers, request: Any = EN, **raw: Any) -> tuple[str, str]:
    return RAY_FORM.bind(handlers.ray_recipe)(**raw, request=request)


def test_the_ray_recipe_is_lmdeploys_guide_filled_in_or_names_the_field(fleet) -> None:
    handlers, _ = fleet
    script, notes = recipe(handlers, head_host="10.0.0.1", nodes=2, gpus_per_node=8, model_path="/data/m 7b",
                           model_name="m7b", socket_ifname="eth0")
    env = "NCCL_SOCKET_IFNAME=eth0 GLOO_SOCKET_IFNAME=eth0 "
    assert script.splitlines() == [
        "# head node", env + "ray start --head --port 6379",
        "# every other node", env + "ray start --address 10.0.0.1:6379",
        "# head node", env + "lmdeploy serve api_server '/data/m 7b' --backend pytorch --tp 16 "
                             "--distributed-executor-backend ray --server-port 23333 --model-name m7b"]
    t = handlers.catalog.text
    assert notes.splitlines() == [
        "1. " + t("ray.step.head", "en", host="10.0.0.1", port="6379"),
        "2. " + t("ray.step.join", "en", others="1", model="/data/m 7b", address="10.0.0.1:6379"),
        "3. " + t("ray.step.serve", "en", nodes="2", tp="16", url="`http://10.0.0.1:23333/v1`"),
        "Then attach `http://10.0.0.1:23333` above (or add it to the proxy) to chat with it here."]
    zh = recipe(handlers, ZH, head_host="10.0.0.1", model_path="/m")[1]
    assert zh.startswith("1. " + t("ray.step.head", "zh", host="10.0.0.1", port="6379")) and "然后在上方接入" in zh
    assert recipe(handlers)[0] == "" and "head node's address" in recipe(handlers)[1]
    for raw, label, key, params in (
        ({"head_host": "127.0.0.1"}, "Head node address", "ray.err.host_loopback", {"value": "127.0.0.1"}),
        ({"head_host": "0.0.0.0"}, "Head node address", "ray.err.host_unspecified", {"value": "0.0.0.0"}),
        ({"gpus_per_node": 3}, "GPUs per node", "ray.err.tp_power_of_two", {"nodes": "1", "gpus": "3", "tp": "3"}),
        ({"nodes": 3}, "Nodes", "ray.err.tp_power_of_two", {"nodes": "3", "gpus": "8", "tp": "24"}),
        ({"nodes": "two"}, "Nodes", "errors.not_whole_number", {"value": "two", "example": "2"}),
        ({"ray_port": 23333}, "api_server port", "ray.err.same_port", {"port": "23333"}),
        ({"model_path": ""}, "Model path (the same on every node)", "errors.model_required", {}),
        ({"socket_ifname": "eth 0"}, "Network interface (optional)", "ray.err.ifname", {"value": "eth 0"}),
    ):
        script, notes = recipe(handlers, **{"head_host": "10.0.0.1", "model_path": "/m", **raw})
        words = t(key, "en", **params)
        assert script == "" and f"**{label}**" in notes and words in notes, (raw, notes)


@pytest.fixture
def python_without_ray(tmp_path: Path) -> str:
    """An interpreter where `ray` does not import: a bare venv (no pip, no site-packages), made in a second."""
    venv.create(tmp_path / "no-ray", with_pip=False)
    return str(tmp_path / "no-ray" / "bin" / "python")


def test_ray_status_says_why_and_how_to_fix_it(fleet, python_without_ray: str) -> None:
    handlers, _ = fleet
    bare = FleetHandlers(handlers.proxy, handlers.servers, handlers.catalog, python_without_ray)
    status = bare.ray_status_api("10.0.0.1:6379", EN)
    assert json.loads(json.dumps(status)) == status
    assert status["state"] == "no_ray" and status["nodes"] == []
    assert status["install_command"] == f"{python_without_ray} -m pip install ray"
    assert status["message"] == handlers.catalog.text("ray.status.no_ray", "en", python=python_without_ray,
                                                      command=status["install_command"])
    text, table = bare.check_cluster("", "10.0.0.1", 6379, 2, 8, "/m", 23333, "", "", ZH)
    assert text.startswith("⚠ ") and "pip install ray`" in text and f"`{python_without_ray}`" in text
    assert list(table.columns)[0] == "IP 地址" and re.search(r"[\u4e00-\u9fff]", text) and len(table) == 0
    refused = handlers.ray_status_api("10.0.0.1:99999", EN)
    assert refused["state"] == "invalid" and refused["errors"][0]["field"] == "address"
    text, _ = handlers.check_cluster("not an address!", "", 6379, 2, 8, "", 23333, "", "", EN)
    assert "**Ray cluster address**" in text
    text, table = handlers.check_cluster("", "", 6379, 2, 8, "", 23333, "", "", EN)
    assert "Enter the Ray cluster's address" in text and len(table) == 0


def test_ray_status_of_an_address_where_nothing_listens(fleet) -> None:
    """With LMDeploy's interpreter (the test's, which has ray when the Ray tests run): nothing at the port."""
    pytest.importorskip("ray")
    handlers, _ = fleet
    port = suggest_port(29600 + os.getpid() % 300)
    status = handlers.ray_status_api(f"127.0.0.1:{port}", EN)
    assert status["state"] == "unreachable" and status["ray_version"], status
    assert status["message"].startswith(f"Nothing listens at 127.0.0.1:{port}")
