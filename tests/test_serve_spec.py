"""Server spec checks and argv building: every bad input is refused with a message that names the field."""

from __future__ import annotations

import json
import shlex
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import ipv6_loopback
from webui.services.models import ModelRoots, read_model_info
from webui.services.serve_spec import (
    CheckedSpec,
    FieldError,
    ServerSpec,
    build_argv,
    check_spec,
    cli_args,
    command_preview,
    kv_head_dim,
    on_another_machine,
    split_extra_args,
    suggest_port,
)
from webui.settings import lan_address


def free_port() -> int:
    return suggest_port(30000)


@pytest.fixture
def roots(model_root: Path) -> ModelRoots:
    return ModelRoots([model_root])


@pytest.fixture
def good(model_root: Path) -> ServerSpec:
    return ServerSpec(model_path=str(model_root / "tiny llama; echo pwned"), backend="pytorch", port=free_port())


def errors_of(spec: ServerSpec, roots: ModelRoots, gpus: int | None = 1) -> dict[str, str]:
    result = check_spec(spec, roots, gpus)
    assert isinstance(result, list), "expected the spec to be refused"
    return {e.field: e.key for e in result}


def test_good_spec_passes_and_keeps_odd_path_as_one_argument(good: ServerSpec, roots: ModelRoots) -> None:
    checked = check_spec(good, roots, usable_gpus=1)
    assert isinstance(checked, CheckedSpec)
    argv = build_argv(checked, sys.executable)
    assert argv[:5] == [sys.executable, "-m", "lmdeploy", "serve", "api_server"]
    assert argv[5] == str(checked.model_dir)  # the real folder, one argv element
    assert "--server-name" in argv and argv[argv.index("--server-name") + 1] == "127.0.0.1"
    assert argv[argv.index("--log-level") + 1] == "INFO"
    assert argv[argv.index("--cache-max-entry-count") + 1] == "0.8"


def test_preview_round_trips_through_a_shell_split(good: ServerSpec) -> None:
    spec = replace(good, model_path="/models/my model; rm -rf ~", api_keys=("sk-secret",),
                   kv_policy="int4", tool_call_parser="qwen", extra_args="--enable-prefix-caching")
    preview = command_preview(spec)
    assert "sk-secret" not in preview
    assert preview.count("\\\n") >= 8  # one option a line, joined by shell line continuations
    words = shlex.split(preview.replace("\\\n", " "))
    assert words[:4] == ["lmdeploy", "serve", "api_server", "/models/my model; rm -rf ~"]
    assert words[words.index("--quant-policy") + 1] == "4"
    assert words[words.index("--api-keys") + 1] == "<API_KEY>"
    assert words[-1] == "--enable-prefix-caching"
    assert cli_args(spec, spec.model_path)[cli_args(spec, spec.model_path).index("--api-keys") + 1] == "sk-secret"


@pytest.mark.parametrize(
    ("change", "field", "key"),
    [
        ({"model_path": ""}, "model_path", "errors.model_required"),
        ({"backend": "vllm"}, "backend", "errors.choice"),
        ({"model_format": "gguf"}, "model_format", "errors.choice"),
        ({"kv_policy": "int2"}, "kv_policy", "errors.choice"),
        ({"kv_policy": "fp8", "backend": "turbomind"}, "kv_policy", "errors.kv_policy_needs_pytorch"),
        ({"kv_policy": "turbo_quant", "backend": "turbomind"}, "kv_policy", "errors.kv_policy_needs_pytorch"),
        ({"kv_policy": "turbo_quant", "extra_args": "--speculative-algorithm eagle3"}, "kv_policy",
         "errors.kv_policy_speculative"),
        ({"cache_max_entry_count": 0.0}, "cache_max_entry_count", "errors.fraction_range"),
        ({"cache_max_entry_count": 1.0}, "cache_max_entry_count", "errors.fraction_range"),
        ({"cache_max_entry_count": 80.0}, "cache_max_entry_count", "errors.fraction_range"),
        ({"session_len": -1}, "session_len", "errors.int_range"),
        ({"session_len": 10**12}, "session_len", "errors.int_range"),
        ({"max_batch_size": 10**9}, "max_batch_size", "errors.int_range"),
        ({"tp": 3}, "tp", "errors.tp_power_of_two"),
        ({"tp": 0}, "tp", "errors.tp_power_of_two"),
        ({"tp": 2}, "tp", "errors.tp_too_large"),
        ({"port": 80}, "port", "errors.port_range"),
        ({"port": 70000}, "port", "errors.port_range"),
        ({"host": "0.0.0.0"}, "host", "errors.server_open_without_key"),
        ({"tool_call_parser": "hermes"}, "tool_call_parser", "errors.choice"),
        ({"model_name": " spaced "}, "model_name", "errors.model_name_space"),
        ({"extra_args": "--chat-template 'unclosed"}, "extra_args", "errors.extra_unparsable"),
        ({"extra_args": "--tp 2"}, "extra_args", "errors.extra_form_flag"),
        ({"extra_args": "--no-such-flag"}, "extra_args", "errors.extra_unknown_flag"),
        ({"extra_args": "rm -rf /"}, "extra_args", "errors.extra_not_flag"),
        ({"extra_args": "--dtype"}, "extra_args", "errors.extra_needs_value"),
        ({"extra_args": "--ssl=yes"}, "extra_args", "errors.extra_no_value"),
    ],
)
def test_bad_fields_are_named(good: ServerSpec, roots: ModelRoots, change: dict, field: str, key: str) -> None:
    assert errors_of(replace(good, **change), roots).get(field) == key


