"""The Chat and Tools tabs in headless Chromium against a real model (llama.cpp's server, SmolLM2-135M)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ChatServer, launched_console
from tests.test_browser import TIMEOUT_MS, browser  # noqa: F401 - the shared Chromium fixture
from webui.services.serve_spec import suggest_port
from webui.settings import Settings

pytestmark = pytest.mark.browser
SCREENSHOTS = os.environ.get("CONSOLE_SCREENSHOTS", "")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One console for the module's tests that talk to the llama.cpp server by URL (they start nothing)."""
    with launched_console(Settings(state_dir=tmp_path_factory.mktemp("chat-console") / "state")) as launched:
        yield launched.url


def pick_other_url(page, prefix: str, chat_server: ChatServer) -> None:
    from playwright.sync_api import expect

    page.locator(f"#{prefix}-base-url textarea, #{prefix}-base-url input").first.fill(chat_server.base_url)
    page.locator(f"#{prefix}-base-url").locator("xpath=..").locator("input[type=password]").fill(chat_server.api_key)
    expect(page.locator(f"#{prefix}-target input")).to_have_value(re.compile("Other URL"), timeout=TIMEOUT_MS)


def test_a_chat_reply_streams_in_with_its_numbers_and_errors_are_shown(browser, console, chat_server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1100})
    page.goto(console)
    page.get_by_role("tab", name="Chat").click()
    pick_other_url(page, "chat", chat_server)
    message = page.locator("#chat-message textarea")
    message.fill("Write a short poem about GPUs.")
    message.press("Enter")
    expect(page.locator("#chat-chatbot .bot-row").last).to_contain_text(re.compile(r"\w{3,}"), timeout=TIMEOUT_MS)
    expect(page.locator("#chat-chatbot .user-row").last).to_contain_text("Write a short poem about GPUs.")
    expect(page.locator("#chat-stats")).to_contain_text(re.compile(r"TTFT \d+ ms · [\d.]+ tok/s"),
                                                        timeout=TIMEOUT_MS)
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "chat-tab.png"))

    # A wrong key is explained, not raised; the user's turn is not lost from the box history.
    page.locator("#chat-base-url").locator("xpath=..").locator("input[type=password]").fill("sk-wrong")
    message.fill("Hello?")
    message.press("Enter")
    expect(page.locator("#chat-notice")).to_contain_text("refused the API key", timeout=TIMEOUT_MS)
    page.close()


def test_the_add_mul_flow_in_the_tools_tab(browser, console, chat_server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1300})
    page.goto(console)
    page.get_by_role("tab", name="Tools").click()
    pick_other_url(page, "tools", chat_server)
    # The tutorial's mistake is caught with the fix, by JSON path.
    editor = page.locator("#tools-json .cm-content")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text('[{"type": "function", "function": {"name": "add", "parameters": {"type": "object", '
                              '"properties": {"a": {"type": "int"}}}}}]')
    expect(page.locator("#tools-status")).to_contain_text("write “integer”", timeout=TIMEOUT_MS)
    expect(page.locator("#tools-status")).to_contain_text("$[0].function.parameters.properties.a.type")
    page.locator("#tools-preset input").click()
    page.get_by_role("option", name="calculator (safe arithmetic)").click()
    page.locator("#tools-preset input").click()
    page.get_by_role("option", name="add and mul (the tutorial)").click()
    expect(page.locator("#tools-status")).to_contain_text("mul: runs the safe built-in", timeout=TIMEOUT_MS)

    choice = page.locator("#tools-choice input")
    choice.fill("add, mul, none")
    choice.press("Enter")
    page.locator("#tools-prompt textarea").fill("What is 3 plus 5? Then multiply by 2.")
    page.locator("#tools-run").click()
    expect(page.locator("#tools-outcome")).to_contain_text("Answered after 3 model calls", timeout=TIMEOUT_MS)
    transcript = page.locator("#tools-transcript")
    expect(transcript).to_contain_text(re.compile(r"🛠 add\(a=\d+, b=\d+\) → \d+"))
    expect(transcript).to_contain_text(re.compile(r"🛠 mul\(a=\d+, b=\d+\) → \d+"))
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "tools-tab.png"))
    page.close()


