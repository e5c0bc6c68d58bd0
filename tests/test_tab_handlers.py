"""The tabs' handlers called directly, as the page calls them, without a browser.

Real services throughout: the stand-in api_server (tests/fake_api_server.py) for servers in every state, a
stand-in AWQ worker that takes its time to stop, and this machine's real lack of NVML. A `gr.Request` is faked
by what `locale_of` reads of it (its headers). Checked: what each view shows for each state, in en and zh, and
that the chat handlers build new values instead of changing the ones they are given (Gradio hands a
session's state to the next event as it was returned).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from tests.conftest import MODEL_NAME, fake_argv_factory, place_model
from webui.i18n.catalog import Catalog
from webui.services.chat import ChatError
from webui.services.container import Services
from webui.services.quantize_spec import AwqSpec
from webui.services.serve_spec import CheckedSpec, ServerSpec
from webui.settings import Settings
from webui.ui.chat_tab import ChatHandlers, empty_state
from webui.ui.memory_tab import MemoryHandlers
from webui.ui.quantize_tab import QuantizeHandlers
from webui.ui.serve_tab import SERVE_FORM, ServeHandlers
from webui.ui.target_picker import OTHER_URL, TargetHandlers
from webui.ui.tools_tab import ToolsHandlers

# What locale_of reads of a gr.Request; Any, because the handlers are annotated with the real type.
EN: Any = SimpleNamespace(headers={"accept-language": "en-US,en;q=0.9"})
ZH: Any = SimpleNamespace(headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.5"})
SETTLED = {"READY", "FAILED"}
JOB_FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "LOST"}
# A worker that never finishes and takes 3 s to stop once asked: the job stays RUNNING, then CANCELLING.
SLOW_WORKER = """
import json, signal, sys, time
def leave(*_):
    time.sleep(3)
    sys.exit(143)
signal.signal(signal.SIGTERM, leave)
job = json.load(open(sys.argv[1]))
with open(job["progress_path"], "a") as progress:  # only now may a test cancel it and expect a slow exit
    progress.write(json.dumps({"phase": "load"}) + "\\n")
