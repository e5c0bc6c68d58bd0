"""What a user asks of `lmdeploy serve api_server`, checked, and turned into an argv list (never a shell line)."""

from __future__ import annotations

import errno
import ipaddress
import shlex
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webui.services.field_errors import FieldError
from webui.services.models import ModelInfo, ModelRoots, PathProblem, read_model_info
from webui.services.placement import (
    EXECUTORS,
    UsableGpus,
    check_gpus,
    env_prefix,
    parse_gpus,
    placement_env,
    resolve_executor,
    usable_of,
)
from webui.settings import host_port, is_loopback

BACKENDS = ("turbomind", "pytorch")
MODEL_FORMATS = ("auto", "hf", "awq", "gptq")
# label value -> LMDeploy's --quant-policy number; the labels are LMDeploy's own names (QuantPolicy).
KV_POLICIES = MappingProxyType({"none": 0, "int8": 8, "int4": 4, "fp8": 16, "fp8_e5m2": 17, "turbo_quant": 42})
# Only the PyTorch engine has these: TurbomindEngineConfig refuses fp8, and TurboMind has no TurboQuant kernels
# (its C++ tests the policy for the int8/int4 bits only, and 42 has the int8 bit set).
PYTORCH_ONLY_POLICIES = frozenset({"fp8", "fp8_e5m2", "turbo_quant"})
# TurboQuant (K 4-bit, V 2-bit) rotates K and V with a Hadamard transform, which needs a power-of-two head dim
# (kernels/cuda/fill_kv_cache.py), and cannot decode several tokens a step (FA3 speculative decoding refuses it).
HADAMARD_POLICIES = frozenset({"turbo_quant"})
TOOL_CALL_PARSERS = (
    "internlm", "intern-s1", "interns2-preview", "qwen", "qwen2d5", "qwen3", "qwen3coder", "llama3",
    "glm47", "deepseek-v32", "deepseek-v4", "kimi_k2", "kimi-k2",
)
DEFAULT_PORT = 23333
MAX_SESSION_LEN = 10_000_000
MAX_BATCH_SIZE = 65_536
MAX_TP = 64
# Architectures LMDeploy 0.18.0 serves: the PyTorch engine's MODULE_MAP (lmdeploy/pytorch/models/module_map.py)
# and TurboMind's SUPPORTED_ARCHS (lmdeploy/turbomind/supported_models.py). With --backend turbomind, LMDeploy
# falls back to the PyTorch engine for a model TurboMind lacks, so only a model neither knows is refused.
PYTORCH_ARCHITECTURES = frozenset({
    "ChatGLMForConditionalGeneration", "CogVLMForCausalLM", "DFlashDraftModel", "DeepseekForCausalLM",
    "DeepseekMTPModel", "DeepseekV2ForCausalLM", "DeepseekV32ForCausalLM", "DeepseekV32MTPModel",
    "DeepseekV3ForCausalLM", "DeepseekV4ForCausalLM", "DeepseekVLV2ForCausalLM", "Eagle3DeepseekV2ForCausalLM",
    "Eagle3LlamaForCausalLM", "EagleLlamaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration", "GemmaForCausalLM", "Glm4ForCausalLM", "Glm4MoeForCausalLM",
    "Glm4MoeLiteForCausalLM", "Glm4MoeMTPModel", "Glm4vForConditionalGeneration", "GlmMoeDsaForCausalLM",
    "GlmMoeDsaMTPModel", "GptOssForCausalLM", "HYV3ForCausalLM", "HYV3MTP", "InternLM2ForCausalLM",
    "InternLM2ForRewardModel", "InternLM3ForCausalLM", "InternS1ForConditionalGeneration",
    "InternS1ProForConditionalGeneration", "InternS1_1_ForConditionalGeneration", "InternS2MobiusForCausalLM",
    "InternS2MobiusForConditionalGeneration", "InternS2PreviewForCausalLM",
    "InternS2PreviewForConditionalGeneration", "InternVLChatModel", "InternVLForConditionalGeneration",
    "KimiK25ForConditionalGeneration", "Kimi_K25ForConditionalGeneration", "Llama4ForConditionalGeneration",
    "LlamaForCausalLM", "LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
    "MetaMoeForConditionalGeneration", "MiniCPM3ForCausalLM", "MiniCPMV", "MistralForCausalLM",
    "MixtralForCausalLM", "Phi3ForCausalLM", "Phi3VForCausalLM", "PhiMoEForCausalLM", "Qwen2ForCausalLM",
    "Qwen2ForRewardModel", "Qwen2MoeForCausalLM", "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen3NextForCausalLM",
    "Qwen3OmniMoeForConditionalGeneration", "Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration", "Qwen3_5MTPModel", "Qwen3_5MoeForConditionalGeneration", "SDARForCausalLM",
    "SDARMoeForCausalLM"
})
TURBOMIND_ARCHITECTURES = frozenset({
    "Glm4MoeLiteForCausalLM", "GptOssForCausalLM", "InternLM2ForCausalLM", "InternLM3ForCausalLM",
    "InternS1ForConditionalGeneration", "InternS2MobiusForConditionalGeneration",
    "InternS2PreviewForConditionalGeneration", "InternVLChatModel", "InternVLForConditionalGeneration",
    "LlamaForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM",
    "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration", "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM", "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"
})
# Lengths past which a value is a mistake (or an attack), refused before anything is stored or spawned:
# PATH_MAX for paths, and a few kB for the rest, far below the OS's argument-list limit.
MAX_PATH_CHARS = 4096
MAX_EXTRA_ARGS_CHARS = 4096
MAX_NAME_CHARS = 256
MAX_KEYS_CHARS = 4096

