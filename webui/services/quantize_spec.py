"""An AWQ job as the user asks for it, its pre-flight checks and estimates, and the commands that run it."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webui.services.models import ModelInfo, ModelRoots, PathProblem, read_model_info
from webui.services.placement import MAX_GPU_INDEX, UsableGpus, check_gpus, env_prefix, placement_env, usable_of
from webui.services.planner import ModelShape
from webui.services.serve_spec import MAX_NAME_CHARS, MAX_PATH_CHARS, FieldError, too_long

log = logging.getLogger(__name__)

HUB_DATASETS = MappingProxyType({  # LMDeploy 0.18 --calib-dataset name -> the Hugging Face dataset it loads
    "wikitext2": "wikitext",
    "c4": "allenai/c4",
    "pileval": "mit-han-lab/pile-val-backup",
    "gsm8k": "openai/gsm8k",
    "neuralmagic_calibration": "neuralmagic/calibration",
    "open-platypus": "garage-bAInd/Open-Platypus",
    "openwebtext": "Skylion007/openwebtext",
})
CALIB_SOURCES = ("hub", "files", "sample", "none")
DTYPES = ("auto", "float16", "bfloat16")
DEVICES = ("cuda", "cpu")
# What rows written before jobs chose their GPU hold in `resource`: such a job saw GPU 0 first, so it counts there.
LEGACY_RESOURCES = MappingProxyType({"cuda": "cuda:0"})
W_BITS = (4, 8)
W_GROUP_SIZES = (32, 64, 128, 256)
# Architectures LMDeploy 0.18's AWQ knows (lmdeploy/lite/apis/calibrate.py LAYER_TYPE_MAP).
AWQ_ARCHITECTURES = frozenset({
    "InternLM2ForCausalLM", "InternLM3ForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM",
    "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration", "LlamaForCausalLM",
    "LlavaLlamaForCausalLM", "MGMLlamaForCausalLM", "InternS2PreviewForConditionalGeneration", "Phi3ForCausalLM",
    "ChatGLMForConditionalGeneration", "MixtralForCausalLM", "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration", "MistralForCausalLM",
})
MAX_SAMPLES = 4096
MAX_SEQLEN = 131_072
MAX_BATCH = 512
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
AWQ_SEARCH_GRID = 20  # LMDeploy's search-scale tries 20 ratios for each group of linear layers
# Effective floating-point rates of LMDeploy's AWQ passes (far below the hardware's peaks: small batches, fp32 on
# the CPU), fitted to: a 4-layer model, 32×512 tokens with search-scale, 82 s on 2 CPU cores; a 0.7 B model,
# 64×512 tokens smooth-only, 37 s on a GPU, and 128×1024 with search-scale unfinished after 8.5 minutes.
AWQ_FLOPS_PER_S = MappingProxyType({"cuda": 3e12, "cpu": 1e11})
QUANTIZE_S_PER_WEIGHT = MappingProxyType({"cuda": 2e-9, "cpu": 2e-7})
LOAD_BYTES_PER_S = 500e6
PROCESS_BASE_BYTES = 1 << 30  # Python with torch and transformers imported, before any weights (measured)
BYTES_PER_TOKEN_GUESS = 4  # English BPE; used only where no tokenizer.json can count exactly


@dataclass(frozen=True)
class AwqSpec:
    """User intent for one `lmdeploy lite auto_awq` job (defaults are LMDeploy's)."""

    model_path: str
    output_dir: str = ""
    calib_source: str = "hub"
    calib_dataset: str = "wikitext2"
    calib_files: tuple[str, ...] = ()
    text_field: str = "text"
    calib_samples: int = 128
    calib_seqlen: int = 2048
    batch_size: int = 1
    w_bits: int = 4
    w_group_size: int = 128
    w_sym: bool = False
    search_scale: bool = False
    dtype: str = "auto"
    device: str = "cuda"
    gpu: int = 0  # NVML number of the GPU a cuda job runs on (the worker sees only it); ignored on the cpu
    trust_remote_code: bool = False

    @property
    def data_free(self) -> bool:
        return self.calib_source == "none" or self.calib_samples == 0

    @property
    def resource(self) -> str:
        """What the job occupies: one job per GPU (and one CPU job) at a time."""
        return f"cuda:{self.gpu}" if self.device == "cuda" else self.device

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPUs the worker is given; () on the cpu."""
        return (self.gpu,) if self.device == "cuda" else ()

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["calib_files"] = list(self.calib_files)
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> AwqSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known.setdefault("model_path", "")
        known["calib_files"] = tuple(known.get("calib_files") or ())
        return cls(**known)


def resource_key(resource: str) -> str:
    """A stored row's resource as the scheduler counts it (a legacy "cuda" row holds GPU 0)."""
    return LEGACY_RESOURCES.get(resource, resource)


def job_env(spec: AwqSpec, usable: UsableGpus | None = None) -> dict[str, str]:
    """The environment the worker adds: CUDA_VISIBLE_DEVICES (in PCI bus order) for a cuda job, so that it sees
    its one GPU as "cuda" and no other; nothing on the cpu (nor under an opaque limit of the console's own: the
    job then keeps the console's devices)."""
    return placement_env(spec.gpus, usable)


@dataclass(frozen=True)
class Estimates:
    """Rough numbers shown before a job runs."""

    params: int
    size_before_bytes: int
    size_after_bytes: int
    ram_peak_bytes: int
    gpu_peak_bytes: int
    seconds: float
    calib_tokens: int | None = None


@dataclass(frozen=True)
class CheckedAwq:
    """A spec that passed pre-flight, with its resolved folders, the model's facts and the estimates."""

    spec: AwqSpec
    model_dir: Path
    output_dir: Path
    info: ModelInfo
    layers: int
    estimates: Estimates


def default_output_name(model_dir: Path, spec: AwqSpec) -> str:
    return SAFE_NAME.sub("-", f"{model_dir.name}-awq-w{spec.w_bits}-g{spec.w_group_size}").strip("-")


def free_output_dir(base: Path, claimed: frozenset[str] = frozenset()) -> Path:
    """base, or base-2, base-3 … : the first that is empty or absent and no queued job will write."""
    candidate, n = base, 1
    while str(candidate) in claimed or (candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir()))):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def weight_bytes(folder: Path) -> int:
    total = 0
    for entry in folder.iterdir():
        if entry.is_file() and entry.suffix in (".safetensors", ".bin", ".pt"):
            total += entry.stat().st_size
    return total