time.sleep(120)
"""


def by_model_name(checked: CheckedSpec) -> list[str]:
    """The stand-in api_server shaped by --model-name: "broken" has an interpreter that does not exist,
    "slow" prints a start-up line every 5 s (it stays STARTING), "stubborn" survives SIGTERM (STOPPING lasts)."""
    name = checked.spec.model_name
    if name == "broken":
        return ["/no/such/python", "-m", "lmdeploy", "serve", "api_server", str(checked.model_dir)]
    extra = {"slow": ("--phase-delay", "5"), "stubborn": ("--ignore-sigterm",)}.get(name, ())
    return fake_argv_factory(*extra)(checked)


def slow_worker(job_file: Path) -> list[str]:
    return [sys.executable, "-c", SLOW_WORKER, str(job_file)]


def start(services: Services, model: Path, name: str = "") -> str:
    spec = ServerSpec(model_path=str(model), port=services.servers.suggest_port(), model_name=name)
    outcome = services.servers.start(spec)
    assert outcome.server is not None, outcome.errors
    return outcome.server.id


def start_ready(services: Services, model: Path, name: str = "") -> str:
    server_id = start(services, model, name)
    end = services.servers.wait_for(server_id, SETTLED, 30)
    assert end.state == "READY", (end, services.servers.log(server_id)[-8:])
    return server_id


def rows_by_id(table: pd.DataFrame, id_column: str) -> dict[str, dict[str, Any]]:
    return {row[id_column]: row for row in table.to_dict("records")}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@dataclass(frozen=True)
class TwoServers:
    """Two READY stand-in servers (the first one active) for the pickers and the chat."""

    services: Services
    first: str
    second: str
    targets: TargetHandlers
    chat: ChatHandlers


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
                catalog: Catalog) -> Iterator[TwoServers]:
    folder = tmp_path_factory.mktemp("two-servers")
    model = place_model(tiny_model_dir, folder / "models")
    services = Services.build(Settings(state_dir=folder / "state", model_roots=(model.parent,)),
                              argv_factory=by_model_name)
    try:
        first, second = start_ready(services, model), start_ready(services, model, "second")
        targets = TargetHandlers(services.chat, services.servers, catalog)
        yield TwoServers(services, first, second, targets, ChatHandlers(services.chat, targets, catalog))
    finally:
        services.close()


@pytest.fixture
def no_servers(bare_settings: Settings) -> Iterator[Services]:
    """A console that runs nothing and knows no model (this machine: no NVML either)."""
    services = Services.build(bare_settings)
    try:
        yield services
    finally:
        services.close()


# Chat --------------------------------------------------------------------------------------------------

def reply(chat: ChatHandlers, target: str, state: dict[str, Any], chatbot: list[dict[str, Any]],
          request: Any = EN) -> list[tuple[Any, ...]]:
    """Every yield of stream_reply, as the page receives them (target, URL, key, model, then the settings)."""
    return list(chat.stream_reply(target, "", "", None, "", 0.0, 1.0, 64, 0, 1.0, -1, state, chatbot, request))


def test_a_conversation_renders_as_chatbot_messages_with_a_numbers_line_per_reply(two_servers: TwoServers) -> None:
    chat = two_servers.chat
    state0, chatbot0 = empty_state(), []
    text, chatbot1, state1 = chat.add_message("Hello there", chatbot0, state0)
    assert text == "" and chatbot1 == [{"role": "user", "content": "Hello there"}]
    assert state1["messages"] == [{"role": "user", "content": "Hello there"}] and state1["request_id"]
    assert (chatbot0, state0) == ([], empty_state())  # the given values are left as they were

    before = copy.deepcopy((chatbot1, state1))
    yields = reply(chat, two_servers.first, state1, chatbot1)
    assert (chatbot1, state1) == before
    answers = [y[0][-1]["content"] for y in yields]
    # the first words at once, then at most 20 redraws a second, and the whole reply last (the stand-in is quick)
    assert len(yields) >= 2 and answers[0] and answers[-1] and len(answers[0]) < len(answers[-1]), answers
    assert all(answers[-1].startswith(partial) for partial in answers)  # each yield carries the text so far
    chatbot2, state2, stats2, notice2 = yields[-1]
    assert chatbot2 == [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": answers[-1]}]
    assert state2["messages"] == chatbot2 and state2["request_id"] == "" and len(state2["stats"]) == 1
    assert notice2 == ""
    first_ms = f"{state2['stats'][0]['ttft_s'] * 1000:.0f}"
    assert stats2.startswith("1. ") and first_ms in stats2 and "\n" not in stats2

    _, chatbot3, state3 = chat.add_message("And again?", chatbot2, state2)
    chatbot4, state4, stats4, _ = reply(chat, two_servers.first, state3, chatbot3)[-1]
    assert [m["role"] for m in chatbot4] == ["user", "assistant", "user", "assistant"]
    assert [line[:3] for line in stats4.splitlines()] == ["1. ", "2. "] and first_ms in stats4.splitlines()[0]
    assert len(state4["stats"]) == 2 and len(state2["stats"]) == 1

    zh_stats = reply(chat, two_servers.first, state3, chatbot3, ZH)[-1][2]
    assert zh_stats.startswith("1. ") and len(zh_stats.splitlines()) == 2


def test_regenerate_drops_the_last_reply_into_new_lists(two_servers: TwoServers) -> None:
    chat = two_servers.chat
    _, chatbot1, state1 = chat.add_message("Hi", [], empty_state())
    chatbot, state, _, _ = reply(chat, two_servers.first, state1, chatbot1)[-1]
    before = copy.deepcopy((chatbot, state))

    shown, again = chat.regenerate(chatbot, state)
    assert (chatbot, state) == before  # nothing the page holds was changed
    assert shown == chatbot[:1] and shown is not chatbot
    assert again["messages"] == state["messages"][:1] and again["messages"] is not state["messages"]
    assert again["stats"] == [] and again["request_id"] not in ("", state["request_id"])
    # The regenerated reply streams from the new state; the old one still holds its reply.
    final_chatbot, final_state, _, _ = reply(chat, two_servers.first, again, shown)[-1]
    assert [m["role"] for m in final_chatbot] == ["user", "assistant"] and len(final_state["stats"]) == 1
    assert (chatbot, state) == before

    # Nothing to ask again: the same values come back, unchanged.
    empty_chatbot: list[dict[str, Any]] = []
    empty = empty_state()
    assert chat.regenerate(empty_chatbot, empty) == ([], empty_state())
    assert (empty_chatbot, empty) == ([], empty_state())


def test_clear_gives_a_fresh_state_every_time(two_servers: TwoServers) -> None:
    chatbot, state, stats, notice = two_servers.chat.clear()
    assert (chatbot, state, stats, notice) == ([], empty_state(), "", "")
    state["messages"].append({"role": "user", "content": "leaked?"})
    chatbot.append({"role": "user", "content": "leaked?"})
    again = two_servers.chat.clear()
    assert again[:2] == ([], empty_state())  # no list is shared between two conversations
    assert again[1]["messages"] is not state["messages"] and again[1]["stats"] is not state["stats"]


def test_a_failed_request_takes_back_the_users_turn_and_says_why(no_servers: Services, catalog: Catalog) -> None:
    targets = TargetHandlers(no_servers.chat, no_servers.servers, catalog)
    chat = ChatHandlers(no_servers.chat, targets, catalog)
    _, chatbot, state = chat.add_message("Anyone there?", [], empty_state())
    before = copy.deepcopy((chatbot, state))
    (shown, failed, stats, notice), = reply(chat, "", state, chatbot)
    assert (chatbot, state) == before
    assert shown == [] and failed["messages"] == [] and failed["request_id"] == "" and stats == ""
    assert notice.startswith("⚠") and "Anyone there?" not in notice


# Target pickers ----------------------------------------------------------------------------------------

def test_the_picker_lists_ready_servers_with_the_active_one_first(two_servers: TwoServers, catalog: Catalog) -> None:
    servers, targets = two_servers.services.servers, two_servers.targets
    other = (catalog.text("target.other_url", "en"), OTHER_URL)
    picker, url_row = targets.refresh_targets(None, EN)
    assert [value for _, value in picker.choices] == [two_servers.first, two_servers.second, OTHER_URL]
    assert picker.choices[0][0].startswith(f"★ {two_servers.first} · ") and picker.choices[-1] == other
    assert picker.value == two_servers.first and url_row.visible is False

    servers.set_active(two_servers.second)
    try:
        picker, _ = targets.refresh_targets(None, EN)
        assert [value for _, value in picker.choices] == [two_servers.second, two_servers.first, OTHER_URL]
        assert picker.value == two_servers.second
        picker, _ = targets.refresh_targets(two_servers.first, EN)  # the user's pick is kept while valid
        assert picker.value == two_servers.first
        picker, _ = targets.refresh_targets("gone0001", EN)
        assert picker.value == two_servers.second
    finally:
        servers.set_active(two_servers.first)
    zh_picker, _ = targets.refresh_targets(None, ZH)
    assert zh_picker.choices[-1] == (catalog.text("target.other_url", "zh"), OTHER_URL) != other


def test_a_url_target_shows_its_fields_and_lists_its_models(two_servers: TwoServers) -> None:
    targets = two_servers.targets
    base_url = two_servers.services.servers.get(two_servers.second).base_url
    picker, url_row = targets.refresh_targets(OTHER_URL, EN)
    assert picker.value == OTHER_URL and url_row.visible is True
    row, _, message = targets.pick_target(OTHER_URL, base_url, "", EN)
    assert row.visible is True and message == ""
    models, message = targets.list_models(OTHER_URL, base_url, "", EN)
    assert models.choices == [("second", "second")] and models.value == "second" and message == ""
    endpoint = targets.endpoint(OTHER_URL, base_url + "/v1/", "", None)
    assert (endpoint.base_url, endpoint.model, endpoint.server_id) == (base_url, "second", "")
    # A server picked from the list fills the model it serves and hides the URL fields.
    row, models, message = targets.pick_target(two_servers.second, "", "", EN)
    assert row.visible is False and models.value == "second" and message == ""


def test_with_no_server_the_picker_offers_only_a_url_and_requests_say_why(no_servers: Services,
                                                                         catalog: Catalog) -> None:
    targets = TargetHandlers(no_servers.chat, no_servers.servers, catalog)
    for request, locale in ((EN, "en"), (ZH, "zh")):
        picker, url_row = targets.refresh_targets(None, request)
        assert picker.choices == [(catalog.text("target.other_url", locale), OTHER_URL)]
        assert picker.value == OTHER_URL and url_row.visible is True
    with pytest.raises(ChatError) as raised:
        targets.endpoint(None, "", "", None)
    assert raised.value.kind == "no_server"
    en, zh = targets.error_text(raised.value, "en"), targets.error_text(raised.value, "zh")
    assert en.startswith("⚠ ") and zh.startswith("⚠ ") and en != zh
    models, message = targets.list_models(OTHER_URL, "", "", EN)
    assert models.choices == [] and message.startswith("⚠ ")


# Serve -------------------------------------------------------------------------------------------------

@pytest.fixture
def serve_services(settings: Settings) -> Iterator[Services]:
    services = Services.build(settings, argv_factory=by_model_name)
    try:
        yield services
    finally:
        services.close()


def test_the_serve_table_and_detail_for_every_live_state_and_a_spawn_failure(
        serve_services: Services, model_root: Path, catalog: Catalog) -> None:
    servers = serve_services.servers
    model = model_root / "tiny llama; echo pwned"
    ready = start_ready(serve_services, model)
    stubborn = start_ready(serve_services, model, "stubborn")
    broken = start(serve_services, model, "broken")
    slow = start(serve_services, model, "slow")
    servers._stop_grace_s = 4.0  # the stubborn one stays STOPPING that long, then is killed
    handlers = ServeHandlers(servers, serve_services.roots, catalog)
    assert handlers.stop_server(stubborn, EN) == catalog.text("serve.msg.stopping", "en", id=stubborn)
    states = {ready: "READY", stubborn: "STOPPING", broken: "FAILED", slow: "STARTING"}
    assert {s.id: s.state for s in servers.snapshots()} == states

    def t(key: str, locale: str = "en", **params: object) -> str:
        text = catalog.text(key, locale, **params)
        assert text != key, f"no {locale} words for {key}"
        return text

    for request, locale in ((EN, "en"), (ZH, "zh")):
        table = handlers.list_servers(request)
        assert list(table.columns) == [t(f"serve.col.{c}", locale)
                                       for c in ("active", "id", "state", "model", "config", "gpus", "uptime")]
        rows = rows_by_id(table, t("serve.col.id", locale))
        assert {i: row[t("serve.col.state", locale)] for i, row in rows.items()} == {
            i: t(f"serve.state.{state}", locale) for i, state in states.items()}
        assert [i for i, row in rows.items() if row[t("serve.col.active", locale)] == "★"] == [ready]
        assert rows[ready][t("serve.col.config", locale)].startswith(f"{servers.get(ready).backend} · KV ")
        assert rows[ready][t("serve.col.model", locale)] == "tiny llama; echo pwned"  # a path shows its folder
        assert rows[ready][t("serve.col.gpus", locale)] == t("serve.msg.all_gpus", locale)  # none chosen

        details = {i: handlers.server_detail(i, request) for i in states}
        for server_id, state in states.items():
            assert details[server_id].startswith(f"### <span class='state state-{state.lower()}'>"
                                                 f"{t(f'serve.state.{state}', locale)}</span> `{server_id}`")
        snap = servers.get(slow)
        assert snap is not None and snap.state == "STARTING"
        assert t(f"serve.phase.{snap.phase}", locale) in details[slow] and "<progress value=" in details[slow]
        assert f"{servers.get(ready).base_url}/v1" in details[ready] and " ★" in details[ready].splitlines()[0]
        assert t("serve.detail.ready_in", locale) in details[ready]
        assert "<progress" not in details[ready] + details[broken] + details[stubborn]
        # The spawn failure: the plain hint, the program that is missing and the OS's reason (ENOENT).
        assert t("hints.spawn_failed", locale) in details[broken]
        assert "/no/such/python" in details[broken] and "ENOENT" in details[broken]
        assert handlers.server_detail(None, request) == t("serve.msg.no_selection", locale)

    en_table, zh_table = handlers.list_servers(EN), handlers.list_servers(ZH)
    assert en_table.shape == zh_table.shape and list(en_table.columns) != list(zh_table.columns)
    assert handlers.server_detail(broken, EN) != handlers.server_detail(broken, ZH)
    assert "/no/such/python" in handlers.server_log(broken)
    assert servers.wait_for(stubborn, {"STOPPED"}, 15).state == "STOPPED"


def test_the_serve_form_places_a_server_on_its_gpus(serve_services: Services, model_root: Path,
                                                    catalog: Catalog) -> None:
    """GPUs and executor: their errors name their fields, the preview shows the environment and the executor, the
    table shows each server's GPUs. (No NVML here: which GPUs exist is not known, so only the shape is checked.)"""
    handlers = ServeHandlers(serve_services.servers, serve_services.roots, catalog)
    base = {"model_path": str(model_root / "tiny llama; echo pwned"), "port": serve_services.servers.suggest_port()}

    def preview(request: Any = EN, **values: object) -> tuple[str, str]:
        return handlers.preview_command(SERVE_FORM.parse({**base, **values}), request)

    for values, field, key in (({"gpus": "0,0"}, "gpus", "errors.gpus_repeated"),
                               ({"gpus": "zero"}, "gpus", "errors.gpus_syntax"),
                               ({"gpus": "0,1"}, "gpus", "errors.gpus_tp"),
                               ({"executor": "fast"}, "executor", "errors.choice")):
        form = SERVE_FORM.parse({**base, **values})
        assert [(e.field, e.key) for e in handlers.problems(form)] == [(field, key)], values
        for request, locale in ((EN, "en"), (ZH, "zh")):
            _, status = preview(request, **values)
            label = catalog.text(f"serve.{field}.label", locale)
            assert f"- **{label}**: " in status, status
        message, server_id, _ = handlers.start_server(form, EN)
        assert server_id == "" and f"**{catalog.text(f'serve.{field}.label', 'en')}**" in message
    assert catalog.text("serve.gpus.label", "en") == "GPUs"
    assert catalog.text("serve.executor.label", "en") == "Executor (tp > 1, PyTorch)"

    command, status = preview(gpus="1")
    assert command.startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1 lmdeploy serve api_server ")
    assert status == "**" + catalog.text("serve.msg.ready_to_start", "en") + "**"
    command, _ = preview(backend="pytorch", tp=2, gpus="0 1", executor="mp")
    assert "CUDA_VISIBLE_DEVICES=0,1 " in command and "--distributed-executor-backend mp" in command
    assert "--distributed-executor-backend" not in preview(backend="turbomind", tp=2, executor="mp")[0]
    # The executor auto: LMDeploy's choice (ray), or mp with a note where ray does not import in its interpreter.
    placement = handlers.preview_placement(SERVE_FORM.parse({**base, "backend": "pytorch", "tp": 2}), EN)
    auto = preview(backend="pytorch", tp=2)[0]
    if serve_services.servers.ray_ok() is False:
        assert "--distributed-executor-backend mp" in auto
        assert placement == "ℹ " + catalog.text("serve.note.executor_mp_fallback", "en")
    else:
        assert "--distributed-executor-backend" not in auto and placement == ""

    message, server_id, _ = handlers.start_server(SERVE_FORM.parse({**base, "gpus": "1"}), EN)
    assert server_id, message
    assert serve_services.servers.wait_for(server_id, SETTLED, 30).state == "READY"
    snap = serve_services.servers.get(server_id)
    assert snap.gpus == (1,) and snap.command.startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1 ")
    row = rows_by_id(handlers.list_servers(ZH), catalog.text("serve.col.id", "zh"))[server_id]
    assert row[catalog.text("serve.col.gpus", "zh")] == "1"