# Flags the form owns: typing them again in "extra arguments" would fight the form.
FORM_FLAGS = frozenset({
    "--server-name", "--server-port", "--backend", "--model-format", "--quant-policy",
    "--cache-max-entry-count", "--session-len", "--max-batch-size", "--tp", "--model-name", "--api-keys",
    "--tool-call-parser", "--eager-mode", "--log-level", "--distributed-executor-backend",
})
# Other `lmdeploy serve api_server` options (0.18.0 --help) that may be passed through, with whether
# they take a value. Anything else is refused before a process is started.
EXTRA_FLAGS: Mapping[str, bool] = MappingProxyType({
    "--allow-origins": True, "--allow-credentials": False, "--allow-methods": True, "--allow-headers": True,
    "--proxy-url": True, "--max-concurrent-requests": True, "--allowed-media-domains": True, "--ssl": False,
    "--max-log-len": True, "--disable-fastapi-docs": False, "--allow-terminate-by-client": False,
    "--enable-abort-handling": False, "--trust-remote-code": False, "--chat-template": True,
    "--reasoning-parser": True, "--revision": True, "--download-dir": True, "--generation-config": True,
    "--adapters": True, "--device": True, "--empty-init": False, "--logprobs-mode": True,
    "--kernel-block-size": True, "--language-model-only": False,
    "--dtype": True, "--num-gpu-blocks": True, "--cache-block-seq-len": True,
    "--enable-prefix-caching": False, "--max-prefill-token-num": True, "--hf-overrides": True,
    "--disable-metrics": False, "--dp": True, "--ep": True, "--enable-microbatch": False,
    "--enable-eplb": False, "--role": True, "--migration-backend": True,
    "--cudagraph-capture-batch-sizes": True, "--piecewise-cudagraph-max-tokens": True,
    "--node-rank": True, "--nnodes": True, "--cp": True, "--rope-scaling-factor": True,
    "--num-tokens-per-iter": True, "--max-prefill-iters": True, "--async": True, "--communicator": True,
    "--moe-a2a-backend": True, "--dist-init-addr": True, "--vision-max-batch-size": True,
    "--speculative-algorithm": True, "--speculative-draft-model": True,
    "--speculative-num-draft-tokens": True, "--speculative-dflash-block-size": True,
    "--kv-transfer-config": True,
})