def hub_dataset_cached(name: str, env: dict[str, str] | None = None) -> bool:
    """Whether LMDeploy's calibration dataset is already in the local Hugging Face caches."""
    env = dict(os.environ if env is None else env)
    repo = HUB_DATASETS[name]
    hf_home = Path(env.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    hub = Path(env.get("HF_HUB_CACHE", hf_home / "hub")).expanduser()
    datasets_cache = Path(env.get("HF_DATASETS_CACHE", hf_home / "datasets")).expanduser()
    hub_name = "datasets--" + repo.replace("/", "--")
    if (hub / hub_name).is_dir():
        return True
    prefix = repo.replace("/", "___").lower()
    return datasets_cache.is_dir() and any(p.name.lower().startswith(prefix) for p in datasets_cache.iterdir())


def hub_reachable(env: dict[str, str] | None = None, timeout: float = 2.0) -> bool:
    """False when offline mode is set or the hub's host cannot be reached (nothing is downloaded here)."""
    env = dict(os.environ if env is None else env)
    if env.get("HF_HUB_OFFLINE") == "1" or env.get("HF_DATASETS_OFFLINE") == "1":
        return False
    host = re.sub(r"^https?://", "", env.get("HF_ENDPOINT", "https://huggingface.co")).split("/")[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
            return True
    except OSError:
        return False


class TokenCounter:
    """count_tokens with a memory: the same text on the same tokenizer is counted once (the pre-flight runs on
    every form change and on submit; the sample corpus alone takes ~0.3 s to tokenize). App-scoped, small."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._seen: dict[tuple[str, float, str], tuple[int, bool]] = {}
        self._lock = threading.Lock()

    def __call__(self, model_dir: Path, text: str) -> tuple[int, bool]:
        tokenizer = model_dir / "tokenizer.json"
        try:
            stamp = tokenizer.stat().st_mtime
        except OSError:
            stamp = -1.0
        key = (str(model_dir), stamp, hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest())
        with self._lock:
            if key in self._seen:
                return self._seen[key]
        counted = count_tokens(model_dir, text)
        with self._lock:
            if len(self._seen) >= self._size:
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = counted
        return counted


def count_tokens(model_dir: Path, text: str) -> tuple[int, bool]:
    """Tokens in text with the model's own tokenizer.json (exact), else a bytes/4 guess (exact=False)."""
    tokenizer_file = model_dir / "tokenizer.json"
    if tokenizer_file.is_file():
        try:
            from tokenizers import Tokenizer

            return len(Tokenizer.from_file(str(tokenizer_file)).encode(text).ids), True
        except Exception:  # a tokenizer the library cannot read: fall back to the guess
            log.info("tokenizer of %s unreadable; counting calibration tokens by a guess", model_dir, exc_info=True)
    return len(text.encode("utf-8")) // BYTES_PER_TOKEN_GUESS, False


def sample_corpus() -> str:
    """English prose that ships with every CPython (the pydoc topics), so calibration needs no download."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def read_calibration_text(files: tuple[str, ...] | list[str], text_field: str) -> str:
    """Concatenate .txt files and the `text_field` of .jsonl lines; raises ValueError with the file named."""
    parts: list[str] = []
    for name in files:
        path = Path(name)
        raw = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            for number, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path.name} line {number}: not JSON ({exc})") from exc
                value = row.get(text_field) if isinstance(row, dict) else None
                if not isinstance(value, str):
                    raise ValueError(f"{path.name} line {number}: no string field {text_field!r}")
                parts.append(value)
        else:
            parts.append(raw)
    return "\n\n".join(parts)


def estimate(info: ModelInfo, spec: AwqSpec, size_before: int, calib_tokens: int | None) -> Estimates:
    """Rough size, memory and time from the model's shape (the planner's ModelShape, so the Quantize tab and the
    Memory planner agree about the same model); documented as rough in the UI.

    Time is counted in floating-point work: one forward of the model over the calibration tokens, and with
    search-scale a forward of every quantized linear layer for each of AWQ's 20 grid points, at a rate fitted
    to runs in the project's notes (a 4-layer model on 2 CPU cores; a 0.7 B model on one GPU).
    """
    shape = ModelShape.from_config(info.config)
    params, linear = shape.params(), shape.linear_params()
    size_after = replace(shape, awq_group_size=0).weight_bytes(awq_group_size=spec.w_group_size)
    if spec.w_bits != 4:  # 8-bit weights: a byte a weight instead of half of one
        size_after += linear // 2
    hidden, layer_params = shape.hidden, linear // max(shape.layers, 1)
    tokens = 0 if spec.data_free else spec.calib_samples * spec.calib_seqlen
    activations = tokens * hidden * 2 * 3  # inputs, outputs and a working copy of every sample, fp16
    gpu_peak = 0 if spec.device == "cpu" else 2 * layer_params * 2 + activations + shape.vocab * hidden * 2
    ram_peak = params * 2 + (activations if spec.device == "cpu" else 0) + PROCESS_BASE_BYTES
    work = 2.0 * params * tokens + (2.0 * AWQ_SEARCH_GRID * linear * tokens if spec.search_scale else 0.0)
    rate = AWQ_FLOPS_PER_S.get(spec.device, AWQ_FLOPS_PER_S["cuda"])
    seconds = 8.0 + size_before / LOAD_BYTES_PER_S + work / rate + linear * QUANTIZE_S_PER_WEIGHT[spec.device]
    return Estimates(params, size_before, size_after, ram_peak, gpu_peak, seconds, calib_tokens)


def check_awq(
    spec: AwqSpec,
    roots: ModelRoots,
    output_root: Path,
    usable_gpus: UsableGpus | int | None,
    bf16_ok: bool | None = None,
    hub_online: bool | None = None,
    claimed_outputs: frozenset[str] = frozenset(),
    token_counter: Callable[[Path, str], tuple[int, bool]] = count_tokens,
) -> CheckedAwq | list[FieldError]:
    """Every reason the job cannot run, or the checked job. Nothing is spawned and nothing is left behind here
    (the only write is the probe folder that output_unwritable makes and removes)."""
    errors = too_long(("model_path", spec.model_path, MAX_PATH_CHARS), ("output_dir", spec.output_dir, MAX_PATH_CHARS),
                      ("calib_files", "\n".join(spec.calib_files), MAX_PATH_CHARS * 8),
                      ("text_field", spec.text_field, MAX_NAME_CHARS))
    if errors:
        return errors  # nothing else is worth reading in a value of that size
    resolved = roots.resolve(spec.model_path)
    if isinstance(resolved, PathProblem):
        return [FieldError("model_path", resolved.key, resolved.params)]
    info = read_model_info(resolved)
    if isinstance(info, PathProblem):
        return [FieldError("model_path", info.key, info.params)]
    config = info.config.get("text_config") or info.config
    if info.quant_method:
        errors.append(FieldError("model_path", "errors.awq_already_quantized", {"method": info.quant_method}))
    elif info.architecture not in AWQ_ARCHITECTURES:
        errors.append(FieldError("model_path", "errors.awq_architecture",
                                 {"arch": info.architecture or "?", "supported": ", ".join(sorted(AWQ_ARCHITECTURES))}))
    for name, value, allowed in (("calib_source", spec.calib_source, CALIB_SOURCES),
                                 ("dtype", spec.dtype, DTYPES), ("device", spec.device, DEVICES),
                                 ("w_bits", spec.w_bits, W_BITS)):
        if value not in allowed:
            errors.append(FieldError(name, "errors.choice", {"value": str(value),
                                                             "choices": ", ".join(map(str, allowed))}))
    if spec.w_group_size not in W_GROUP_SIZES:
        errors.append(FieldError("w_group_size", "errors.choice", {"value": str(spec.w_group_size),
                                                                   "choices": ", ".join(map(str, W_GROUP_SIZES))}))
    else:
        for dim_name in ("hidden_size", "intermediate_size"):
            dim = int(config.get(dim_name) or 0)
            if dim and dim % spec.w_group_size:
                errors.append(FieldError("w_group_size", "errors.group_size_divides",
                                         {"group": str(spec.w_group_size), "dim": dim_name, "size": str(dim)}))
                break
    if not spec.data_free:
        if not 1 <= spec.calib_samples <= MAX_SAMPLES:
            errors.append(FieldError("calib_samples", "errors.int_range", {"min": "0", "max": str(MAX_SAMPLES)}))
        if not 16 <= spec.calib_seqlen <= MAX_SEQLEN:
            errors.append(FieldError("calib_seqlen", "errors.int_range", {"min": "16", "max": str(MAX_SEQLEN)}))
        if not 1 <= spec.batch_size <= MAX_BATCH:
            errors.append(FieldError("batch_size", "errors.int_range", {"min": "1", "max": str(MAX_BATCH)}))
    usable = usable_of(usable_gpus)
    if spec.device == "cuda" and not usable.indices and not usable.opaque:  # None: no NVML (every driver has it)
        errors.append(FieldError("device", "errors.awq_no_gpu", {}))
    elif spec.device == "cuda":
        errors += gpu_errors(spec.gpu, usable)
    wants_bf16 = spec.dtype == "bfloat16" or (spec.dtype == "auto" and
                                              str(config.get("torch_dtype") or config.get("dtype")) == "bfloat16")
    if wants_bf16 and (spec.device == "cpu" or bf16_ok is False):
        errors.append(FieldError("dtype", "errors.bf16_unsupported", {"device": spec.device}))

    # Calibration data.
    calib_tokens: int | None = None
    if not spec.data_free and spec.calib_source == "hub":
        if spec.calib_dataset not in HUB_DATASETS:
            errors.append(FieldError("calib_dataset", "errors.choice",
                                     {"value": spec.calib_dataset, "choices": ", ".join(HUB_DATASETS)}))
        elif not hub_dataset_cached(spec.calib_dataset):
            online = hub_reachable() if hub_online is None else hub_online
            if not online:
                errors.append(FieldError("calib_dataset", "errors.dataset_offline", {"name": spec.calib_dataset}))
    elif not spec.data_free and spec.calib_source in ("files", "sample"):
        text = ""
        if spec.calib_source == "sample":
            text = sample_corpus()
        elif not spec.calib_files:
            errors.append(FieldError("calib_files", "errors.calib_files_required", {}))
        else:
            for name in spec.calib_files:
                real = Path(os.path.realpath(name))
                if not roots.contains(real):
                    errors.append(FieldError("calib_files", "errors.path_outside_roots",
                                             {"path": name, "roots": ", ".join(str(r) for r in roots.roots)}))
                elif not real.is_file():
                    errors.append(FieldError("calib_files", "errors.calib_file_missing", {"path": name}))
                elif real.suffix.lower() not in (".txt", ".jsonl", ".ndjson", ".md"):
                    errors.append(FieldError("calib_files", "errors.calib_file_type", {"path": name}))
            if not errors:
                try:
                    text = read_calibration_text(spec.calib_files, spec.text_field)
                except ValueError as exc:
                    errors.append(FieldError("calib_files", "errors.calib_file_bad", {"error": str(exc)}))
        sizes_ok = not any(e.field in ("calib_samples", "calib_seqlen") for e in errors)
        if spec.calib_source == "files" and not errors and not text.strip():
            errors.append(FieldError("calib_files", "errors.calib_empty", {}))
        elif text and sizes_ok:
            calib_tokens, _exact = token_counter(resolved, text)
            need = spec.calib_samples * spec.calib_seqlen
            if calib_tokens < need:
                errors.append(FieldError("calib_samples", "errors.calib_too_short", {
                    "tokens": f"{calib_tokens:,}", "need": f"{need:,}",
                    "fit": str(calib_tokens // max(spec.calib_seqlen, 1)), "seqlen": str(spec.calib_seqlen)}))

    # Output folder.
    output = _output_dir(spec, resolved, output_root, claimed_outputs)
    if isinstance(output, FieldError):
        errors.append(output)
    elif str(output) in claimed_outputs:
        errors.append(FieldError("output_dir", "errors.output_claimed",
                                 {"path": str(output), "suggestion": str(free_output_dir(output, claimed_outputs))}))
    else:
        suggestion = str(free_output_dir(output, claimed_outputs))
        if not roots.contains(output):
            errors.append(FieldError("output_dir", "errors.path_outside_roots",
                                     {"path": str(output), "roots": ", ".join(str(r) for r in roots.roots)}))
        elif output == resolved or resolved in output.parents:
            errors.append(FieldError("output_dir", "errors.output_inside_model", {"path": str(output)}))
        elif output.exists() and (not output.is_dir() or any(output.iterdir())):
            errors.append(FieldError("output_dir", "errors.output_exists",
                                     {"path": str(output), "suggestion": suggestion}))
        elif (unwritable := output_unwritable(output)) is not None:
            errors.append(unwritable)
    if errors:
        return errors
    assert isinstance(output, Path)
    size_before = weight_bytes(resolved)
    est = estimate(info, spec, size_before, calib_tokens)
    existing = output if output.exists() else next((p for p in output.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if free < est.size_after_bytes * 1.2:
        return [FieldError("output_dir", "errors.disk_full", {"need": _gib(est.size_after_bytes * 1.2),
                                                               "free": _gib(free)})]
    layers = int(config.get("num_hidden_layers") or 0)
    kept = replace(spec, output_dir=str(output), gpu=spec.gpu if spec.device == "cuda" else 0)
    return CheckedAwq(spec=kept, model_dir=resolved, output_dir=output, info=info, layers=layers, estimates=est)


def gpu_errors(gpu: int, usable: UsableGpus) -> list[FieldError]:
    """The chosen GPU must be one this console may use (NVML numbers, as `nvidia-smi` lists them). Under an
    opaque limit (MIG slices) the job keeps the console's devices, so only GPU 0, their first, is accepted."""
    if isinstance(gpu, bool) or not isinstance(gpu, int) or not 0 <= gpu <= MAX_GPU_INDEX:
        shown = str(gpu)
        present = ", ".join(str(i) for i in usable.indices or ()) or "-"
        return [FieldError("gpu", "errors.gpus_missing",
                           {"missing": shown if len(shown) <= 24 else shown[:24] + "…", "present": present})]
    if usable.opaque and gpu == 0:
        return []
    return check_gpus((gpu,), usable, field="gpu")


def output_unwritable(output: Path) -> FieldError | None:
    """Why the output folder cannot be made, found by trying where the worker will write: beside it (it writes
    `<output>.partial` there and renames it). A regular file in the way, a read-only file system, an immutable or
    foreign folder are named; None when a folder can be made there. The probe folder is removed at once."""
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return FieldError("output_dir", "errors.output_blocked_by_file", {"path": str(parent)})
    try:
        probe = tempfile.mkdtemp(prefix=".console-write-check-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        return FieldError("output_dir", "errors.output_unwritable", {
            "path": str(parent), "reason": exc.strerror or str(exc),
            "errno": errno.errorcode.get(exc.errno or 0, "")})
    return None


