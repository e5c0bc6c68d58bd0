"""Bad input and failed spawns as a user meets them in the page: named fields, nothing started, a clear Failed.

The API path of the same checks is covered in test_api_surface.py and test_lifecycle.py; these few cases prove
the page shows them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import launched_console, place_model
from tests.test_browser import TIMEOUT_MS, browser  # noqa: F401 - the shared Chromium fixture
from webui.settings import Settings

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def broken_python_console(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple]:
    """The real app whose `--lmdeploy-python` does not exist, so every api_server spawn fails."""
    folder = tmp_path_factory.mktemp("bad-input")
    model = place_model(tiny_model_dir, folder / "models", "tiny llama")
    (folder / "models" / "a-file").write_text("not a folder")
    settings = Settings(state_dir=folder / "state", model_roots=(model.parent,), lmdeploy_python="/no/such/python")
    with launched_console(settings) as console:
        yield console, model


def test_a_server_that_cannot_be_spawned_shows_failed_with_the_reason(browser, broken_python_console) -> None:  # noqa: F811
    from playwright.sync_api import expect

    console, _ = broken_python_console
    page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1200})
    page.goto(console.url)
    page.get_by_role("tab", name="Serve").click()
    expect(page.locator("#serve-form-status")).to_contain_text("Ready to start", timeout=TIMEOUT_MS)
    page.locator("#serve-start").click()
    expect(page.locator("#serve-message")).to_contain_text("could not be started", timeout=TIMEOUT_MS)
    detail = page.locator("#serve-detail")
    expect(detail).to_contain_text("Failed", timeout=TIMEOUT_MS)
    expect(detail).to_contain_text("could not start the process at all", timeout=TIMEOUT_MS)
    expect(detail).to_contain_text("/no/such/python", timeout=TIMEOUT_MS)
    expect(page.locator("#serve-log textarea")).to_have_value(
        re.compile("could not start /no/such/python"), timeout=TIMEOUT_MS)
    # The failed row is removable, and its port is free for the next server.
    page.get_by_role("button", name="Remove").click()
    expect(page.locator("#serve-message")).to_contain_text("Removed", timeout=TIMEOUT_MS)
    assert console.services.servers.snapshots() == []
    page.close()


def test_bad_values_are_named_in_the_page_and_nothing_starts(browser, broken_python_console) -> None:  # noqa: F811
    from playwright.sync_api import expect

    console, model = broken_python_console
    page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1200})
    page.goto(console.url)
    page.get_by_role("tab", name="Serve").click()
    status = page.locator("#serve-form-status")
    expect(status).to_contain_text("Ready to start", timeout=TIMEOUT_MS)
    page.get_by_text("More options").click()
    extra = page.locator("#serve-extra-args textarea, #serve-extra-args input").first
    expect(extra).to_be_visible(timeout=TIMEOUT_MS)  # the accordion has opened
    for attempt in range(3):  # a change typed while the page still loads can be lost on a busy 2-core machine
        extra.fill("--ssl " * 1000 + " " * attempt)
        extra.press("Tab")
        try:
            expect(status).to_contain_text("Extra arguments", timeout=20_000)
            break
        except AssertionError:
            if attempt == 2:
                raise
    expect(status).to_contain_text("at most 4,096", timeout=TIMEOUT_MS)
    before = len(console.services.servers.snapshots())
    page.locator("#serve-start").click()
    expect(page.locator("#serve-message")).to_contain_text("at most 4,096", timeout=TIMEOUT_MS)
    assert len(console.services.servers.snapshots()) == before  # nothing stored, nothing spawned

    page.get_by_role("tab", name="Quantize").click()
    output = page.locator("#quantize-output textarea, #quantize-output input").first
    output.fill(str(model.parent / "a-file" / "out"))
    output.press("Tab")
    preflight = page.locator("#quantize-preflight")
    expect(preflight).to_contain_text("Output folder", timeout=TIMEOUT_MS)
    expect(preflight).to_contain_text("is a file", timeout=TIMEOUT_MS)
    assert console.services.jobs.snapshots() == []
    page.close()