# Quantize ----------------------------------------------------------------------------------------------

@pytest.fixture
def queue_services(settings: Settings) -> Iterator[Services]:
    services = Services.build(settings, job_argv=slow_worker)
    try:
        yield services
    finally:
        jobs = services.jobs
        for state in ("QUEUED", "RUNNING"):  # queued first, so none starts while the others stop
            for job in jobs.snapshots():
                if job.state == state:
                    jobs.cancel(job.id)
        for job in jobs.snapshots():
            jobs.wait_for(job.id, JOB_FINAL, 20)
        services.close()


def test_the_job_table_shows_queued_running_and_cancelling_rows(queue_services: Services, model_root: Path,
                                                                 catalog: Catalog) -> None:
    jobs = queue_services.jobs
    spec = AwqSpec(model_path=str(model_root / "tiny llama; echo pwned"), calib_source="none", device="cpu")
    submitted = [jobs.submit(spec).job for _ in range(3)]
    assert all(job is not None for job in submitted)
    first, second, third = (job.id for job in submitted if job is not None)
    handlers = QuantizeHandlers(jobs, queue_services.roots, queue_services.settings, catalog)

    def states(request: Any, locale: str) -> dict[str, str]:
        table = handlers.list_jobs(request)
        assert list(table.columns) == [catalog.text(f"quantize.col.{c}", locale)
                                       for c in ("id", "state", "model", "settings", "progress", "time")]
        return {i: row[catalog.text("quantize.col.state", locale)]
                for i, row in rows_by_id(table, catalog.text("quantize.col.id", locale)).items()}

    def label(state: str, locale: str = "en") -> str:
        return catalog.text(f"quantize.state.{state}", locale)

    assert states(EN, "en") == {first: label("RUNNING"), second: f"{label('QUEUED')} #1",
                                third: f"{label('QUEUED')} #2"}
    assert states(ZH, "zh") == {first: label("RUNNING", "zh"), second: f"{label('QUEUED', 'zh')} #1",
                                third: f"{label('QUEUED', 'zh')} #2"}
    running, _ = handlers.job_detail(first, EN)
    assert running.startswith("### <span class='state state-running'>") and "<progress value=" in running
    queued, _ = handlers.job_detail(third, EN)
    assert catalog.text("quantize.detail.queue", "en", position=2) in queued
    # The settings column is worded in the page's language (the jobs here are data-free on the CPU).
    for request, locale in ((EN, "en"), (ZH, "zh")):
        settings_col = handlers.list_jobs(request)[catalog.text("quantize.col.settings", locale)]
        assert set(settings_col) == {f"w4 g128 · {catalog.text('quantize.calib_source.none', locale)} · cpu"}

    deadline = time.monotonic() + 30
    while jobs.get(first).phase != "load" and time.monotonic() < deadline:  # its SIGTERM handler is in place
        time.sleep(0.02)
    asked = time.monotonic()
    message = handlers.cancel_job(first, EN)
    assert time.monotonic() - asked < 1.0  # the worker takes 3 s to go: Cancel does not wait for it
    assert first in message and message != catalog.text("errors.unknown_job", "en", id=first)
    assert states(EN, "en") == {first: label("CANCELLING"), second: f"{label('QUEUED')} #1",
                                third: f"{label('QUEUED')} #2"}
    cancelling, _ = handlers.job_detail(first, ZH)
    assert cancelling.startswith(f"### <span class='state state-cancelling'>{label('CANCELLING', 'zh')}</span>")
    # When the worker has gone, the next job in the queue starts.
    assert jobs.wait_for(first, JOB_FINAL, 15).state == "CANCELLED"
    assert jobs.wait_for(second, {"RUNNING"}, 15).state == "RUNNING"
    assert states(EN, "en") == {first: label("CANCELLED"), second: label("RUNNING"), third: f"{label('QUEUED')} #1"}


