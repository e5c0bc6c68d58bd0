"""Shared demos in headless Chromium, en and zh: publish from the Demos tab, open the link in a second browser
context as a guest, chat, revoke, and the guest's page says the demo has ended."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODEL_NAME, fake_argv_factory, free_port, launched_console
from tests.test_browser import TIMEOUT_MS, browser  # noqa: F401 - the shared Chromium fixture
from webui.services.serve_spec import ServerSpec
from webui.settings import Settings

pytestmark = pytest.mark.browser

SCREENSHOTS = os.environ.get("CONSOLE_SCREENSHOTS", "")

WORDS = {
    "en-US": {"tab": "Demos", "published": "is published", "revoked": "is revoked",
              "ended": "This demo has ended"},
    "zh-CN": {"tab": "演示分享", "published": "已发布", "revoked": "已撤销", "ended": "此演示已结束"},
}




@pytest.fixture(scope="module")
def demo_console(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, object]]:
    from tests.conftest import place_model
    from webui.guest_app import build_guest_app

    folder = tmp_path_factory.mktemp("demo-console")
    model = place_model(tiny_model_dir, folder / "models")
    port = free_port()
    settings = Settings(state_dir=folder / "state", model_roots=(model.parent,), demo_port=port)
    with launched_console(settings, argv_factory=fake_argv_factory()) as console:
        services = console.services
        started = services.servers.start(ServerSpec(model_path=str(folder / "models" / MODEL_NAME),
                                                    port=services.servers.suggest_port(), model_name="tiny"))
        assert started.server is not None, started.errors
        assert services.servers.wait_for(started.server.id, {"READY", "FAILED"}, 60).state == "READY"
        guest, kwargs = build_guest_app(services.demos.gate())
        guest.queue(default_concurrency_limit=None)
        guest.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                     allowed_paths=[], **kwargs)
        try:
            yield console.url, services
        finally:
            guest.close()


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_publish_chat_as_a_guest_then_revoke(browser, demo_console, locale: str) -> None:  # noqa: F811
    from playwright.sync_api import expect

    url, _services = demo_console
    words = WORDS[locale]
    owner = browser.new_page(locale=locale, viewport={"width": 1400, "height": 1300})
    owner.goto(url)
    if locale == "en-US":  # from the Chat tab: "Share this chat" fills the Demos form with its server
        owner.get_by_role("tab", name="Chat").click()
        owner.locator("#chat-share").click()
        expect(owner.locator("#demos-message")).to_contain_text("The form is filled", timeout=TIMEOUT_MS)
    else:
        owner.get_by_role("tab", name=words["tab"]).click()
    owner.locator("#demos-title input, #demos-title textarea").first.fill(f"Tiny demo {locale}")
    expect(owner.locator("#demos-server input")).not_to_have_value("", timeout=TIMEOUT_MS)  # the READY server
    owner.locator("#demos-publish").click()
    expect(owner.locator("#demos-message")).to_contain_text(words["published"], timeout=TIMEOUT_MS)
    link_box = owner.locator("#demos-link input, #demos-link textarea").first
    expect(link_box).to_have_value(re.compile(r"\?demo=[\w-]{20,}"), timeout=TIMEOUT_MS)
    link = link_box.input_value()
    expect(owner.locator("#demos-qr img")).to_be_visible(timeout=TIMEOUT_MS)
    if SCREENSHOTS:
        owner.screenshot(path=str(Path(SCREENSHOTS) / f"demos-{locale[:2]}.png"), full_page=True)

    # A guest, in a browser context of their own, opens the link and chats.
    context = browser.new_context(locale=locale)
    guest = context.new_page()
    guest.goto(link)
    expect(guest.locator("#guest-header")).to_contain_text(f"Tiny demo {locale}", timeout=TIMEOUT_MS)
    guest.locator("#guest-box textarea, #guest-box input").first.fill("Hello!")
    guest.locator("#guest-send").click()
    expect(guest.locator("#guest-chat")).to_contain_text("Hello!", timeout=TIMEOUT_MS)
    expect(guest.locator("#guest-chat .message").nth(1)).not_to_be_empty(timeout=TIMEOUT_MS)
    if SCREENSHOTS:
        guest.screenshot(path=str(Path(SCREENSHOTS) / f"guest-{locale[:2]}.png"), full_page=True)

    # The owner sees the request and revokes the demo; the guest's page then says it has ended.
    expect(owner.locator("#demos-table")).to_contain_text(f"Tiny demo {locale}", timeout=TIMEOUT_MS)
    owner.locator("#demos-table").get_by_text(f"Tiny demo {locale}").last.click()
    owner.locator("#demos-revoke").click()
    expect(owner.locator("#demos-revoke-message")).to_contain_text(words["revoked"], timeout=TIMEOUT_MS)
    guest.reload()
    expect(guest.locator("#guest-ended")).to_contain_text(words["ended"], timeout=TIMEOUT_MS)
    context.close()
    owner.close()
