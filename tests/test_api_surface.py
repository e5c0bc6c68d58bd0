"""The public API is exactly what the README documents, its scripting example runs as written, and a bad value
sent through the API is refused with a message that names the field (nothing is started or stored)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gradio_client import Client

from tests.conftest import children
from tests.test_scripting import client  # noqa: F401 - the launched console (stand-in api_server), a fixture
from webui.services.quantize_spec import sample_corpus
from webui.services.serve_spec import suggest_port
from webui.ui.quantize_tab import QUANTIZE_FORM, QuantizeValues
from webui.ui.serve_tab import SERVE_FORM, ServeValues

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Scripting with `gradio_client`"
ZH_SECTION = "## 脚本调用"
FRACTION = "KV cache memory fraction (--cache-max-entry-count)"


def section(readme: Path, heading: str) -> str:
    text = readme.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end != -1 else None]


def documented_names(text: str, lead: str) -> list[str]:
    """The names in the sentence that lists the API (`lead` starts it; it ends at the first full stop after a name)."""
    match = re.search(re.escape(lead) + r"(.*?`)[.。）)]", text, re.S)
    assert match, f"no sentence starting {lead!r}"
    return re.findall(r"`([a-z_]+)`", match.group(1))


def readme_names() -> list[str]:
    return documented_names(section(REPO / "README.md", SECTION), "Every action has a stable API name:")


def readme_example() -> str:
    match = re.search(r"```python\n(.*?)```", section(REPO / "README.md", SECTION), re.S)
    assert match, "the scripting section has no python block"
    return match.group(1)


def public_names(api: Client) -> set[str]:
    return set(api.view_api(print_info=False, return_format="dict")["named_endpoints"])


def test_view_api_lists_exactly_the_readme_names(client) -> None:  # noqa: F811
    api, _ = client
    names = readme_names()
    assert len(names) == len(set(names)) >= 19
    assert public_names(api) == {f"/{n}" for n in names}


def test_the_chinese_readme_lists_the_same_names() -> None:
    zh = documented_names(section(REPO / "README_zh.md", ZH_SECTION), "每个操作都有稳定的 API 名称（")
    assert zh == readme_names()


def test_form_endpoints_take_the_form_fields_with_defaults(client) -> None:  # noqa: F811
    """The parameters are the values' field names, in order; only model_path has no default."""
    api, _ = client
    endpoints = api.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name, values in (("/start_server", ServeValues), ("/preview_command", ServeValues),
                         ("/submit_quantize", QuantizeValues), ("/preflight_quantize", QuantizeValues)):
        parameters = endpoints[name]["parameters"]
        assert [p["parameter_name"] for p in parameters] == [f.name for f in fields(values)], name
        assert [p["parameter_name"] for p in parameters if not p["parameter_has_default"]] == ["model_path"], name
    quantize = {p["parameter_name"]: p["parameter_default"] for p in endpoints["/submit_quantize"]["parameters"]}
    assert quantize["calib_source"] == "sample" and quantize["calib_paths"] == ""


def test_one_field_given_the_rest_defaulted_and_the_request_still_injected(client, model_root: Path) -> None:  # noqa: F811
    api, _ = client
    model = str(model_root / "tiny llama; echo pwned")
    command, status = api.predict(model_path=model, tp=2, api_name="/preview_command")
    assert "--tp 2" in command and "--backend turbomind" in command
    command, _ = api.predict(model_path=model, gpus=1, api_name="/preview_command")  # a number is a list of one
    assert command.startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1 lmdeploy serve api_server ")
    command, _ = api.predict(model_path=model, backend="pytorch", tp=2, gpus="0,1", executor="mp",
                             api_name="/preview_command")
    assert "CUDA_VISIBLE_DEVICES=0,1 " in command and "--distributed-executor-backend mp" in command
    command, _ = api.predict(model_path=model, backend="pytorch", tp=2, gpus=[1, 0], api_name="/preview_command")
    assert command.startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1,0 lmdeploy"), (command, _)
    zh = Client(api.src, headers={"Accept-Language": "zh-CN,zh;q=0.9"}, verbose=False)
    try:
        _, status = zh.predict(model_path=model, port="abc", api_name="/preview_command")
        assert "端口" in status and "不是整数" in status  # the page's language comes from gr.Request
    finally:
        zh.close()