# Tools and Memory ----------------------------------------------------------------------------------------

def test_tools_problems_are_named_by_json_path_in_the_pages_language(no_servers: Services,
                                                                      catalog: Catalog) -> None:
    targets = TargetHandlers(no_servers.chat, no_servers.servers, catalog)
    tools = ToolsHandlers(no_servers.tool_loop, targets, no_servers.servers, no_servers.roots, catalog)
    bad = '[{"type": "function", "function": {"name": "add", "parameters": {"type": "object", ' \
          '"properties": {"a": {"type": "int"}}}}}]'
    en, choice = tools.check_tools_json(bad, "add", EN)
    zh, _ = tools.check_tools_json(bad, "add", ZH)
    assert en.startswith(f"**{catalog.text('tools.msg.problems', 'en')}**") and "$[0].function" in en
    assert zh.startswith(f"**{catalog.text('tools.msg.problems', 'zh')}**") and "$[0].function" in zh
    assert choice.value == "auto"
    with pytest.raises(ChatError) as raised:
        tools.prepare(bad, "auto", None, "", "", None, "en")
    assert raised.value.kind == "bad_tools" and raised.value.message == en
    good, _ = tools.load_preset("add_mul")
    status, choice = tools.check_tools_json(good, "add, mul, none", EN)
    assert "`add`" in status and "`mul`" in status and choice.value == "add, mul, none"
    with pytest.raises(ChatError) as raised:  # the tools are fine; there is no server to send them to
        tools.prepare(good, "auto", None, "", "", None, "en")
    assert raised.value.kind == "no_server"