@dataclass(frozen=True)
class ServerSpec:
    """User intent for one api_server, as plain values (JSON-able, so it is stored as given)."""

    model_path: str
    backend: str = "turbomind"
    model_format: str = "auto"
    kv_policy: str = "none"
    cache_max_entry_count: float = 0.8
    session_len: int = 0
    max_batch_size: int = 0
    tp: int = 1
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    model_name: str = ""
    api_keys: tuple[str, ...] = ()
    tool_call_parser: str = ""
    eager_mode: bool = False
    extra_args: str = ""
    gpus: tuple[int, ...] = ()  # () = every GPU visible, as without the console
    executor: str = "auto"  # PyTorch engine with tp > 1: auto (LMDeploy's choice, mp without ray) / mp / ray

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["api_keys"] = list(self.api_keys)
        data["gpus"] = list(self.gpus) if isinstance(self.gpus, tuple) else self.gpus
        return data

    @property
    def gpu_list(self) -> tuple[int, ...]:
        """The chosen GPUs as numbers (a form or a script may give "0,1"); () when none or unreadable."""
        gpus = parse_gpus(self.gpus)
        return gpus if isinstance(gpus, tuple) else ()

    def env(self, usable: UsableGpus | None = None) -> dict[str, str]:
        """What the server's environment adds to the console's: only its GPUs visible (each named as the console's
        own CUDA_VISIBLE_DEVICES names it, where that limit is given)."""
        return placement_env(self.gpu_list, usable)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ServerSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known.setdefault("model_path", "")
        keys = known.get("api_keys") or ()
        known["api_keys"] = (keys,) if isinstance(keys, str) else tuple(keys)  # one key, never its characters
        if isinstance(known.get("gpus"), list):
            known["gpus"] = tuple(known["gpus"])  # a string ("0,1") stays as typed: check_spec reads or refuses it
        if "executor" not in data and "--distributed-executor-backend" in str(known.get("extra_args") or ""):
            known["extra_args"], known["executor"] = _executor_out_of_extra_args(str(known["extra_args"]))
        return cls(**known)

    @property
    def quant_policy(self) -> int:
        return KV_POLICIES.get(self.kv_policy, 0)

    @property
    def base_url(self) -> str:
        return local_url(self.host, self.port)


def _executor_out_of_extra_args(text: str) -> tuple[str, str]:
    """Specs stored before the form had an Executor passed it in extra arguments, which the form now refuses:
    (extra arguments without it, the executor it named; "auto" for one the form does not offer)."""
    try:
        words = shlex.split(text)
    except ValueError:
        return text, "auto"
    executor, kept, i = "auto", [], 0
    while i < len(words):
        flag, _, value = words[i].partition("=")
        if flag == "--distributed-executor-backend":
            if not value and i + 1 < len(words):
                value, i = words[i + 1], i + 1
            executor = value if value in EXECUTORS else "auto"
        else:
            kept.append(words[i])
        i += 1
    return shlex.join(kept), executor


@dataclass(frozen=True)
class CheckedSpec:
    """A spec that passed every check, with the real model folder it resolved to."""

    spec: ServerSpec
    model_dir: Path