def test_the_form_takes_components_by_name_and_values_as_sent() -> None:
    """The inputs follow the values' fields whatever order the holder has; a missing one fails at build."""
    names = [f.name for f in fields(ServeValues)]
    holder = SimpleNamespace(**{name: f"component {name}" for name in reversed(names)})
    assert SERVE_FORM.inputs(holder) == [f"component {name}" for name in names]
    del holder.tp
    with pytest.raises(TypeError, match="missing \\['tp'\\]"):
        SERVE_FORM.inputs(holder)

    parsed = SERVE_FORM.parse({"model_path": " m ", "tp": "2", "port": 23333.0, "eager_mode": "true",
                               "cache_max_entry_count": "0.4", "host": " ::1 ", "session_len": None})
    assert parsed.errors == () and parsed.values == ServeValues(
        model_path=" m ", tp=2, port=23333, eager_mode=True, cache_max_entry_count=0.4, host="::1")
    assert parsed.values.to_spec().model_path == "m"
    refused = SERVE_FORM.parse({"model_path": "m", "tp": 1.5, "port": True, "api_keys": ["k"]})
    assert [(e.field, e.key) for e in refused.errors] == [
        ("tp", "errors.not_whole_number"), ("port", "errors.not_whole_number"), ("api_keys", "errors.not_text")]
    assert refused.values.tp == 1 and refused.values.port == ServeValues.port  # a refused value holds its default
    files = QUANTIZE_FORM.parse({"model_path": "m", "calib_paths": "a.txt\n" + "x" * 300 + ".txt"})
    assert [(e.field, e.key) for e in files.errors] == [("calib_files", "errors.path_too_long")]




def test_bad_values_are_refused_by_field(client, model_root: Path) -> None:  # noqa: F811
    """Values Gradio used to refuse with its own words (or crash on) get the form's message naming the field."""
    api, services = client
    model = str(model_root / "tiny llama; echo pwned")
    before = children()
    serve = {"model_path": model, "backend": "pytorch", "port": suggest_port(33100)}
    for change, label, words in (
        ({"port": "abc"}, "Port", "is not a whole number"),
        ({"tp": -1}, "Tensor parallel (GPUs)", "power of two"),
        ({"cache_max_entry_count": 1.5}, FRACTION, "outside (0, 1)"),
        ({"cache_max_entry_count": "lots"}, FRACTION, "is not a number"),
        ({"model_path": "/" + "m" * 100_000}, "Model", "too long"),
        ({"host": "not a host!"}, "Listen address", "not an IP address or host name"),
        ({"model_name": "tiny\x00"}, "Served model name", "NUL"),
        ({"gpus": "0,0"}, "GPUs", "names a GPU twice"),
        ({"gpus": ["0"]}, "GPUs", "not a list"),
        ({"executor": "fast"}, "Executor (tp > 1, PyTorch)", "is not one of"),
    ):
        message, server_id, _ = api.predict(**{**serve, **change}, api_name="/start_server")
        assert server_id == "" and f"**{label}**" in message and words in message, (change, message[:300])
        assert len(message) < 2_000  # a huge value is not echoed back
        command, status = api.predict(**{**serve, **change}, api_name="/preview_command")
        assert f"**{label}**" in status and words in status, (change, status[:300])

    quantize = {"model_path": model, "calib_source": "none", "device": "cpu"}
    _, command = api.predict(**quantize, w_bits="8", api_name="/preflight_quantize")
    assert "--w-bits 8" in command  # "8" is 8
    for change, label, words in (
        ({"calib_source": "hub", "calib_dataset": "ptb"}, "Dataset", "is not one of"),
        ({"output_dir": "/" + "o" * 5_000}, "Output folder", "too long"),
        ({"model_path": "/" + "m" * 100_000}, "Model", "too long"),
        ({"w_bits": "eight"}, "Weight bits", "is not a whole number"),
        ({"calib_samples": 12.5}, "Samples", "is not a whole number"),
        ({"w_sym": "maybe"}, "Symmetric", "neither true nor false"),
        ({"calib_source": "files", "calib_paths": "/tmp/a\x00b"}, "Calibration files", "NUL"),
    ):
        message, job_id = api.predict(**{**quantize, **change}, api_name="/submit_quantize")
        assert job_id == "" and f"**{label}**" in message and words in message, (change, message[:300])
        status, command = api.predict(**{**quantize, **change}, api_name="/preflight_quantize")
        assert command == "" and f"**{label}**" in status and words in status, (change, status[:300])

    assert services.servers.snapshots() == [] and services.jobs.snapshots() == []  # nothing stored
    assert children() <= before  # nothing spawned


def test_json_endpoints_name_a_bad_number(client) -> None:  # noqa: F811
    api, _ = client
    chat = api.predict(message="hi", temperature="hot", api_name="/chat")
    assert chat["error"]["kind"] == "bad_request" and "temperature: “hot” is not a number" in chat["error"]["message"]
    run = api.predict(prompt="x", max_steps="many", api_name="/run_tools")
    assert run["error"]["kind"] == "bad_request"
    assert "max_steps: “many” is not a whole number" in run["error"]["message"]
    plan = api.predict(model="InternLM2.5 7B", tp="two", api_name="/plan_memory")
    assert plan["error"].startswith("tp: “two” is not a whole number")
    assert "error" not in api.predict(model="InternLM2.5 7B", tp="1", gpu_memory_mib="24576", api_name="/plan_memory")


