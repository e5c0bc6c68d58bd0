"""The Fleet tab in headless Chromium, in English and Chinese: the real `lmdeploy serve proxy` started from the
page (it runs on the CPU), two stand-in api_servers added as nodes, the fleet table, a chat through the proxy
from the Chat tab, a removal and the stop; a refused start and the Ray check in Chinese."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from tests.conftest import Console, fake_argv_factory, launched_console, place_model
from tests.test_browser import TIMEOUT_MS, browser, expect_rows, set_text  # noqa: F401 - the shared Chromium fixture
from webui.services.serve_spec import ServerSpec, suggest_port
from webui.services.server_states import ServerState
from webui.settings import Settings

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS", "") or "/tmp")
PROXY_START_MS = 180_000  # the proxy imports lmdeploy (and torch): up to a minute or two on 2 busy cores
TAB = {"en-US": "Fleet", "zh-CN": "集群"}


@pytest.fixture(scope="module")
def fleet_console(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[Console, Path]]:
    """One console for the module; its servers are the stand-in, its proxy is LMDeploy's own."""
    folder = tmp_path_factory.mktemp("fleet-console")
    model = place_model(tiny_model_dir, folder / "models")
    settings = Settings(state_dir=folder / "state", model_roots=(model.parent,))
    with launched_console(settings, argv_factory=fake_argv_factory("--grandchild")) as console:
        yield console, model


def open_fleet(browser, url: str, locale: str):  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page(locale=locale, viewport={"width": 1500, "height": 1400})
    page.goto(url)
    page.get_by_role("tab", name=TAB[locale]).click()
    expect(page.locator("#fleet-command")).to_contain_text("lmdeploy serve proxy", timeout=TIMEOUT_MS)
    return page


def pick(page, elem_id: str, text: str) -> None:
    from playwright.sync_api import expect

    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=text).click()  # a substring of the option's label
    expect(page.locator(f"#{elem_id} input")).to_have_value(re.compile(re.escape(text)), timeout=TIMEOUT_MS)


def ready_server(console: Console, model: Path) -> str:
    services = console.services
    outcome = services.servers.start(ServerSpec(model_path=str(model), backend="pytorch",
                                                port=services.servers.suggest_port()))
    assert outcome.server is not None, outcome.errors
    ready = services.servers.wait_for(outcome.server.id, {ServerState.READY.value}, 60)
    assert ready.state == ServerState.READY.value, ready
    return ready.id


def test_start_the_proxy_add_two_nodes_chat_through_it_remove_one_and_stop(browser, fleet_console) -> None:  # noqa: F811
    from playwright.sync_api import expect

    console, model = fleet_console
    services = console.services
    a, b = ready_server(console, model), ready_server(console, model)
    url_a, url_b = services.servers.get(a).base_url, services.servers.get(b).base_url

    page = open_fleet(browser, console.url, "en-US")
    expect(page.locator("#fleet-form-status")).to_contain_text("Ready to start", timeout=TIMEOUT_MS)
    port = suggest_port(25600 + os.getpid() % 300)
    set_text(page, "fleet-port", str(port))
    set_text(page, "fleet-heartbeat", "30")
    expect(page.locator("#fleet-command")).to_contain_text(
        f"LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION=30 lmdeploy serve proxy --server-name 127.0.0.1 --server-port "
        f"{port} --routing-strategy min_expected_latency", timeout=TIMEOUT_MS)

    # Adding before the proxy runs is refused in words.
    pick(page, "fleet-node-server", a)
    page.locator("#fleet-add-server").click()
    expect(page.locator("#fleet-node-message")).to_contain_text("The proxy is Stopped", timeout=TIMEOUT_MS)

    page.locator("#fleet-start").click()
    expect(page.locator("#fleet-message")).to_contain_text(f"Starting the proxy at http://127.0.0.1:{port}",
                                                           timeout=TIMEOUT_MS)
    proxy_view = page.locator("#fleet-proxy")
    expect(proxy_view).to_contain_text("Ready", timeout=PROXY_START_MS)
    expect(proxy_view).to_contain_text("Chat/Tools/Compare target: server", timeout=TIMEOUT_MS)
    expect(proxy_view).to_contain_text(str(console.services.settings.state_dir / "proxy" / "proxy_config.json"))
    expect(page.locator("#fleet-start")).to_be_disabled(timeout=TIMEOUT_MS)
    form_status = page.locator("#fleet-form-status")
    expect(form_status).to_contain_text(f"The proxy runs at http://127.0.0.1:{port}", timeout=TIMEOUT_MS)
    proxy_id = services.proxy.snapshot().server_id
    assert proxy_id and services.servers.get(proxy_id).state == ServerState.READY.value

    # Two nodes from the dropdown of READY servers (the proxy itself is never offered).
    for server_id, url in ((a, url_a), (b, url_b)):
        pick(page, "fleet-node-server", server_id)
        page.locator("#fleet-add-server").click()
        expect(page.locator("#fleet-node-message")).to_contain_text(f"Added {url} to the proxy", timeout=TIMEOUT_MS)
    page.locator("#fleet-node-server input").click()
    expect(page.get_by_role("option", name=re.compile(proxy_id))).to_have_count(0)
    page.keyboard.press("Escape")
    table = page.locator("#fleet-table")
    expect_rows(page, "fleet-table", 2)
    for server_id, url in ((a, url_a), (b, url_b)):
        row = table.locator("[role=row]", has_text=url)
        expect(row).to_contain_text(server_id, timeout=TIMEOUT_MS)
        expect(row).to_contain_text("✓ 200", timeout=TIMEOUT_MS)
    expect(page.locator("#fleet-notes")).to_contain_text("every 30 s the proxy checks each node's /health",
                                                         timeout=TIMEOUT_MS)
    expect(page.locator("#fleet-notes")).not_to_contain_text("different model names")
    page.get_by_text("Proxy log").click()
    expect(page.locator("#fleet-log textarea")).to_have_value(re.compile("Uvicorn running|Application startup"),
                                                              timeout=TIMEOUT_MS)
    page.screenshot(path=str(SCREENSHOTS / "fleet-tab-en.png"), full_page=True)

    # The same fleet from a script.
    api = Client(console.url + "/", verbose=False)
    try:
        fleet = api.predict(api_name="/fleet_status")
        assert fleet["proxy"]["state"] == "READY" and fleet["proxy"]["server_id"] == proxy_id
        assert [(n["url"], n["server_id"], n["health"]) for n in fleet["nodes"]] == sorted(
            [(url_a, a, 200), (url_b, b, 200)])
        assert fleet["mixed_models"] is False and "Uvicorn running" in api.predict(lines=50, api_name="/proxy_log")
        assert api.predict(target="not a url!", api_key="", api_name="/add_node").startswith("⚠ “`not a url!`”")
    finally:
        api.close()

    # Chat through the proxy: it is one of the Chat tab's servers.
    page.get_by_role("tab", name="Chat").click()
    pick(page, "chat-target", proxy_id)
    message = page.locator("#chat-message textarea")
    message.fill("Hello through the proxy")
    message.press("Enter")
    expect(page.locator("#chat-chatbot .bot-row").last).to_contain_text(re.compile(r"\w{3,}"), timeout=TIMEOUT_MS)
    expect(page.locator("#chat-stats")).to_contain_text(re.compile(r"TTFT \d+ ms"), timeout=TIMEOUT_MS)
    proxy_log = "\n".join(services.proxy.log(400))
    assert "/v1/chat/completions" in proxy_log, proxy_log[-2000:]

    # Back on the Fleet tab: remove one node (it keeps running), then stop the proxy.
    page.get_by_role("tab", name="Fleet").click()
    pick(page, "fleet-node-pick", url_a)
    page.locator("#fleet-remove").click()
    expect(page.locator("#fleet-node-message")).to_contain_text(f"Removed {url_a} from the proxy", timeout=TIMEOUT_MS)
    expect_rows(page, "fleet-table", 1)
    expect(table).to_contain_text(url_b, timeout=TIMEOUT_MS)
    assert services.servers.get(a).state == ServerState.READY.value

    page.locator("#fleet-stop").click()
    expect(page.locator("#fleet-message")).to_contain_text("proxy at", timeout=TIMEOUT_MS)
    expect(proxy_view).to_contain_text("Stopped", timeout=TIMEOUT_MS)
    expect(page.locator("#fleet-start")).to_be_enabled(timeout=TIMEOUT_MS)
    expect(form_status).to_contain_text("Ready to start", timeout=TIMEOUT_MS)  # its port is free again
    assert services.servers.get(proxy_id) is None  # gone from the console's servers with it
    assert services.servers.get(b).state == ServerState.READY.value  # its nodes keep running
    page.close()