def kv_head_dim(config: Mapping[str, Any]) -> int | None:
    """The K head dim LMDeploy's PyTorch engine caches (configurations/default.py; MLA models cache
    kv_lora_rank + qk_rope_head_dim: deepseek_v2.py), or None when config.json does not say."""
    text = config.get("text_config")
    if "num_hidden_layers" not in config and isinstance(text, Mapping):
        config = text
    try:
        if config.get("kv_lora_rank"):
            return int(config["kv_lora_rank"]) + int(config.get("qk_rope_head_dim") or 0)
        return int(config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def split_extra_args(text: str) -> list[str] | FieldError:
    """Parse the extra-arguments box like a shell would split words (no shell ever runs it)."""
    try:
        words = shlex.split(text or "")
    except ValueError as exc:
        return FieldError("extra_args", "errors.extra_unparsable", {"error": str(exc)})
    i = 0
    while i < len(words):
        word = words[i]
        flag = word.split("=", 1)[0]
        if not flag.startswith("--"):
            return FieldError("extra_args", "errors.extra_not_flag", {"word": word})
        if flag in FORM_FLAGS:
            return FieldError("extra_args", "errors.extra_form_flag", {"flag": flag})
        if flag not in EXTRA_FLAGS:
            return FieldError("extra_args", "errors.extra_unknown_flag", {"flag": flag})
        takes_value = EXTRA_FLAGS[flag]
        if "=" in word:
            if not takes_value:
                return FieldError("extra_args", "errors.extra_no_value", {"flag": flag})
            i += 1
            continue
        i += 1
        if takes_value:
            if i >= len(words) or words[i].startswith("--"):
                return FieldError("extra_args", "errors.extra_needs_value", {"flag": flag})
            while i < len(words) and not words[i].startswith("--"):
                i += 1  # some options take several values (--allow-origins a b)
    return words


def too_long(*fields: tuple[str, str, int]) -> list[FieldError]:
    """A field error for each (name, value, limit) whose value is longer than its limit."""
    return [FieldError(name, "errors.too_long", {"length": f"{len(value):,}", "max": f"{limit:,}"})
            for name, value, limit in fields if len(value or "") > limit]


def listen_host(host: str) -> str:
    """The address as a server binds it: `[::1]` (as URLs write it) is `::1`."""
    return host.strip().strip("[]")


def local_url(host: str, port: int) -> str:
    """Where the console reaches a server listening on host:port (a wildcard is reached on the loopback)."""
    name = listen_host(host)
    if name in ("0.0.0.0", "::", ""):
        name = "127.0.0.1"
    return f"http://{host_port(name, port)}"


def bind_problem(port: int, host: str = "127.0.0.1") -> str | None:
    """None when a server could listen on host:port now (a bind test, so a refused connect is not mistaken for a
    free port); else the catalog key of why not: the port is taken, or the host is no address of this machine.
    IPv6 addresses (`::1`, `[::]`) are bound as IPv6."""
    name = listen_host(host) or "0.0.0.0"
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(name).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind, as uvicorn resolves it
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # no IPv6 on this machine (EAFNOSUPPORT)
        return "errors.host_not_here"
    with sock:
        # As uvicorn does: a port whose last connection lingers in TIME_WAIT is free for a new server.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((name, port))
        except socket.gaierror:
            return "errors.host_not_here"
        except OSError as exc:
            # EINVAL: an address no socket here can take, such as a link-local one without its %interface
            return "errors.host_not_here" if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL) else "errors.port_in_use"
    return None


def on_another_machine(host: str) -> bool:
    """True only for an IP address that is none of this machine's (a bind test, no DNS). A host name, or anything in
    doubt, counts as this machine: a server there may hold this machine's GPUs."""
    name = listen_host(host)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if address.is_loopback or address.is_unspecified:
        return False
    return bind_problem(0, name) == "errors.host_not_here"