def _output_dir(spec: AwqSpec, model_dir: Path, output_root: Path, claimed: frozenset[str]) -> Path | FieldError:
    text = (spec.output_dir or "").strip()
    if not text:
        return free_output_dir(Path(os.path.realpath(output_root)) / default_output_name(model_dir, spec), claimed)
    if "\x00" in text:
        return FieldError("output_dir", "errors.path_invalid", {"path": text.replace("\x00", "\\0")})
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = output_root / path
    return Path(os.path.realpath(path))


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def cli_preview(checked: CheckedAwq, usable: UsableGpus | None = None) -> str | None:
    """The equivalent `lmdeploy lite auto_awq` command, its environment first (the GPU it runs on); None for
    local text, which the CLI cannot take."""
    spec = checked.spec
    if not spec.data_free and spec.calib_source != "hub":
        return None
    args = ["lmdeploy", "lite", "auto_awq", str(checked.model_dir), "--work-dir", str(checked.output_dir)]
    if spec.data_free:
        args += ["--calib-samples", "0"]
    else:
        args += ["--calib-dataset", spec.calib_dataset, "--calib-samples", str(spec.calib_samples),
                 "--calib-seqlen", str(spec.calib_seqlen), "--batch-size", str(spec.batch_size)]
        if spec.search_scale:
            args.append("--search-scale")
    args += ["--w-bits", str(spec.w_bits), "--w-group-size", str(spec.w_group_size), "--dtype", spec.dtype,
             "--device", spec.device]
    if spec.w_sym:
        args.append("--w-sym")
    if spec.trust_remote_code:
        args.append("--trust-remote-code")
    return env_prefix(job_env(spec, usable)) + shlex.join(args)


def worker_argv(python: str, job_file: Path) -> list[str]:
    """The child that runs the job: our worker, which calls LMDeploy's own auto_awq in-process."""
    return [python, "-m", "webui.workers.awq_worker", str(job_file)]