def test_the_memory_tab_without_nvml_says_why_and_still_plans(no_servers: Services, catalog: Catalog) -> None:
    memory = MemoryHandlers(no_servers.memory, no_servers.servers, no_servers.roots, catalog)
    for request, locale in ((EN, "en"), (ZH, "zh")):
        status, chart, devices, processes = memory.refresh("5m", request)
        heading = catalog.text("memory.msg.no_gpu", locale, reason="@").split("@")[0]
        assert status.startswith("⚠ " + heading) and chart is None and devices.empty and processes.empty
    assert memory.ready_servers(None).choices == []


def test_an_earlier_comparison_shows_beside_the_selected_one(settings: Settings, catalog: Catalog) -> None:
    """Two runs kept in the history: the second is shown with the first's configurations added after its own,
    labelled with the first's id, in one table and one chart, against the second's baseline."""
    from webui.services.compare import CompareConfig, CompareRequest
    from webui.ui.compare_tab import CompareHandlers

    services = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        model = str(settings.model_roots[0] / MODEL_NAME)
        runs = []
        for policies in (("none", "int8"), ("none", "int4")):
            request = CompareRequest(configs=tuple(CompareConfig(label=f"KV {p}", spec=ServerSpec(
                model_path=model, backend="pytorch", kv_policy=p, cache_max_entry_count=0.4)) for p in policies),
                concurrency=(1,), requests_per_level=2, max_new_tokens=8, answers=0, quality="none")
            snap = services.compare.submit(request)
            assert not isinstance(snap, list), snap
            runs.append(services.compare.wait_for(snap.id, {"SUCCEEDED", "FAILED"}, 60))
        handlers = CompareHandlers(services.compare, services.servers, services.jobs, services.roots, catalog)
        _progress, verdict, table, chart, _tradeoff, _answers, commands, _cancel = handlers.show(
            runs[1].id, [runs[0].id], EN)
        labels = list(table.iloc[:, 0])
        assert labels == ["★ KV none", "KV int4", f"{runs[0].id} · KV none", f"{runs[0].id} · KV int8"]
        assert f"{runs[0].id} · KV int8" in verdict and "1.94× the KV tokens" in verdict
        assert len(chart.data) == 4 and commands.count("lmdeploy serve api_server") == 4
        alone = handlers.show(runs[1].id, [], ZH)[2]
        assert len(alone) == 2 and list(alone.columns)[4] == "满长会话数"
        blocks = runs[1].configs[0]["gpu_blocks"]
        assert alone.iloc[0, 4] == f"{blocks * 64 // 4096:,} × 4,096"  # sessions of the engine's session length
    finally:
        services.close()


def test_sleep_and_wake_from_the_serve_tab(fake_services: Services, model_root: Path, catalog: Catalog) -> None:
    """The buttons fit the state (Sleep when READY, Wake when asleep) and the messages read in the page's
    language, with the state words worded too."""
    servers = fake_services.servers
    server_id = start_ready(fake_services, model_root / MODEL_NAME)
    handlers = ServeHandlers(servers, fake_services.roots, catalog)
    interactive = [b.interactive for b in handlers.controls(server_id)]
    assert interactive[4:] == [True, False]  # sleep, wake
    slept = handlers.sleep_server(server_id, ZH)
    assert slept.startswith(f"服务 `{server_id}` 已休眠") and servers.get(server_id).state == "SLEEPING"
    assert [b.interactive for b in handlers.controls(server_id)][2:] == [False, False, False, True]
    again = handlers.sleep_server(server_id, EN)
    assert again == catalog.text("errors.server_state", "en", id=server_id, state="Sleeping", needs="Ready")
    assert "Sleeping" in handlers.list_servers(EN).to_string()
    assert handlers.wake_server(server_id, EN).startswith(f"Server `{server_id}` is awake again")
    assert servers.get(server_id).state == "READY"
