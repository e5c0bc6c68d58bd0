"""The whole console in a Chinese browser (zh-CN) shows no English sentence of ours.

Rule checked on every tab, after real work has left something to show (a finished CPU AWQ job, a server that
failed, a READY server, a chat reply, a tool run, a stop): the visible text of the page, the placeholders and
titles of visible elements, the values of visible inputs (a dropdown shows its choice there) and the text of
the charts must not contain an English sentence from the en catalog.

Which English counts: every en catalog value that differs from its zh value is cut at its placeholders and
`code` spans (what fills those is data: ids, paths, numbers); a piece counts if it has two words or more, or is
one word of six letters or more (`Stopped`, `Cancelled`), matched case-sensitively as whole words. Shorter
pieces (units, `Top p`, `ID`) and pieces that the zh catalog itself contains (names such as `tool_choice`) are
left out. What is not ours is hidden before reading: code blocks and inline code (commands, paths, the
OS's, LMDeploy's and NVML's own words, which are quoted as such), logs and editors (textareas, the JSON
editor) and Gradio's footer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODEL_NAME, fake_argv_factory, launched_console
from tests.test_browser import TIMEOUT_MS, browser  # noqa: F401 - the shared Chromium fixture
from webui.i18n.catalog import Catalog
from webui.services.quantize_spec import AwqSpec
from webui.services.serve_spec import CheckedSpec, ServerSpec, suggest_port
from webui.settings import Settings

pytestmark = [pytest.mark.browser, pytest.mark.engine]
SCREENSHOTS = os.environ.get("CONSOLE_SCREENSHOTS", "")
NO_GPU = "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU"
FOREIGN = "pre, code, textarea, .cm-editor, footer"
SPLIT = re.compile(r"\{+[^{}]*\}+|`[^`]*`")
WORD = re.compile(r"[A-Za-z]{2,}")
VISIBLE_EXTRAS = """() => {
  const seen = (e) => e.checkVisibility ? e.checkVisibility() : e.offsetParent !== null;
  const out = [];
  for (const e of document.querySelectorAll('[placeholder], [title], input')) {
    if (!seen(e) || e.closest('footer')) continue;
    for (const name of ['placeholder', 'title']) if (e.getAttribute(name)) out.push(e.getAttribute(name));
    if (e.tagName === 'INPUT' && !['password', 'file', 'hidden'].includes(e.type) && e.value) out.push(e.value);
  }
  for (const e of document.querySelectorAll('svg text')) if (seen(e) && e.textContent) out.push(e.textContent);
  return out;
}"""


def english_pieces(catalog: Catalog) -> dict[str, str]:
    """piece → the en key it comes from (see the module docstring for the rule)."""
    zh_text = "\n".join(catalog.messages["zh"].values())
    pieces: dict[str, str] = {}
    for key in sorted(catalog.keys("en")):
        en = catalog.messages["en"][key]
        if en == catalog.messages["zh"][key]:
            continue
        for part in SPLIT.split(en):
            part = " ".join(re.sub(r"[*#>]+", " ", part).split()).strip(" .,:;!?()[]\"'“”—–-…·/|")
            words = WORD.findall(part)
            if not (len(words) >= 2 or (len(words) == 1 and len(words[0]) >= 6 and words[0] == part)):
                continue
            if part not in zh_text:
                pieces.setdefault(part, key)
    return pieces


def leaks(page, pieces: dict[str, str]) -> list[str]:
    """The catalog's English pieces found in what the page shows now (code, logs and editors hidden)."""
    style = page.add_style_tag(content=f"{FOREIGN} {{ display: none !important; }}")
    try:
        shown = page.locator("body").inner_text() + "\n" + "\n".join(page.evaluate(VISIBLE_EXTRAS))
    finally:
        style.evaluate("e => e.remove()")
    found = []
    for piece, key in pieces.items():
        if re.search(rf"(?<![A-Za-z]){re.escape(piece)}(?![A-Za-z])", shown):
            found.append(f"{key}: {piece!r}")
    return found


def stand_in_or_failing(checked: CheckedSpec) -> list[str]:
    """The stand-in api_server; the one named "broken" fails the way LMDeploy does on a machine without a GPU."""
    extra = ("--fail-with", NO_GPU) if checked.spec.model_name == "broken" else ()
    return fake_argv_factory(*extra)(checked)