@pytest.fixture
def calibration_file(model_root: Path) -> Path:
    """A real .jsonl under the model root, long enough for the README's 128 samples × 2048 tokens."""
    path = model_root / "calibration.jsonl"
    topics = [part for part in sample_corpus().split("\n\n") if part.strip()]
    lines = [json.dumps({"text": part}) for part in topics * 3]  # about 3 × 112k tokens of the tiny tokenizer
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def substitutions(api: Client, model_root: Path, calibration: Path) -> list[tuple[str, str, str]]:
    """(what the README says, what this test runs, why it must change); nothing else is touched."""
    return [
        ('Client("http://127.0.0.1:7860/")', f'Client("{api.src}")',
         "the test console listens on a free port, not 7860 (another console may run here)"),
        ('"/root/models/internlm2_5-7b-chat"', json.dumps(str(model_root / "tiny llama; echo pwned")),
         "no 7B model here: the tiny test model, under the model root the test console was given"),
        ('"/root/models/my-calibration.jsonl"', json.dumps(str(calibration)),
         "a real .jsonl that the test writes under the model root"),
        ('device="cuda"', 'device="cpu"', "this machine has no GPU; AWQ runs on the CPU for the tiny model"),
        ("port=23333", f"port={suggest_port(33300)}", "23333 may be taken on a shared machine"),
    ]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any], Any]]]:
    """Every Client.predict the README's code makes: (api_name, arguments, result)."""
    calls: list[tuple[str, dict[str, Any], Any]] = []
    predict = Client.predict

    def recording(self: Client, *args: Any, api_name: str | None = None, **kwargs: Any) -> Any:
        result = predict(self, *args, api_name=api_name, **kwargs)
        calls.append((str(api_name), kwargs, result))
        return result

    monkeypatch.setattr(Client, "predict", recording)
    yield calls


def succeeded(api_name: str, result: Any) -> bool:
    """What a successful answer of each endpoint looks like (refusals come back as messages, not exceptions)."""
    checks = {
        "/start_server": lambda r: r[1] != "" and "Started server" in r[0],
        "/list_servers": lambda r: isinstance(r, list) and r,
        "/server_log": lambda r: "Uvicorn running" in r,
        "/chat": lambda r: "error" not in r and r["reply"].strip() and r["stats"]["completion_tokens"] > 0,
        "/run_tools": lambda r: r["error"] is None and r["done"],
        "/stop_server": lambda r: "Stopp" in r,
        "/submit_quantize": lambda r: r[1] != "" and "started" in r[0],
        "/job_progress": lambda r: r["state"] in ("QUEUED", "RUNNING", "SUCCEEDED"),
        "/gpu_snapshot": lambda r: isinstance(r, dict) and "devices" in r,
        "/gpu_history": lambda r: isinstance(r, list),
        "/plan_memory": lambda r: "error" not in r and r["tokens"] > 0,
    }
    return bool(checks[api_name](result))


@pytest.mark.engine
def test_the_readme_example_runs_as_written(client, model_root: Path, calibration_file: Path,  # noqa: F811
                                           recorded: list[tuple[str, dict[str, Any], Any]]) -> None:
    api, services = client
    code = readme_example()
    for old, new, why in substitutions(api, model_root, calibration_file):
        assert old in code, f"the README no longer has {old} ({why}): update this test"
        code = code.replace(old, new)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    try:
        exec(compile(code, "README.md: Scripting with gradio_client", "exec"), namespace)  # noqa: S102
    finally:
        if isinstance(namespace.get("console"), Client):
            namespace["console"].close()
        for job in services.jobs.snapshots():  # the job calibrates for a while; the example does not wait for it
            if job.state in ("QUEUED", "RUNNING"):
                services.jobs.cancel(job.id)
    assert {name for name, _, _ in recorded} == set(re.findall(r'api_name="(/\w+)"', code))  # every call ran
    failed = [(name, kwargs, str(result)[:300]) for name, kwargs, result in recorded if not succeeded(name, result)]
    assert not failed, failed
    deadline = time.monotonic() + 30
    server_id = namespace["server_id"]
    while next(s for s in services.servers.snapshots() if s.id == server_id).state != "STOPPED":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_the_example_covers_the_form_endpoints() -> None:
    """The README's calls name every parameter of the forms (so a renamed field cannot go unnoticed)."""
    code = readme_example()
    for api_name, values in (("/start_server", ServeValues), ("/submit_quantize", QuantizeValues)):
        call = re.search(r"console\.predict\(((?:(?!console\.predict).)*?)api_name=\"" + api_name + '"', code, re.S)
        assert call, api_name
        assert re.findall(r"(\w+)=", call.group(1)) == [f.name for f in fields(values)], api_name