def test_turbo_quant_is_policy_42_on_pytorch(good: ServerSpec, roots: ModelRoots) -> None:
    spec = replace(good, kv_policy="turbo_quant")
    checked = check_spec(spec, roots, 1)
    assert isinstance(checked, CheckedSpec)  # the tiny Llama's head dim is 128
    argv = build_argv(checked, sys.executable)
    assert argv[argv.index("--quant-policy") + 1] == "42" and argv[argv.index("--backend") + 1] == "pytorch"
    refused = check_spec(replace(spec, backend="turbomind"), roots, 1)
    assert [(e.field, e.key, e.params) for e in refused] == [
        ("kv_policy", "errors.kv_policy_needs_pytorch", {"policy": "turbo_quant"})]


def test_turbo_quant_needs_a_power_of_two_head_dim(good: ServerSpec, roots: ModelRoots, model_root: Path,
                                                   tiny_model_dir: Path) -> None:
    odd = model_root / "head-dim-96"
    odd.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "head_dim": 96}))
    spec = replace(good, model_path=str(odd), kv_policy="turbo_quant")
    refused = check_spec(spec, roots, 1)
    assert [(e.field, e.key, e.params) for e in refused] == [
        ("kv_policy", "errors.kv_policy_head_dim", {"policy": "turbo_quant", "head_dim": "96"})]
    assert isinstance(check_spec(replace(spec, kv_policy="int4"), roots, 1), CheckedSpec)
    mla = {"num_hidden_layers": 2, "hidden_size": 1024, "num_attention_heads": 8, "kv_lora_rank": 512,
           "qk_rope_head_dim": 64}
    assert kv_head_dim(mla) == 576 and kv_head_dim({"text_config": config}) == 128 and kv_head_dim({}) is None


def test_open_host_is_allowed_with_a_key(good: ServerSpec, roots: ModelRoots) -> None:
    assert isinstance(check_spec(replace(good, host="0.0.0.0", api_keys=("k1",)), roots, 1), CheckedSpec)


def test_tp_is_only_shape_checked_without_nvml(good: ServerSpec, roots: ModelRoots) -> None:
    assert isinstance(check_spec(replace(good, tp=4), roots, None), CheckedSpec)
    assert errors_of(replace(good, tp=2), roots, gpus=0) == {"tp": "errors.tp_too_large"}


def test_model_paths_outside_roots_are_refused(tmp_path: Path, good: ServerSpec, roots: ModelRoots,
                                               model_root: Path, tiny_model_dir: Path) -> None:
    escape = str(model_root / ".." / ".." / "elsewhere")
    assert errors_of(replace(good, model_path=escape), roots)["model_path"] == "errors.path_outside_roots"
    outside = tmp_path / "outside-model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (model_root / "sneaky").symlink_to(outside)
    assert errors_of(replace(good, model_path=str(model_root / "sneaky")), roots)["model_path"] == (
        "errors.path_outside_roots"
    )
    assert errors_of(replace(good, model_path=str(model_root / "nope")), roots)["model_path"] == "errors.model_missing"
    (model_root / "empty").mkdir()
    assert errors_of(replace(good, model_path=str(model_root / "empty")), roots)["model_path"] == (
        "errors.model_no_config"
    )
    (model_root / "file.bin").write_text("x")
    assert errors_of(replace(good, model_path=str(model_root / "file.bin")), roots)["model_path"] == (
        "errors.model_not_folder"
    )
    broken = model_root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert errors_of(replace(good, model_path=str(broken)), roots)["model_path"] == "errors.model_bad_config"


