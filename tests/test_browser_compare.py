"""The Compare tab in headless Chromium: build a list, run it against stand-in servers (one configuration fails
out of memory at start), read the table, verdict and charts, export CSV, reuse a READY llama.cpp server, refuse
bad input before anything starts, and cancel a run from the page, in English and Chinese."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Console, fake_argv_factory, launched_console, place_model
from tests.test_browser import TIMEOUT_MS, browser, expect_rows, set_text  # noqa: F401 - the shared Chromium fixture
from webui.i18n.catalog import Catalog
from webui.settings import Settings

pytestmark = pytest.mark.browser

SCREENSHOTS = os.environ.get("CONSOLE_SCREENSHOTS", "")
RUN_TIMEOUT_MS = 180_000  # a whole comparison on 2 busy cores: servers start, warm up, measure and stop
TAB = {"en-US": "Compare", "zh-CN": "对比"}
ENGLISH_WORDS = re.compile(r"\b(failed|done|streams|waiting|measuring|cancelled|available|tokens/s at)\b", re.I)


@pytest.fixture(scope="module")
def compare_console(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[Console, Path]]:
    """One console for the module; its servers are the stand-in, which fails like CUDA out of memory above 0.85."""
    folder = tmp_path_factory.mktemp("compare-console")
    model = place_model(tiny_model_dir, folder / "models")
    settings = Settings(state_dir=folder / "state", model_roots=(model.parent,))
    with launched_console(settings, argv_factory=fake_argv_factory("--oom-above", "0.85")) as console:
        yield console, model


def open_compare(browser, url: str, locale: str):  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page(locale=locale, viewport={"width": 1500, "height": 1300})
    page.goto(url)
    page.get_by_role("tab", name=TAB[locale]).click()
    expect(page.locator("#compare-configs .cm-content")).to_be_visible(timeout=TIMEOUT_MS)
    return page


def set_configs(page, entries: list[dict] | str) -> None:
    """Replace the code editor's text the way a user does: click in, select all, type over it."""
    text = entries if isinstance(entries, str) else json.dumps(entries, ensure_ascii=False)
    page.locator("#compare-configs .cm-content").click()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)


