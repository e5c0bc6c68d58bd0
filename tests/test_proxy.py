"""The fleet behind LMDeploy's own proxy: the real `lmdeploy serve proxy` (it runs on the CPU), stand-in
api_servers started by the ServerManager as its nodes, real HTTP through it, kills and a console restart."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import MODEL_NAME, ChatServer, fake_argv_factory, wait_until
from webui.services.chat import SamplingParams
from webui.services.container import Services
from webui.services.load import bearer
from webui.services.proxy import (
    NodeStatus,
    ProxySpec,
    check_proxy_spec,
    metric_sum,
    proxy_argv,
    proxy_cli_args,
    proxy_preview,
)
from webui.services.serve_spec import ServerSpec, suggest_port
from webui.services.server_states import ServerState
from webui.settings import Settings

READY = ServerState.READY.value
# Where LMDeploy 0.18.0 keeps the proxy's node list by default (beside its source): the console never writes there.
SITE_NODE_FILE = Path(importlib.util.find_spec("lmdeploy").submodule_search_locations[0]) / "serve" / "proxy" / \
    "proxy_config.json"
PROXY_START_S = 90  # the proxy imports lmdeploy (and torch): seconds on a busy 2-core machine




def gone_or_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start_server(services: Services, settings: Settings, model_name: str = "") -> str:
    spec = ServerSpec(model_path=str(settings.model_roots[0] / MODEL_NAME), backend="pytorch", model_name=model_name,
                      port=services.servers.suggest_port())
    outcome = services.servers.start(spec)
    assert outcome.server is not None, outcome.errors
    return outcome.server.id


def wait_ready(services: Services, server_id: str) -> None:
    wait_until(lambda: services.servers.get(server_id).state == READY, 60, f"server {server_id} READY")


def start_proxy(services: Services, **fields) -> str:
    spec = replace(ProxySpec(port=suggest_port(25000 + os.getpid() % 500)), **fields)
    outcome = services.proxy.start(spec)
    assert not outcome.errors, outcome.errors
    snap = services.proxy.wait_for({READY, ServerState.FAILED.value}, PROXY_START_S)
    assert snap.state == READY, (snap, services.proxy.log()[-30:])
    return snap.base_url


def chat(base_url: str, model: str, stream: bool = False, key: str = "") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(base_url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def listed(base_url: str, key: str = "") -> dict:
    return httpx.get(base_url + "/nodes/status", headers=bearer(key), timeout=5).json()


@pytest.fixture
def fleet_services(settings: Settings) -> Iterator[Services]:
    """Services whose servers are the stand-in, a second slower to be ready (so STARTING can be seen)."""
    services = Services.build(settings, argv_factory=fake_argv_factory("--grandchild", "--init-seconds", "1.5"))
    try:
        yield services
    finally:
        services.close()


# --- pure -------------------------------------------------------------------------------------------------
def test_spec_argv_preview_and_refusals(tmp_path: Path):
    spec = ProxySpec(port=23999, routing_strategy="random", api_keys=("sk-secret",), disable_cache_status=True,
                     heartbeat_s=30)
    argv = proxy_argv(spec, "/py", tmp_path / "proxy_config.json")
    assert argv[:4] == ["/py", "-m", "webui.workers.proxy_worker", ""]  # no node file when the cache is off
    assert argv[4:] == proxy_cli_args(spec) and argv[4:6] == ["serve", "proxy"]
    assert ["--routing-strategy", "random"] == argv[argv.index("--routing-strategy"):][:2]
    assert "--disable-cache-status" in argv and "sk-secret" not in " ".join(argv)  # keys go by the environment
    cached = proxy_argv(replace(spec, disable_cache_status=False), "/py", tmp_path / "proxy_config.json")
    assert cached[3] == str(tmp_path / "proxy_config.json") and "--disable-cache-status" not in cached
    preview = proxy_preview(spec)
    assert "sk-secret" not in preview and "--api-keys '<API_KEY>'" in preview
    assert preview.startswith("LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION=30 lmdeploy serve proxy")
    assert ProxySpec.from_json_dict({"api_keys": "one key", "port": 9000}).api_keys == ("one key",)

    def keys_of(s: ProxySpec) -> set[str]:
        return {e.key for e in check_proxy_spec(s)}

    free = suggest_port(26000 + os.getpid() % 500)
    assert keys_of(ProxySpec(port=free)) == set()
    assert keys_of(ProxySpec(port=free, host="0.0.0.0")) == {"errors.server_open_without_key"}
    assert keys_of(ProxySpec(port=free, host="0.0.0.0", api_keys=("k",))) == set()
    assert keys_of(ProxySpec(port=free, api_keys=("a b",))) == {"errors.api_key_space"}
    assert keys_of(ProxySpec(port=free, routing_strategy="round_robin")) == {"errors.choice"}
    assert keys_of(ProxySpec(port=free, heartbeat_s=0)) == {"errors.int_range"}
    assert keys_of(ProxySpec(port=80)) == {"errors.port_range"}
    # a script that calls the service with text where the form would have made numbers gets field errors
    assert keys_of(ProxySpec(port=str(free), heartbeat_s="10")) == {"errors.port_range", "errors.int_range"}  # type: ignore[arg-type]
    assert keys_of(ProxySpec(port=free, host="h" * 300)) == {"errors.too_long"}
    assert {e.key for e in check_proxy_spec(ProxySpec(port=free), ports_claimed={free})} == {"errors.port_claimed"}
    with socket.socket() as held:
        held.bind(("127.0.0.1", free))
        held.listen()
        assert keys_of(ProxySpec(port=free)) == {"errors.port_in_use"}


def test_metric_sum_reads_every_engine_and_only_that_name():
    text = ('# HELP lmdeploy:num_requests_running x\n'
            'lmdeploy:num_requests_running{engine="0",model_name="m"} 3.0\n'
            'lmdeploy:num_requests_running{engine="1",model_name="m"} 2.0\n'
            'lmdeploy:num_requests_running_total 99\n'
            'lmdeploy:num_requests_waiting{engine="0",model_name="m"} 1.0\n')
    assert metric_sum(text, "lmdeploy:num_requests_running") == 5.0
    assert metric_sum(text, "lmdeploy:num_requests_waiting") == 1.0
    assert metric_sum(text, "lmdeploy:gpu_cache_usage_perc") is None


# --- the real proxy -----------------------------------------------------------------------------------------
def test_fleet_routes_survives_a_removal_under_load_and_notices_a_dead_node(fleet_services: Services,
                                                                           settings: Settings):
    services = fleet_services
    site_file_before = SITE_NODE_FILE.exists() and SITE_NODE_FILE.stat().st_mtime
    # LMDeploy's heartbeat period, made short so that its effect can be seen in a test
    base = start_proxy(services, heartbeat_s=4)
    a = start_server(services, settings)
    proxy = services.proxy.snapshot()
    assert proxy.node_file == str(settings.state_dir / "proxy" / "proxy_config.json")
    assert "serve proxy" in proxy.command and proxy.pid

    # refusals: a server that is not ready yet, a URL that is not one, a node that does not answer
    refused = services.proxy.add_node(a)
    assert refused.error == "errors.server_state" and refused.params["needs"] == READY, refused
    assert services.proxy.add_node("not a url at all").error == "errors.bad_url"
    dead_port = suggest_port(27000 + os.getpid() % 500)
    assert services.proxy.add_node(f"127.0.0.1:{dead_port}").error == "errors.node_not_ready"
    assert listed(base) == {}

    b = start_server(services, settings)
    wait_ready(services, a)
    wait_ready(services, b)
    url_a, url_b = services.servers.get(a).base_url, services.servers.get(b).base_url
    assert services.proxy.add_node(a).ok
    assert services.proxy.add_node(url_b + "/v1").ok  # a console server given by its URL is still that server
    model = services.servers.get(a).model_id
    assert set(listed(base)) == {url_a, url_b}
    assert listed(base)[url_a]["models"] == [model]
    saved = json.loads((settings.state_dir / "proxy" / "proxy_config.json").read_text())
    assert set(saved) == {url_a, url_b}  # the proxy's cache status lives in the state folder
    assert (SITE_NODE_FILE.exists() and SITE_NODE_FILE.stat().st_mtime) == site_file_before

    # chat through the proxy
    resp = chat(base, model)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"], resp.text
    fleet = services.proxy.fleet_status()
    assert fleet.answered and not fleet.mixed_models and fleet.models == (model,)
    assert [(n.url, n.server_id) for n in fleet.nodes] == sorted([(url_a, a), (url_b, b)])
    for node in fleet.nodes:
        assert node.health == 200 and node.served_models == (model,) and node.kv_usage is not None
        assert node.running is None  # the stand-in's /metrics has only the KV gauge

    # 20 streamed requests through the proxy; a node is removed while they run: every one still succeeds
    def one(_: int) -> tuple[int, str]:
        r = chat(base, model, stream=True)
        return r.status_code, r.text

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(one, i) for i in range(20)]
        wait_until(lambda: sum(f.done() for f in futures) >= 2, 30, "the first requests")
        removed = services.proxy.remove_node(a)
        done_at_removal = sum(f.done() for f in futures)
        results = [f.result() for f in futures]
    assert removed.ok, removed
    assert done_at_removal < 20, "the removal came after the load"
    failed = [(status, text[-300:]) for status, text in results
              if status != 200 or "data: [DONE]" not in text or "error_code" in text]
    assert not failed, failed
    assert set(listed(base)) == {url_b}
    assert chat(base, model).status_code == 200

    # a third node with another model name: the proxy treats it as another model, and the fleet says so
    c = start_server(services, settings, model_name="other-model")
    wait_ready(services, c)
    assert services.proxy.add_node(c).ok
    assert services.proxy.add_node(a).ok
    fleet = services.proxy.fleet_status()
    assert fleet.mixed_models and set(fleet.models) == {model, "other-model"}

    # kill node b: the fleet shows it at once; LMDeploy's heartbeat drops it within its period
    os.killpg(services.servers.get(b).pid, signal.SIGKILL)

    def b_now() -> NodeStatus | str | None:
        nodes = {n.url: n for n in services.proxy.fleet_status().nodes}
        if url_b not in nodes:
            return "dropped"  # the heartbeat came first (a reading of the fleet takes seconds on a busy machine)
        return nodes[url_b] if not nodes[url_b].reachable else None

    dead = wait_until(b_now, 30, "b unreachable")
    if dead != "dropped":
        assert isinstance(dead, NodeStatus)
        assert dead.health is None and dead.served_models == () and dead.kv_usage is None
    started = time.monotonic()
    wait_until(lambda: url_b not in listed(base), 15, "the heartbeat to drop b")
    dropped_after = time.monotonic() - started
    assert dropped_after < 15
    assert set(listed(base)) == {url_a, services.servers.get(c).base_url}
    assert all(chat(base, model).status_code == 200 for _ in range(6))  # routed to a only, never to dead b
    # the console still knows it added b: the fleet says the heartbeat dropped it, until it is removed
    fleet = services.proxy.fleet_status()
    assert fleet.dropped == (url_b,) and url_b not in {n.url for n in fleet.nodes}
    assert fleet.as_dict()["dropped"] == [url_b]
    assert services.proxy.remove_node(url_b).ok and services.proxy.fleet_status().dropped == ()

    stopped = services.proxy.stop()
    assert stopped.state in (ServerState.STOPPING.value, ServerState.STOPPED.value)
    assert services.proxy.wait_for({ServerState.STOPPED.value}, 15).state == ServerState.STOPPED.value
    assert gone_or_zombie(proxy.pid)
    assert services.servers.get(a).state == READY  # stopping the proxy leaves its nodes running
    assert services.proxy.add_node(a).error == "errors.proxy_not_ready"


def test_proxy_with_a_key_is_reattached_after_a_console_restart(settings: Settings):
    key = "sk-proxy-" + os.urandom(6).hex()
    services = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        a = start_server(services, settings)
        wait_ready(services, a)
        base = start_proxy(services, api_keys=(key,))
        assert services.proxy.add_node(a).ok
        model = services.servers.get(a).model_id
        first = services.proxy.snapshot()
        assert first.has_api_key and "<API_KEY>" in first.command and key not in first.command
        # a second proxy is refused while this one runs, and so is its port
        again = services.proxy.start(ProxySpec(port=suggest_port(28000 + os.getpid() % 500)))
        assert [e.key for e in again.errors] == ["errors.proxy_running"]
        # the key guards /v1 (and the proxy hands it on to the node, which has none)
        assert httpx.get(base + "/v1/models", timeout=5).status_code == 401
        assert httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                         timeout=5).json()["data"][0]["id"] == model
        assert chat(base, model, key=key).status_code == 200
        assert services.proxy.api_key() == key
        # with keys, LMDeploy's /nodes routes ask for one too: nobody else registers a node to catch the prompts
        url_a = services.servers.get(a).base_url
        for route, body in (("/nodes/add", {"url": "http://127.0.0.1:9/"}), ("/nodes/remove", {"url": url_a})):
            assert httpx.post(base + route, json=body, timeout=5).status_code == 401
        assert httpx.get(base + "/nodes/status", timeout=5).status_code == 401
        assert set(listed(base, key)) == {url_a}
        # neither the proxy itself nor a node guarded by another key (it would refuse every routed request)
        assert services.proxy.add_node(base).error == "errors.node_is_proxy"
        assert services.proxy.add_node(first.server_id).error == "errors.node_is_proxy"
        assert services.proxy.add_node(url_a, api_key="sk-another").error == "errors.node_key_mismatch"
        # the proxy is a server of the console (observed, never owned): Chat, Tools and Compare reach the fleet
        target = services.servers.wait_for(first.server_id, {READY}, 20)
        assert (target.owned, target.base_url, target.has_api_key) == (False, base, True)
        reply, stats, _ = services.chat.complete(services.chat.endpoint_for_server(first.server_id),
                                                 [{"role": "user", "content": "hello fleet"}], SamplingParams())
        assert reply and stats.completion_tokens, stats
        # the key is in none of: the command line, the database, the proxy's log
        assert key not in " ".join(psutil.Process(first.pid).cmdline())
    finally:
        services.close(keep_servers=True)
    db = sqlite3.connect(settings.db_path)
    try:
        assert key not in json.dumps(db.execute("SELECT * FROM prefs").fetchall())
    finally:
        db.close()
    assert key not in Path(first.log_path).read_text(errors="replace")
    assert psutil.pid_exists(first.pid)  # kept running while the console was away

    services = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        snap = services.proxy.snapshot()
        assert (snap.state, snap.pid, snap.port, snap.server_id) == (READY, first.pid, first.port, first.server_id)
        fleet = services.proxy.fleet_status()
        assert [(n.url, n.server_id, n.health) for n in fleet.nodes] == [(services.servers.get(a).base_url, a, 200)]
        assert chat(base, model, key=services.proxy.api_key()).status_code == 200
        services.proxy.stop()
        assert services.proxy.wait_for({ServerState.STOPPED.value}, 15).state == ServerState.STOPPED.value
        assert gone_or_zombie(first.pid)
        assert services.servers.get(first.server_id) is None  # gone from the console's servers with it
        # started again, the proxy reads its nodes back from the state folder (LMDeploy's cache status)...
        base = start_proxy(services, port=first.port)
        assert set(listed(base)) == {services.servers.get(a).base_url}
        # ...and a proxy that dies on its own is FAILED, with its exit status
        os.killpg(services.proxy.snapshot().pid, signal.SIGKILL)
        died = services.proxy.wait_for({ServerState.FAILED.value}, 15)
        assert (died.state, died.exit_code) == (ServerState.FAILED.value, -signal.SIGKILL)
        assert services.proxy.add_node(a).error == "errors.proxy_not_ready"
    finally:
        services.close()


def test_a_llama_cpp_server_is_a_node_beside_console_servers_and_survives_the_heartbeat(
        settings: Settings, chat_server: ChatServer):
    """llama.cpp's server (llama-cpp-python, SmolLM2) has no /health: added by URL with its key, the proxy routes
    chat to it among two console servers, and the heartbeat keeps it (LMDeploy's own dropped it at the first beat);
    a stand-in that stops answering is still dropped."""
    services = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        a, b = start_server(services, settings), start_server(services, settings)
        wait_ready(services, a)
        wait_ready(services, b)
        key = chat_server.api_key
        base = start_proxy(services, api_keys=(key,), heartbeat_s=2)
        assert services.proxy.add_node(a).ok and services.proxy.add_node(b).ok
        assert httpx.get(chat_server.base_url + "/health", timeout=5).status_code == 404
        assert services.proxy.add_node(chat_server.base_url + "/v1", api_key=key).ok
        fleet = services.proxy.fleet_status()
        llama = {n.url: n for n in fleet.nodes}[chat_server.base_url]
        assert llama.server_id == "" and llama.served_models == (chat_server.model,) and llama.health == 404
        assert fleet.mixed_models and set(fleet.models) == {services.servers.get(a).model_id, chat_server.model}

        reply = chat(base, chat_server.model, key=key)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"], reply.text
        stand_in = chat(base, services.servers.get(a).model_id, key=key)
        assert stand_in.status_code == 200 and "error_code" not in stand_in.text, stand_in.text

        # b stops answering; after a few beats b is gone and llama.cpp's server is still there, still answering
        url_b = services.servers.get(b).base_url
        os.killpg(services.servers.get(b).pid, signal.SIGKILL)
        wait_until(lambda: url_b not in listed(base, key), 20, "the heartbeat to drop b")
        time.sleep(5)  # two more beats
        assert set(listed(base, key)) == {services.servers.get(a).base_url, chat_server.base_url}
        assert "console: removed node " + url_b in "\n".join(services.proxy.log())
        again = chat(base, chat_server.model, key=key)
        assert again.status_code == 200 and "error_code" not in again.text, again.text
        assert services.proxy.remove_node(chat_server.base_url).ok
        assert set(listed(base, key)) == {services.servers.get(a).base_url}
    finally:
        services.close()