def test_chinese_page_names_the_refused_field_and_says_why_ray_cannot_be_read(browser, fleet_console) -> None:  # noqa: F811
    from playwright.sync_api import expect

    console, _ = fleet_console
    services = console.services
    before = services.proxy.snapshot()
    page = open_fleet(browser, console.url, "zh-CN")
    expect(page.locator("#fleet-start")).to_have_text("启动代理", timeout=TIMEOUT_MS)
    set_text(page, "fleet-host", "0.0.0.0")
    status = page.locator("#fleet-form-status")
    expect(status).to_contain_text("监听地址", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("请设置 API 密钥", timeout=TIMEOUT_MS)
    page.locator("#fleet-start").click()
    message = page.locator("#fleet-message")
    expect(message).to_contain_text("监听地址", timeout=TIMEOUT_MS)
    expect(message).to_contain_text("监听 0.0.0.0 会把模型暴露到网络上", timeout=TIMEOUT_MS)
    after = services.proxy.snapshot()
    assert (after.exists, after.state, after.pid) == (before.exists, before.state, before.pid)  # nothing started

    # Beyond one box: the Ray recipe and a cluster where nothing listens, in Chinese.
    page.get_by_text("跨机器部署").click()
    set_text(page, "fleet-ray-head", "10.0.0.1")
    set_text(page, "fleet-ray-model", "/data/models/internlm2_5-7b-chat")
    recipe = page.locator("#fleet-ray-recipe")
    expect(recipe).to_contain_text("ray start --head --port 6379", timeout=TIMEOUT_MS)
    expect(recipe).to_contain_text("ray start --address 10.0.0.1:6379", timeout=TIMEOUT_MS)
    expect(recipe).to_contain_text("--tp 16 --distributed-executor-backend ray", timeout=TIMEOUT_MS)
    set_text(page, "fleet-ray-gpus", "3")
    expect(page.locator("#fleet-ray-notes")).to_contain_text("每节点 GPU 数", timeout=TIMEOUT_MS)
    set_text(page, "fleet-ray-gpus", "8")
    free = suggest_port(26600 + os.getpid() % 300)
    set_text(page, "fleet-ray-address", f"127.0.0.1:{free}")
    page.locator("#fleet-ray-check").click()
    ray_status = page.locator("#fleet-ray-status")
    expect(ray_status).to_contain_text(re.compile(f"127.0.0.1:{free}"), timeout=TIMEOUT_MS)
    expect(ray_status).to_contain_text(re.compile(r"[\u4e00-\u9fff]{4}"), timeout=TIMEOUT_MS)
    page.screenshot(path=str(SCREENSHOTS / "fleet-tab-zh.png"), full_page=True)
    page.close()