def set_number(page, elem_id: str, value: int | str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")


def spec(model: Path, label: str, kv_policy: str = "none", fraction: float = 0.4) -> dict:
    return {"label": label, "model_path": str(model), "backend": "pytorch", "kv_policy": kv_policy,
            "cache_max_entry_count": fraction}


def run_and_get_id(page, started: str) -> str:
    from playwright.sync_api import expect

    page.locator("#compare-run").click()
    message = page.locator("#compare-message")
    expect(message).to_contain_text(started, timeout=TIMEOUT_MS)
    found = re.search(r"cmp-[0-9a-f]{8}", message.inner_text())
    assert found, message.inner_text()
    return found.group(0)


def shot(page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)


def test_bad_input_is_named_on_the_page_and_nothing_starts(browser, compare_console) -> None:  # noqa: F811
    from playwright.sync_api import expect

    console, model = compare_console
    services = console.services
    servers_before = [s.id for s in services.servers.snapshots()]
    compares_before = [s.id for s in services.compare.snapshots()]
    page = open_compare(browser, console.url, "en-US")
    preview_message = page.locator("#compare-preview-message")
    message = page.locator("#compare-message")

    # Broken JSON: the preview names the line and says how to fix it; Run says the same and starts nothing.
    set_configs(page, '[\n {"label": "a",, "model_path": "x"}\n]')
    expect(preview_message).to_contain_text("not valid JSON (line 2", timeout=TIMEOUT_MS)
    expect(preview_message).to_contain_text("clear it and add configurations with the buttons", timeout=TIMEOUT_MS)
    page.locator("#compare-run").click()
    expect(message).to_contain_text("not valid JSON (line 2", timeout=TIMEOUT_MS)

    # One configuration is not a comparison.
    set_configs(page, [spec(model, "only")])
    expect(page.locator("#compare-preview")).to_contain_text("lmdeploy serve api_server", timeout=TIMEOUT_MS)
    expect(preview_message).to_be_empty(timeout=TIMEOUT_MS)
    page.locator("#compare-run").click()
    expect(message).to_contain_text("Compare 2 to 8 configurations (this list has 1)", timeout=TIMEOUT_MS)

    # Two good ones, but a concurrency level that is not a number: the field is named.
    set_configs(page, [spec(model, "a"), spec(model, "b", "int8")])
    expect_rows(page, "compare-preview", 2)
    set_text(page, "compare-concurrency", "1, x")
    page.locator("#compare-run").click()
    expect(message).to_contain_text("Concurrency levels", timeout=TIMEOUT_MS)
    expect(message).to_contain_text("'x' is not a whole number", timeout=TIMEOUT_MS)
    shot(page, "compare-bad-input-en.png")

    assert [s.id for s in services.servers.snapshots()] == servers_before
    assert [s.id for s in services.compare.snapshots()] == compares_before
    page.close()


def test_grid_then_two_configurations_table_verdict_charts_and_csv(browser, compare_console) -> None:  # noqa: F811
    from playwright.sync_api import expect

    console, model = compare_console
    page = open_compare(browser, console.url, "en-US")
    expect(page.locator("#compare-grid-model input")).to_have_value(str(model), timeout=TIMEOUT_MS)
    page.locator("#compare-add-grid").click()
    configs = page.locator("#compare-configs")
    preview = page.locator("#compare-preview")
    expect_rows(page, "compare-preview", 5)
    for policy in ("none", "int8", "int4", "fp8", "turbo_quant"):
        expect(configs).to_contain_text(f"orig · KV {policy}", timeout=TIMEOUT_MS)
        expect(preview).to_contain_text(f"orig · KV {policy}", timeout=TIMEOUT_MS)
    expect(preview).to_contain_text("lmdeploy serve api_server", timeout=TIMEOUT_MS)
    expect(preview).to_contain_text("--quant-policy 42", timeout=TIMEOUT_MS)
    shot(page, "compare-grid-en.png")

    set_configs(page, [spec(model, "KV none"), spec(model, "KV int4", "int4")])
    expect_rows(page, "compare-preview", 2)
    expect(preview).to_contain_text("--quant-policy 4", timeout=TIMEOUT_MS)
    set_text(page, "compare-concurrency", "1, 2")
    set_number(page, "compare-requests", 4)
    set_number(page, "compare-max-tokens", 8)
    compare_id = run_and_get_id(page, "started: 2 configurations")

    progress = page.locator("#compare-progress")
    expect(progress).to_contain_text(f"{compare_id} · Done", timeout=RUN_TIMEOUT_MS)
    table = page.locator("#compare-table")
    expect(table).to_contain_text("★ KV none", timeout=TIMEOUT_MS)
    expect(table).to_contain_text("×3.76", timeout=TIMEOUT_MS)
    expect(table).to_contain_text("not available", timeout=TIMEOUT_MS)  # peak GPU memory: no GPU here
    verdict = page.locator("#compare-verdict")
    expect(verdict).to_contain_text("Against the baseline KV none", timeout=TIMEOUT_MS)
    expect(verdict).to_contain_text("3.76× the KV tokens", timeout=TIMEOUT_MS)
    for chart in ("#compare-throughput", "#compare-tradeoff"):
        expect(page.locator(f"{chart} .js-plotly-plot svg").first).to_be_visible(timeout=TIMEOUT_MS)
    shot(page, "compare-done-en.png")

    page.locator("#compare-export").click()
    link = page.locator("#compare-csv a[href*='.csv']").first
    expect(link).to_be_attached(timeout=TIMEOUT_MS)
    csv_text = page.request.get(link.get_attribute("href") or "").text()
    assert csv_text.startswith("label,status"), csv_text[:200]
    assert "KV int4,done" in csv_text
    page.close()


def test_chinese_page_with_a_failed_start_and_a_reused_llama_cpp_server(browser, compare_console,  # noqa: F811
                                                                        chat_server) -> None:
    from playwright.sync_api import expect

    console, model = compare_console
    services = console.services
    attached = services.servers.attach(chat_server.base_url, chat_server.api_key)
    assert services.servers.wait_for(attached.id, {"READY"}, 60).state == "READY"

    page = open_compare(browser, console.url, "zh-CN")
    set_configs(page, [spec(model, "甲 0.9", fraction=0.9), spec(model, "乙 0.4")])
    expect_rows(page, "compare-preview", 2)
    page.get_by_text("添加单个配置，或直接复用一个已就绪的服务").click()  # the accordion with the server picker
    page.locator("#compare-server input").click()
    page.get_by_role("option", name=re.compile(attached.id)).click()
    page.locator("#compare-add-server").click()
    expect_rows(page, "compare-preview", 3)
    expect(page.locator("#compare-preview")).to_contain_text("复用已就绪的服务", timeout=TIMEOUT_MS)
    set_text(page, "compare-concurrency", "1")
    set_number(page, "compare-requests", 2)
    set_number(page, "compare-max-tokens", 4)
    set_number(page, "compare-baseline", 2)
    compare_id = run_and_get_id(page, "已开始：3 个配置")

    progress = page.locator("#compare-progress")
    expect(progress).to_contain_text(f"{compare_id} · 已完成", timeout=RUN_TIMEOUT_MS)
    expect(progress).to_contain_text("甲 0.9 — 失败", timeout=TIMEOUT_MS)
    oom = Catalog.load().text("hints.out_of_memory", "zh")
    expect(progress).to_contain_text(oom, timeout=TIMEOUT_MS)
    verdict = page.locator("#compare-verdict")
    expect(verdict).to_contain_text("与基线 乙 0.4 相比", timeout=TIMEOUT_MS)
    expect(verdict).to_contain_text(oom, timeout=TIMEOUT_MS)
    table = page.locator("#compare-table")
    expect(table).to_contain_text("不可用", timeout=TIMEOUT_MS)
    shot(page, "compare-done-zh.png")

    result = services.compare.result(compare_id)
    assert result is not None
    reused = result["configs"][2]
    assert reused["status"] == "done", reused
    assert reused["perplexity"]["available"] is False, reused["perplexity"]
    row = table.locator("[role=row]").filter(has_text=str(reused["label"]))
    expect(row).to_contain_text("完成", timeout=TIMEOUT_MS)
    expect(row).to_contain_text("不可用", timeout=TIMEOUT_MS)
    for text in (progress.inner_text(), verdict.inner_text()):
        assert not ENGLISH_WORDS.search(text), text
    page.close()


def test_cancel_from_the_page_stops_the_server_it_started(browser, compare_console) -> None:  # noqa: F811
    from playwright.sync_api import expect

    console, model = compare_console
    services = console.services
    page = open_compare(browser, console.url, "zh-CN")
    set_configs(page, [spec(model, "甲"), spec(model, "乙", "int8")])
    expect_rows(page, "compare-preview", 2)
    set_number(page, "compare-requests", 3000)
    set_number(page, "compare-max-tokens", 16)
    page.locator("#compare-quality").get_by_text("跳过").click()
    compare_id = run_and_get_id(page, "已开始：2 个配置")

    progress = page.locator("#compare-progress")
    expect(progress).to_contain_text("甲 — 测量中", timeout=RUN_TIMEOUT_MS)
    cancel = page.locator("#compare-cancel")
    expect(cancel).to_be_enabled(timeout=TIMEOUT_MS)
    cancel.click()
    expect(page.locator("#compare-cancel-message")).to_contain_text("正在取消", timeout=TIMEOUT_MS)
    expect(progress).to_contain_text(f"{compare_id} · 已取消", timeout=RUN_TIMEOUT_MS)
    shot(page, "compare-cancelled-zh.png")

    snap = services.compare.get(compare_id)
    assert snap is not None and snap.state == "CANCELLED"
    first, second = snap.configs
    assert first["status"] == "cancelled" and second["status"] == "cancelled", snap.configs
    assert first["server_id"] and not second.get("server_id")
    assert services.servers.wait_for(first["server_id"], {"STOPPED"}, 30).state == "STOPPED"
    page.close()