@pytest.fixture
def zh_console(settings: Settings, model_root: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A console with something on every tab: a finished AWQ job, a failed server and a READY (active) one."""
    model = str(model_root / MODEL_NAME)
    with launched_console(settings, argv_factory=stand_in_or_failing) as console:
        services = console.services
        job = services.jobs.submit(AwqSpec(model_path=model, calib_source="none", calib_samples=0,
                                           device="cpu")).job
        assert job is not None
        broken = services.servers.start(ServerSpec(model_path=model, port=suggest_port(31900), model_name="broken"))
        ready = services.servers.start(ServerSpec(model_path=model, port=suggest_port(31950), model_name="tiny"))
        assert broken.server is not None and ready.server is not None, (broken.errors, ready.errors)
        assert services.servers.wait_for(broken.server.id, {"READY", "FAILED"}, 60).state == "FAILED"
        assert services.servers.wait_for(ready.server.id, {"READY", "FAILED"}, 60).state == "READY"
        services.servers.set_active(ready.server.id)
        assert services.jobs.wait_for(job.id, {"SUCCEEDED", "FAILED"}, 240).state == "SUCCEEDED"
        yield console.url, {"job": job.id, "broken": broken.server.id, "ready": ready.server.id}


def pick(page, dropdown: str, option: re.Pattern[str]) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option).click()


def test_every_tab_in_chinese_shows_no_english_sentence(browser, zh_console) -> None:  # noqa: F811
    from playwright.sync_api import expect

    url, ids = zh_console
    pieces = english_pieces(Catalog.load())
    assert len(pieces) > 300  # the rule really covers the catalog
    found: dict[str, list[str]] = {}

    def check(where: str) -> None:
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / f"zh-{where}.png"), full_page=True)
        found[where] = leaks(page, pieces)

    page = browser.new_page(locale="zh-CN", viewport={"width": 1400, "height": 1400})
    page.goto(url)

    # Models, where the page opens: the form, the token box, an empty downloads list.
    expect(page.locator("#models-download")).to_have_text("下载", timeout=TIMEOUT_MS)
    page.get_by_text("访问令牌（用于需授权或私有的仓库）").click()  # the token's section opens
    expect(page.locator("#models-token-status")).to_contain_text("未保存令牌", timeout=TIMEOUT_MS)
    check("models")
    page.get_by_role("tab", name="模型量化", exact=True).click()

    # Quantize: the finished job (result card), the form's pre-flight (cuda without a GPU is refused).
    detail = page.locator("#quantize-detail")
    expect(detail).to_contain_text("已完成", timeout=TIMEOUT_MS)
    expect(detail).to_contain_text("quantization_config", timeout=TIMEOUT_MS)
    expect(page.locator("#quantize-preflight")).to_contain_text("GPU", timeout=TIMEOUT_MS)
    check("quantize")

    # Serve: the failed server with its hint, then the READY one stopped from the page.
    page.locator("#quantize-serve-this").click()
    expect(page.locator("#serve-command")).to_contain_text("--model-format awq", timeout=TIMEOUT_MS)
    pick(page, "#serve-selected", re.compile(ids["broken"]))
    serve_detail = page.locator("#serve-detail")
    expect(serve_detail).to_contain_text("失败", timeout=TIMEOUT_MS)
    expect(serve_detail).to_contain_text("需要 NVIDIA GPU", timeout=TIMEOUT_MS)
    expect(page.locator("#serve-stop")).to_be_disabled(timeout=TIMEOUT_MS)  # nothing to stop
    check("serve-failed")

    # Chat with the READY (active) server: the stand-in replays LMDeploy's recorded stream.
    page.get_by_role("tab", name="对话").click()
    expect(page.locator("#chat-target input")).to_have_value(re.compile(ids["ready"]), timeout=TIMEOUT_MS)
    message = page.locator("#chat-message textarea")
    message.fill("你好，请介绍一下你自己。")
    message.press("Enter")
    expect(page.locator("#chat-stats")).to_contain_text("首 token 延迟", timeout=TIMEOUT_MS)
    expect(page.locator("#chat-stats")).to_contain_text("个 token")
    check("chat")

    # Tools: the stand-in answers tools with LMDeploy's recorded 400 (no tool-call parser).
    page.get_by_role("tab", name="工具调用").click()
    expect(page.locator("#tools-target input")).to_have_value(re.compile(ids["ready"]), timeout=TIMEOUT_MS)
    page.locator("#tools-run").click()
    expect(page.locator("#tools-outcome")).to_contain_text("工具调用解析器", timeout=TIMEOUT_MS)
    expect(page.locator("#tools-restart")).to_be_visible()
    check("tools")

    # Memory: no GPU here (NVML's own reason is quoted), and the planner.
    page.get_by_role("tab", name="显存").click()
    expect(page.locator("#memory-status")).to_contain_text("没有可显示的 GPU", timeout=TIMEOUT_MS)
    expect(page.locator("#memory-prediction")).to_contain_text("可容纳的 token 数", timeout=TIMEOUT_MS)
    check("memory")

    # Serve again: stop the READY server from the page; stop returns at once (STOPPING), the monitor ends it.
    page.get_by_role("tab", name="部署服务").click()
    pick(page, "#serve-selected", re.compile(ids["ready"]))
    expect(page.locator("#serve-stop")).to_be_enabled(timeout=TIMEOUT_MS)
    page.locator("#serve-stop").click()
    expect(page.locator("#serve-message")).to_contain_text(re.compile("正在停止|已停止"), timeout=TIMEOUT_MS)
    expect(serve_detail).to_contain_text("已停止", timeout=TIMEOUT_MS)
    check("serve-stopped")
    page.close()

    # The reading is not blind: the same page in English is full of the catalog's pieces.
    english = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1400})
    english.goto(url)
    english.get_by_role("tab", name="Quantize").click()
    expect(english.locator("#quantize-detail")).to_contain_text("Done", timeout=TIMEOUT_MS)
    assert len(leaks(english, pieces)) > 20
    english.close()

    found = {where: pieces_found for where, pieces_found in found.items() if pieces_found}
    assert not found, f"English catalog text on the Chinese page: {found}"