def test_stop_keeps_the_partial_reply_and_a_manual_tool_takes_the_users_result(browser, console,  # noqa: F811
                                                                                chat_server) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1200})
    page.goto(console)
    page.get_by_role("tab", name="Chat").click()
    pick_other_url(page, "chat", chat_server)
    tokens = page.get_by_label("Max new tokens")
    tokens.fill("3000")
    tokens.press("Tab")
    message = page.locator("#chat-message textarea")
    message.fill("Write a very long essay about the history of computing, at least 3000 words.")
    message.press("Enter")
    expect(page.locator("#chat-chatbot .bot-row").last).to_contain_text(re.compile(r"\w+ \w+ \w+"),
                                                                          timeout=TIMEOUT_MS)
    page.locator("#chat-stop").click()
    expect(page.locator("#chat-stats")).to_contain_text("stopped", timeout=TIMEOUT_MS)

    page.get_by_role("tab", name="Tools").click()
    pick_other_url(page, "tools", chat_server)
    page.locator("#tools-preset input").click()
    page.get_by_role("option", name="weather (manual tool)").click()
    expect(page.locator("#tools-status")).to_contain_text("get_current_weather", timeout=TIMEOUT_MS)
    choice = page.locator("#tools-choice input")
    choice.fill("get_current_weather, none")
    choice.press("Enter")
    page.locator("#tools-run").click()
    expect(page.locator("#tools-outcome")).to_contain_text("called the manual tool get_current_weather",
                                                           timeout=TIMEOUT_MS)
    page.locator("#tools-manual-result textarea").fill('{"temperature": 21, "sky": "clear"}')
    page.get_by_role("button", name="Send result and go on").click()
    expect(page.locator("#tools-outcome")).to_contain_text("Answered after 2 model calls", timeout=TIMEOUT_MS)
    expect(page.locator("#tools-transcript")).to_contain_text("get_current_weather")
    page.close()


def test_tools_on_a_server_without_a_parser_offer_the_restart(browser, tmp_path: Path, model_root: Path) -> None:  # noqa: F811
    """The active server answers tools with LMDeploy's recorded 400; the tab offers a parser and restarts it."""
    from playwright.sync_api import expect

    from tests.conftest import fake_argv_factory
    from webui.services.serve_spec import ServerSpec

    settings = Settings(state_dir=tmp_path / "state", model_roots=(model_root,))
    with launched_console(settings, argv_factory=fake_argv_factory()) as console:
        services = console.services
        server = services.servers.start(ServerSpec(model_path=str(model_root / "tiny llama; echo pwned"),
                                                   port=suggest_port(31800))).server
        assert services.servers.wait_for(server.id, {"READY", "FAILED"}, 30).state == "READY"
        page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1300})
        page.goto(console.url)
        page.get_by_role("tab", name="Tools").click()
        expect(page.locator("#tools-target input")).to_have_value(re.compile(rf"★ {server.id}"), timeout=TIMEOUT_MS)
        page.locator("#tools-run").click()
        expect(page.locator("#tools-outcome")).to_contain_text("without a tool-call parser", timeout=TIMEOUT_MS)
        restart = page.locator("#tools-restart")
        expect(restart).to_be_visible()
        restart.click()
        expect(page.locator("#tools-outcome")).to_contain_text(f"Restarting {server.id} with --tool-call-parser",
                                                               timeout=TIMEOUT_MS)
        ready = services.servers.wait_for(server.id, {"READY", "FAILED"}, 30)
        assert ready.state == "READY" and ready.tool_call_parser and "--tool-call-parser" in ready.command
        page.close()
