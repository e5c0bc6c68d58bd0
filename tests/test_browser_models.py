"""The Models tab in headless Chromium, in en and zh: list a repo's files on the local hub endpoint, download it
with live progress, quantize the download (CPU AWQ) and build its Serve command, from the Models panel on."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fake_argv_factory, launched_console, place_model
from tests.hub_endpoint import HubEndpoint
from tests.test_browser import TIMEOUT_MS, browser  # noqa: F401 - the shared Chromium fixture
from tests.test_browser_zh import english_pieces, leaks
from webui.i18n.catalog import Catalog
from webui.settings import Settings

pytestmark = pytest.mark.browser

SCREENSHOTS = os.environ.get("CONSOLE_SCREENSHOTS", "")
MIB = 1 << 20
WORDS = {
    "en-US": {"quantize": "Quantize", "files": "files", "done": "Done", "started": "Downloading",
              "verified": "✓", "awq_ready": "Ready to quantize", "awq_started": "started", "cpu": "cpu"},
    "zh-CN": {"quantize": "模型量化", "files": "个文件", "done": "已完成", "started": "正在下载",
              "verified": "✓", "awq_ready": "可以开始量化", "awq_started": "已开始", "cpu": "cpu"},
}


@pytest.fixture(scope="module")
def hub_console(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, HubEndpoint,
                                                                                                   Settings]]:
    folder = tmp_path_factory.mktemp("models-console")
    source = place_model(tiny_model_dir, folder / "hub-files", "tiny")
    settings = Settings(state_dir=folder / "state", hub_endpoint="", hf_cache_dir=folder / "hf-cache")
    with HubEndpoint(throttle_bps=6 * MIB) as hub:  # a few seconds a download: progress has time to show
        hub.add_repo("internlm/tiny-chat-en", source)
        hub.add_repo("internlm/tiny-chat-zh", source)
        settings = Settings(state_dir=settings.state_dir, hub_endpoint=hub.url, hf_cache_dir=settings.hf_cache_dir)
        with launched_console(settings, argv_factory=fake_argv_factory()) as console:
            yield console.url, hub, settings


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_from_the_models_panel_to_serve_this(browser, hub_console, locale: str) -> None:  # noqa: F811
    from playwright.sync_api import expect

    url, hub, settings = hub_console
    words = WORDS[locale]
    repo = f"internlm/tiny-chat-{locale[:2]}"
    folder = settings.models_dir / "internlm" / f"tiny-chat-{locale[:2]}"
    page = browser.new_page(locale=locale, viewport={"width": 1400, "height": 1400})
    page.goto(url)

    if locale == "en-US":
        # The page opens on Models: a repo id, its files before anything is fetched.
        box = page.locator("#models-repo input")
        box.fill(repo)
        box.press("Tab")
        page.locator("#models-list").click()
    else:
        # Typed in the Serve form first: it is not on disk, so Serve offers to open it in Models (no fetch).
        page.get_by_role("tab", name="部署服务").click()
        picker = page.locator("#serve-model-path input")
        picker.fill(repo)
        picker.press("Tab")
        expect(page.locator("#serve-form-status")).to_contain_text("尚未下载", timeout=TIMEOUT_MS)
        page.locator("#serve-get-model").click()
        expect(page.locator("#models-repo input")).to_have_value(repo, timeout=TIMEOUT_MS)
    preview = page.locator("#models-preview")
    expect(preview).to_contain_text(words["files"], timeout=TIMEOUT_MS)
    expect(preview).to_contain_text(hub.sha(repo)[:12], timeout=TIMEOUT_MS)
    expect(page.locator("#models-files")).to_contain_text("model.safetensors", timeout=TIMEOUT_MS)
    assert not [r for r in hub.requests if r.repo_id == repo and r.file not in (None, "", "config.json")]  # config only

    # Download: the total and per-file bars move while it runs, then it is done and verified.
    page.locator("#models-download").click()
    started = page.locator("#models-message")
    expect(started).to_contain_text(words["started"], timeout=TIMEOUT_MS)
    download_id = re.search(r"`?([0-9a-f]{8})`?", started.inner_text().split(repo, 1)[1])
    assert download_id is not None
    detail = page.locator("#models-detail")
    expect(detail).to_contain_text(download_id.group(1), timeout=TIMEOUT_MS)  # this download, not an earlier one
    expect(detail.locator("progress").first).to_be_visible(timeout=TIMEOUT_MS)
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = detail.inner_text()
        seen.update(re.findall(r"(\d+)%", text))
        if words["done"] in text:
            break
        time.sleep(0.3)
    assert words["done"] in detail.inner_text()
    assert len(seen - {"0", "100"}) >= 2, seen  # progress was shown between start and end, more than once
    expect(page.locator("#models-downloads")).to_contain_text("100%", timeout=TIMEOUT_MS)
    assert (folder / "config.json").is_file()
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"models-{locale[:2]}.png"), full_page=True)
    if locale == "zh-CN":  # the Models tab with a listing and a finished download shows no English of ours
        assert leaks(page, english_pieces(Catalog.load())) == []

    # Quantize this: the download in the Quantize picker; a CPU AWQ job of it runs to the end.
    page.locator("#models-quantize-this").click()
    expect(page.locator("#quantize-model-path input")).to_have_value(str(folder), timeout=TIMEOUT_MS)
    page.get_by_test_id("cpu-radio-label").click()
    page.locator("#quantize-calib-source").get_by_role("radio").last.click()  # data-free: the quickest
    expect(page.locator("#quantize-preflight")).to_contain_text(words["awq_ready"], timeout=TIMEOUT_MS)
    page.locator("#quantize-submit").click()
    message = page.locator("#quantize-message")
    expect(message).to_contain_text(words["awq_started"], timeout=TIMEOUT_MS)
    job_id = re.search(r"[0-9a-f]{8}", message.inner_text())
    assert job_id is not None
    quantize_detail = page.locator("#quantize-detail")
    expect(quantize_detail).to_contain_text(job_id.group(0), timeout=TIMEOUT_MS)  # this job, not an earlier one
    expect(quantize_detail).to_contain_text("quantization_config", timeout=180_000)  # its result card
    page.locator("#quantize-serve-this").click()
    command = page.locator("#serve-command")
    expect(command).to_contain_text(f"tiny-chat-{locale[:2]}-awq", timeout=TIMEOUT_MS)
    expect(command).to_contain_text("--model-format awq", timeout=TIMEOUT_MS)

    # Serve this from the Models tab: the downloaded folder as it is.
    page.get_by_role("tab", name="Models" if locale == "en-US" else "模型", exact=True).click()
    page.locator("#models-serve-this").click()
    expect(command).to_contain_text(str(folder), timeout=TIMEOUT_MS)
    expect(command).not_to_contain_text("--model-format awq", timeout=TIMEOUT_MS)
    page.close()
