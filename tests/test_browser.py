"""The launched console in headless Chromium (Debian's), driven by Playwright, against the real lmdeploy CLI."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import launched_console, place_model
from webui.settings import Settings

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000  # generous: CI machines have 2 cores shared with the servers and jobs under test


def set_text(page, elem_id: str, value: str) -> None:
    """Type into a form field by its elem_id and leave it (Tab), so its change event fires."""
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")


def expect_rows(page, elem_id: str, count: int) -> None:
    """A Dataframe's data rows, counted the way it tells assistive technology (the header is row 1)."""
    from playwright.sync_api import expect

    expect(page.locator(f"#{elem_id} [role=grid]")).to_have_attribute("aria-rowcount", str(count + 1),
                                                                      timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium (see .ci/run)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def console_url(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, Path]]:
    """The real app with real services (lmdeploy's CLI, which fails here for want of a GPU), launched once for
    the module (each test opens its own page and finds what it started by what the page says)."""
    folder = tmp_path_factory.mktemp("browser-console")
    model = place_model(tiny_model_dir, folder / "models", "tiny llama")
    with launched_console(Settings(state_dir=folder / "state", model_roots=(model.parent,))) as console:
        yield console.url, model


def test_fill_the_form_preview_start_and_see_the_state_change(browser, console_url) -> None:
    from playwright.sync_api import expect

    url, model = console_url
    page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1200})
    page.goto(url)
    page.get_by_role("tab", name="Serve").click()
    command = page.locator("#serve-command")
    status = page.locator("#serve-form-status")

    # The discovered model is preselected and the preview shows the real command.
    expect(command).to_contain_text("lmdeploy serve api_server", timeout=TIMEOUT_MS)
    expect(command).to_contain_text(str(model), timeout=TIMEOUT_MS)
    expect(status).to_contain_text("Ready to start", timeout=TIMEOUT_MS)

    page.get_by_test_id("pytorch-radio-label").click()
    expect(command).to_contain_text("--backend pytorch", timeout=TIMEOUT_MS)
    fraction = page.locator("#serve-cache-fraction input[type=number]")
    fraction.fill("0.4")
    fraction.press("Enter")
    expect(command).to_contain_text("--cache-max-entry-count 0.4", timeout=TIMEOUT_MS)

    # A bad value is named, with its fix, before anything starts.
    port = page.locator("#serve-port input")
    good_port = port.input_value()
    port.fill("80")
    port.press("Tab")
    expect(status).to_contain_text("Port", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("1024 to 65535", timeout=TIMEOUT_MS)
    port.fill(good_port)
    port.press("Tab")
    expect(status).to_contain_text("Ready to start", timeout=TIMEOUT_MS)

    page.locator("#serve-start").click()
    expect(page.locator("#serve-message")).to_contain_text("Started server", timeout=TIMEOUT_MS)
    detail = page.locator("#serve-detail")
    # Without a GPU the real api_server exits: the console shows FAILED with the plain no-GPU hint.
    expect(detail).to_contain_text("Failed", timeout=120_000)
    expect(detail).to_contain_text("needs an NVIDIA GPU", timeout=TIMEOUT_MS)
    expect(detail).to_contain_text("Found no NVIDIA driver", timeout=TIMEOUT_MS)
    expect(page.locator("#serve-servers")).to_contain_text("Failed", timeout=TIMEOUT_MS)
    expect(page.locator("#serve-log textarea")).to_have_value(re.compile("RuntimeError"), timeout=TIMEOUT_MS)

    # A reload shows the same truth, read back from the services.
    page.reload()
    page.get_by_role("tab", name="Serve").click()
    expect(page.locator("#serve-detail")).to_contain_text("Failed", timeout=TIMEOUT_MS)
    page.close()


def test_chinese_browser_gets_chinese_labels_and_messages(browser, console_url) -> None:
    from playwright.sync_api import expect

    url, _ = console_url
    page = browser.new_page(locale="zh-CN", viewport={"width": 1400, "height": 1200})
    page.goto(url)
    page.get_by_role("tab", name="部署服务").click()
    expect(page.locator("#serve-start")).to_have_text("启动服务", timeout=TIMEOUT_MS)
    expect(page.locator("#serve-form-status")).to_contain_text("可以启动", timeout=TIMEOUT_MS)
    extra = page.locator("#serve-extra-args textarea, #serve-extra-args input").first
    page.get_by_text("更多选项").click()
    extra.fill("--tp 2")
    extra.press("Tab")
    expect(page.locator("#serve-form-status")).to_contain_text("额外参数", timeout=TIMEOUT_MS)
    expect(page.locator("#serve-form-status")).to_contain_text("由上面的表单设置", timeout=TIMEOUT_MS)
    page.screenshot(path=str(Path(os.environ.get("SCREENSHOT_DIR", "/tmp")) / "serve-zh.png"), full_page=True)
    page.close()


@pytest.mark.engine
def test_quantize_a_tiny_model_then_serve_it(browser, console_url) -> None:
    from playwright.sync_api import expect

    url, model = console_url
    page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1400})
    page.goto(url)
    page.get_by_role("tab", name="Quantize").click()  # the page opens on Models
    preflight = page.locator("#quantize-preflight")
    expect(page.locator("#quantize-model-path input")).to_have_value(str(model), timeout=TIMEOUT_MS)
    page.get_by_test_id("cpu-radio-label").click()

    # Own calibration text, uploaded from the browser, is kept under the state folder and counted.
    page.locator("#quantize-calib-source").get_by_text("My text files").click()
    notes = model.parent / "my notes.txt"
    notes.write_text("LMDeploy quantizes large language models with AWQ. " * 400)
    page.locator("#quantize-uploads input[type=file]").set_input_files(str(notes))
    paths = page.locator("#quantize-calib-paths textarea")
    expect(paths).to_have_value(re.compile(r"/uploads/[0-9a-f]{8}-my-notes\.txt"), timeout=TIMEOUT_MS)
    # 400 sentences are too few for 64 samples of 1024 tokens: the form says how many fit.
    expect(preflight).to_contain_text("it fits 7 samples of 1024", timeout=TIMEOUT_MS)
    samples = page.locator("#quantize-samples input")
    samples.fill("4")
    samples.press("Tab")
    expect(preflight).to_contain_text("Calibration text (tokens)", timeout=TIMEOUT_MS)
    expect(page.locator("#quantize-command")).to_contain_text("no `lmdeploy lite auto_awq` equivalent",
                                                              timeout=TIMEOUT_MS)

    page.locator("#quantize-calib-source").get_by_text("Data-free").click()
    expect(preflight).to_contain_text("Ready to quantize", timeout=TIMEOUT_MS)
    expect(preflight).to_contain_text("tiny-llama-awq-w4-g128", timeout=TIMEOUT_MS)
    expect(page.locator("#quantize-command")).to_contain_text("--calib-samples 0", timeout=TIMEOUT_MS)

    # A bad output folder is refused before anything runs, naming the field and the fix.
    output = page.locator("#quantize-output input, #quantize-output textarea").first
    output.fill(str(model / "awq"))
    output.press("Tab")
    expect(preflight).to_contain_text("Output folder", timeout=TIMEOUT_MS)
    expect(preflight).to_contain_text("inside the model folder", timeout=TIMEOUT_MS)
    output.fill("")
    output.press("Tab")
    expect(preflight).to_contain_text("Ready to quantize", timeout=TIMEOUT_MS)

    page.locator("#quantize-submit").click()
    expect(page.locator("#quantize-message")).to_contain_text("started", timeout=TIMEOUT_MS)
    detail = page.locator("#quantize-detail")
    expect(detail).to_contain_text("Done", timeout=180_000)
    expect(detail).to_contain_text("quantization_config", timeout=TIMEOUT_MS)
    expect(detail).to_contain_text("MB →", timeout=TIMEOUT_MS)
    expect(page.locator("#quantize-jobs")).to_contain_text("100%", timeout=TIMEOUT_MS)
    # The next job would not overwrite this one.
    expect(preflight).to_contain_text("tiny-llama-awq-w4-g128-2", timeout=TIMEOUT_MS)

    page.locator("#quantize-serve-this").click()
    command = page.locator("#serve-command")
    expect(command).to_be_visible(timeout=TIMEOUT_MS)
    expect(command).to_contain_text("tiny-llama-awq-w4-g128", timeout=TIMEOUT_MS)
    expect(command).to_contain_text("--model-format awq", timeout=TIMEOUT_MS)
    page.close()