def bind_error(problem: str, port: int, host: str) -> FieldError:
    """A bind problem as the form shows it: on the port field when the port is taken, on host when the host is not
    this machine's."""
    if problem == "errors.host_not_here":
        return FieldError("host", problem, {"host": host})
    return FieldError("port", problem, {"port": str(port)})


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port."""
    return bind_problem(port, host) is None


def suggest_port(start: int = DEFAULT_PORT, taken: set[int] | None = None) -> int:
    """First free port from `start` that no other console server claims."""
    taken = taken or set()
    for port in range(start, start + 200):
        if port not in taken and port_is_free(port):
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_spec(
    spec: ServerSpec,
    roots: ModelRoots,
    usable_gpus: UsableGpus | int | None,
    ports_claimed: set[int] | None = None,
    own_port: int | None = None,
) -> CheckedSpec | list[FieldError]:
    """Every reason the spec cannot start, or the checked spec. Nothing is spawned here.

    usable_gpus: the GPUs a server may use (a count means all of that many); None when NVML is absent (then tp
    is checked for shape only). own_port is the port of the
    server being restarted: its own process still holds it and gives it back before the new one starts.
    """
    errors = too_long(
        ("model_path", spec.model_path, MAX_PATH_CHARS), ("extra_args", spec.extra_args, MAX_EXTRA_ARGS_CHARS),
        ("model_name", spec.model_name, MAX_NAME_CHARS), ("host", spec.host, MAX_NAME_CHARS),
        ("api_keys", " ".join(spec.api_keys), MAX_KEYS_CHARS),
    )
    if errors:
        return errors  # nothing else is worth reading in a value of that size
    resolved = roots.resolve(spec.model_path)
    model_dir: Path | None = None
    info: ModelInfo | PathProblem | None = None
    if isinstance(resolved, PathProblem):
        errors.append(FieldError("model_path", resolved.key, resolved.params))
    else:
        model_dir = resolved
        info = read_model_info(resolved)
        if isinstance(info, PathProblem):
            errors.append(FieldError("model_path", info.key, info.params))
        elif info.architecture and info.architecture not in PYTORCH_ARCHITECTURES | TURBOMIND_ARCHITECTURES:
            supported = PYTORCH_ARCHITECTURES if spec.backend == "pytorch" else TURBOMIND_ARCHITECTURES
            errors.append(FieldError("model_path", "errors.serve_architecture", {
                "arch": info.architecture, "backend": spec.backend, "supported": ", ".join(sorted(supported))}))
        elif spec.backend == "pytorch" and info.architecture and info.architecture not in PYTORCH_ARCHITECTURES:
            errors.append(FieldError("model_path", "errors.serve_architecture", {
                "arch": info.architecture, "backend": spec.backend,
                "supported": ", ".join(sorted(PYTORCH_ARCHITECTURES))}))
    choices = (
        ("backend", spec.backend, BACKENDS),
        ("model_format", spec.model_format, MODEL_FORMATS),
        ("kv_policy", spec.kv_policy, tuple(KV_POLICIES)),
        ("tool_call_parser", spec.tool_call_parser or TOOL_CALL_PARSERS[0], TOOL_CALL_PARSERS),
    )
    for name, value, allowed in choices:
        if value not in allowed:
            errors.append(FieldError(name, "errors.choice", {"value": value, "choices": ", ".join(allowed)}))
    if spec.kv_policy in PYTORCH_ONLY_POLICIES and spec.backend != "pytorch":
        errors.append(FieldError("kv_policy", "errors.kv_policy_needs_pytorch", {"policy": spec.kv_policy}))
    elif spec.kv_policy in HADAMARD_POLICIES:
        head_dim = kv_head_dim(info.config) if isinstance(info, ModelInfo) else None
        if head_dim is not None and (head_dim < 4 or head_dim & (head_dim - 1)):
            errors.append(FieldError("kv_policy", "errors.kv_policy_head_dim",
                                     {"policy": spec.kv_policy, "head_dim": str(head_dim)}))
    if not 0.0 < float(spec.cache_max_entry_count) < 1.0:
        errors.append(
            FieldError("cache_max_entry_count", "errors.fraction_range", {"value": str(spec.cache_max_entry_count)})
        )
    if not 0 <= spec.session_len <= MAX_SESSION_LEN:
        errors.append(FieldError("session_len", "errors.int_range", {"min": "0", "max": str(MAX_SESSION_LEN)}))
    if not 0 <= spec.max_batch_size <= MAX_BATCH_SIZE:
        errors.append(FieldError("max_batch_size", "errors.int_range", {"min": "0", "max": str(MAX_BATCH_SIZE)}))
    usable = usable_of(usable_gpus)
    if spec.tp < 1 or spec.tp > MAX_TP or spec.tp & (spec.tp - 1):
        errors.append(FieldError("tp", "errors.tp_power_of_two", {"value": str(spec.tp)}))
    elif usable.count is not None and spec.tp > max(usable.count, 1):
        errors.append(FieldError("tp", "errors.tp_too_large", {"value": str(spec.tp), "gpus": str(usable.count)}))
    gpus = parse_gpus(spec.gpus)
    if isinstance(gpus, FieldError):
        errors.append(gpus)
    else:
        errors += check_gpus(gpus, usable, spec.tp)
    if spec.executor not in EXECUTORS:
        errors.append(FieldError("executor", "errors.choice",
                                 {"value": str(spec.executor), "choices": ", ".join(EXECUTORS)}))
    errors += check_listening(spec.host, spec.port, spec.api_keys, ports_claimed, own_port)
    if spec.model_name and (spec.model_name != spec.model_name.strip() or "\n" in spec.model_name):
        errors.append(FieldError("model_name", "errors.model_name_space", {}))
    extra = split_extra_args(spec.extra_args)
    if isinstance(extra, FieldError):
        errors.append(extra)
    elif spec.kv_policy in HADAMARD_POLICIES and any(w.split("=", 1)[0] == "--speculative-algorithm" for w in extra):
        errors.append(FieldError("kv_policy", "errors.kv_policy_speculative", {"policy": spec.kv_policy}))
    if errors or model_dir is None:
        return errors
    return CheckedSpec(spec=spec, model_dir=model_dir)


def check_listening(host: str, port: int, api_keys: tuple[str, ...], ports_claimed: set[int] | None = None,
                    own_port: int | None = None) -> list[FieldError]:
    """Where a server or the proxy listens, and its keys: a port in range, not another console server's, free
    here (own_port: a restart's own, still held); a host of this machine; a key for a host beyond the loopback
    (LMDeploy's own servers would be open to the network); keys without spaces."""
    errors: list[FieldError] = []
    if not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 65535:  # a script's "8000" too
        errors.append(FieldError("port", "errors.port_range", {"value": str(port)[:40]}))
    elif port in (ports_claimed or set()):
        errors.append(FieldError("port", "errors.port_claimed", {"port": str(port)}))
    elif port != own_port and (problem := bind_problem(port, host)):
        errors.append(bind_error(problem, port, host))
    if not is_loopback(host) and not api_keys:
        errors.append(FieldError("host", "errors.server_open_without_key", {"host": host}))
    if any(not key or any(c.isspace() for c in key) for key in api_keys):
        errors.append(FieldError("api_keys", "errors.api_key_space", {}))
    return errors


def build_argv(checked: CheckedSpec, python: str, ray_ok: bool | None = None) -> list[str]:
    """The exact api_server command as an argv list, started through `python -m lmdeploy` (in spec.env)."""
    return [python, "-m", "lmdeploy", *cli_args(checked.spec, str(checked.model_dir), ray_ok)]


def cli_args(spec: ServerSpec, model_dir: str, ray_ok: bool | None = None) -> list[str]:
    """Arguments after `lmdeploy`: pure, so the preview and the real command cannot drift apart.

    ray_ok: whether `ray` imports in LMDeploy's interpreter (None: unknown), for the executor `auto` resolves to."""
    args = [
        "serve", "api_server", model_dir,
        "--backend", spec.backend,
        "--server-name", listen_host(spec.host),
        "--server-port", str(spec.port),
        "--cache-max-entry-count", _fraction(spec.cache_max_entry_count),
        "--tp", str(spec.tp),
        # INFO prints the start-up phases the Serve tab shows as progress (the default is WARNING).
        "--log-level", "INFO",
    ]
    if spec.model_format != "auto":
        args += ["--model-format", spec.model_format]
    if spec.quant_policy:
        args += ["--quant-policy", str(spec.quant_policy)]
    if spec.session_len:
        args += ["--session-len", str(spec.session_len)]
    if spec.max_batch_size:
        args += ["--max-batch-size", str(spec.max_batch_size)]
    if spec.model_name:
        args += ["--model-name", spec.model_name]
    if spec.tool_call_parser:
        args += ["--tool-call-parser", spec.tool_call_parser]
    if spec.eager_mode:
        args.append("--eager-mode")
    executor, _note = resolve_executor(spec.executor, spec.tp, spec.backend, ray_ok)
    if executor:
        args += ["--distributed-executor-backend", executor]
    if spec.api_keys:
        args += ["--api-keys", *spec.api_keys]
    extra = split_extra_args(spec.extra_args)
    if isinstance(extra, list):
        args += extra
    return args


def command_preview(spec: ServerSpec, model_dir: str | None = None, ray_ok: bool | None = None,
                    usable: UsableGpus | None = None) -> str:
    """The copyable shell form of the command, one option a line, API keys masked (never shown or logged),
    after the environment it runs in (its GPUs)."""
    masked = replace(spec, api_keys=tuple("<API_KEY>" for _ in spec.api_keys))
    args = cli_args(masked, model_dir or spec.model_path or "<model>", ray_ok)
    lines = [env_prefix(spec.env(usable)) + shlex.join(["lmdeploy", *args[:3]])]
    for word in args[3:]:
        if word.startswith("--") or not lines[1:]:
            lines.append(shlex.quote(word))
        else:
            lines[-1] += " " + shlex.quote(word)
    return " \\\n  ".join(lines)


def _fraction(value: float) -> str:
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return text or "0"