def test_port_in_use_is_refused(good: ServerSpec, roots: ModelRoots) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        assert errors_of(replace(good, port=busy), roots)["port"] == "errors.port_in_use"
        assert suggest_port(busy) != busy
    result = check_spec(good, roots, 1, ports_claimed={good.port})
    assert isinstance(result, list) and result[0] == FieldError("port", "errors.port_claimed", {"port": str(good.port)})


def test_extra_args_pass_through_intact() -> None:
    text = "--enable-prefix-caching --allow-origins a b --dtype=float16 --chat-template '/x y.json'"
    assert split_extra_args(text) == [
        "--enable-prefix-caching", "--allow-origins", "a", "b", "--dtype=float16", "--chat-template", "/x y.json",
    ]
    assert split_extra_args("") == []


def test_discovery_and_parser_suggestion(roots: ModelRoots, model_root: Path, tiny_model_dir: Path) -> None:
    (model_root / "notes").mkdir()
    (model_root / "notes" / "config.json").write_text("{}")  # a config without weights is not a model
    found = roots.discover()
    assert found == [(model_root / "tiny llama; echo pwned").resolve()]
    info = read_model_info(found[0])
    assert info.architecture == "LlamaForCausalLM"
    assert info.suggested_parser == ""  # vocab 4096: not a Llama 3, so no parser is guessed
    assert replace(info, config={**info.config, "vocab_size": 128256}).suggested_parser == "llama3"
    assert replace(info, architecture="Qwen2ForCausalLM").suggested_parser == "qwen2d5"
    assert replace(info, architecture="InternLM2ForCausalLM").suggested_parser == "internlm"


def test_spec_json_round_trip(good: ServerSpec) -> None:
    spec = replace(good, api_keys=("a", "b"))
    assert ServerSpec.from_json_dict(spec.to_json_dict()) == spec
    assert ServerSpec.from_json_dict({**spec.to_json_dict(), "future_field": 1}) == spec


def test_a_taken_port_and_a_foreign_host_are_told_apart(good: ServerSpec, roots: ModelRoots) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert errors_of(replace(good, port=port), roots) == {"port": "errors.port_in_use"}
    # TEST-NET-1 is no address of this machine: nothing could listen there, whatever the port
    foreign = replace(good, host="192.0.2.1", api_keys=("sk-1",))
    assert errors_of(foreign, roots) == {"host": "errors.host_not_here"}


def test_only_an_address_none_of_this_machines_is_another_machine() -> None:
    """Compare leaves out the GPUs of a server attached at another machine's address; anything in doubt stays here."""
    assert on_another_machine("198.51.100.7") and on_another_machine("[2001:db8::7]")
    for here in ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0", "::", "gpu-box.example", ""):
        assert not on_another_machine(here), here  # names are not resolved: no DNS wait, and no GPU left out
    lan = lan_address()
    assert lan == "127.0.0.1" or not on_another_machine(lan)  # this machine's own network address


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_ipv6_addresses_are_bound_as_ipv6(good: ServerSpec, roots: ModelRoots) -> None:
    for host in ("::1", "[::1]"):
        checked = check_spec(replace(good, host=host), roots, 1)
        assert isinstance(checked, CheckedSpec), checked
        argv = build_argv(checked, sys.executable)
        assert argv[argv.index("--server-name") + 1] == "::1"  # uvicorn binds an address, not a URL's host
        assert checked.spec.base_url == f"http://[::1]:{good.port}"
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        in_use = replace(good, host="::1", port=taken.getsockname()[1])
        assert errors_of(in_use, roots) == {"port": "errors.port_in_use"}
    for foreign in ("2001:db8::1", "fe80::dead:beef"):  # documentation prefix; link-local without its %interface
        assert errors_of(replace(good, host=foreign, api_keys=("sk-1",)), roots) == {"host": "errors.host_not_here"}
