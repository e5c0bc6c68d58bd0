"""The Memory tab in headless Chromium: live chart and tables from the one sampler (stand-in NVML: this
machine has no GPU), the planner answering, and the honest no-GPU message without the stand-in."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import StandInNvml, launched_console
from tests.test_browser import TIMEOUT_MS, browser  # noqa: F401 - the shared Chromium fixture
from webui.settings import Settings

pytestmark = pytest.mark.browser
SCREENSHOTS = os.environ.get("CONSOLE_SCREENSHOTS", "")


def memory_settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", gpu_sample_hz=4)


# Each test launches its own console: the sampler reads NVML (the stand-in, or none) from the start.
@pytest.fixture
def console_with_gpu(tmp_path: Path, stand_in_nvml: StandInNvml) -> Iterator[tuple[str, StandInNvml]]:
    with launched_console(memory_settings(tmp_path)) as console:
        yield console.url, stand_in_nvml


def test_live_memory_updates_and_the_planner_answers(browser, console_with_gpu) -> None:  # noqa: F811
    from playwright.sync_api import expect

    url, nvml = console_with_gpu
    nvml.procs[0] = [SimpleNamespace(pid=os.getpid(), usedGpuMemory=2 << 30)]
    page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1600})
    page.goto(url)
    page.get_by_role("tab", name="Memory").click()
    devices = page.locator("#memory-devices")
    expect(devices).to_contain_text("5,120 / 81,920 MiB", timeout=TIMEOUT_MS)
    expect(page.locator("#memory-processes")).to_contain_text("2,048 MiB")
    expect(page.locator("#memory-chart .js-plotly-plot")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#memory-chart")).to_contain_text("GPU 0 used")
    nvml.used[0] = 7 << 30  # the chart and the table follow NVML while the tab is open
    expect(devices).to_contain_text("7,168 / 81,920 MiB", timeout=TIMEOUT_MS)

    prediction = page.locator("#memory-prediction")
    expect(prediction).to_contain_text("Tokens that fit", timeout=TIMEOUT_MS)
    tokens_fp16 = int(re.search(r"Tokens that fit\s*([\d,]+)", prediction.inner_text()).group(1).replace(",", ""))
    page.locator("#memory-planner-kv input").click()
    page.get_by_role("option", name="int4", exact=True).click()
    expect(prediction).not_to_contain_text(f"{tokens_fp16:,}", timeout=TIMEOUT_MS)
    tokens_int4 = int(re.search(r"Tokens that fit\s*([\d,]+)", prediction.inner_text()).group(1).replace(",", ""))
    assert 3.5 < tokens_int4 / tokens_fp16 < 4.0
    expect(page.locator("#memory-sweep .js-plotly-plot")).to_be_visible()
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "memory-tab.png"), full_page=True)
    page.close()


def test_without_a_gpu_the_tab_says_why(browser, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect

    with launched_console(memory_settings(tmp_path)) as console:
        page = browser.new_page(locale="zh-CN")
        page.goto(console.url)
        page.get_by_role("tab", name="显存").click()
        expect(page.locator("#memory-status")).to_contain_text("没有可显示的 GPU", timeout=TIMEOUT_MS)
        expect(page.locator("#memory-status")).to_contain_text("NVML")
        expect(page.locator("#memory-prediction")).to_contain_text("可容纳的 token 数", timeout=TIMEOUT_MS)
        page.close()
