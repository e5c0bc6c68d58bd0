"""Whether a server would fit on its GPUs, said before it starts: the planner on each chosen GPU, with what that GPU
holds now (other programs, other servers) counted as memory the engine cannot have.

LMDeploy sizes its KV pool from the memory that is free when the engine starts, so the same spec fits one moment
and not the next; the Serve tab asks again with every preview."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from webui.services.models import ModelRoots
from webui.services.planner import ModelShape, PlanInput, plan
from webui.services.serve_spec import KV_POLICIES, ServerSpec


class DeviceMemory(Protocol):
    """One GPU's memory now (GpuProbe.devices() and the sampler's DeviceSample both have these)."""

    @property
    def index(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def used_bytes(self) -> int: ...


@dataclass(frozen=True)
class GpuFit:
    """The planner's verdict for one GPU: its predicted total (what is held there now included) against its size."""

    gpu: int
    name: str
    total_bytes: int
    used_bytes: int  # held now by others: the planner counts it as memory the engine cannot take
    predicted_bytes: int
    weights_bytes: int  # this GPU's share (1/tp)
    base_bytes: int  # what the engine holds before any KV cache: its CUDA context and its weights
    kv_pool_bytes: int
    fits: bool


def fit_gpus(spec: ServerSpec, usable: Sequence[int] | None = None) -> tuple[int, ...]:
    """The GPUs a server will run on: the chosen ones, else the first tp of those it may use (CUDA gives rank i
    the i-th visible GPU; `usable` is every GPU unless the console runs under a CUDA_VISIBLE_DEVICES of its own)."""
    first = tuple(usable) if usable is not None else tuple(range(max(spec.tp, 1)))
    return spec.gpu_list or first[:max(spec.tp, 1)]


def plan_input(spec: ServerSpec, shape: ModelShape, total_bytes: int, other_used_bytes: int) -> PlanInput:
    """The planner's input for a server spec on one GPU (session length 0 = LMDeploy's choice: 4096 here)."""
    return PlanInput(
        shape, total_bytes, cache_max_entry_count=spec.cache_max_entry_count,
        quant_policy=KV_POLICIES.get(spec.kv_policy, 0), awq=spec.model_format == "awq",
        awq_group_size=shape.awq_group_size or 128, session_len=spec.session_len or 4096,
        max_batch_size=spec.max_batch_size or 128, tp=max(spec.tp, 1), other_used_bytes=other_used_bytes)


def read_shape(spec: ServerSpec, roots: ModelRoots) -> ModelShape | None:
    """The model's shape from its config.json; None where the folder does not resolve or the file does not read
    (the form's own checks say why)."""
    resolved = roots.resolve(spec.model_path)
    if not isinstance(resolved, Path):
        return None
    try:
        return ModelShape.from_config(json.loads((resolved / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_fit(spec: ServerSpec, roots: ModelRoots, devices: Sequence[DeviceMemory],
              usable: Sequence[int] | None = None) -> list[GpuFit]:
    """One verdict per chosen GPU that exists; [] without a GPU (NVML absent) or a readable model."""
    if not devices:
        return []
    shape = read_shape(spec, roots)
    if shape is None:
        return []
    by_index = {d.index: d for d in devices}
    verdicts = []
    for gpu in fit_gpus(spec, usable):
        device = by_index.get(gpu)
        if device is None:  # not on this machine: the form's check names it
            continue
        predicted = plan(plan_input(spec, shape, device.total_bytes, device.used_bytes))
        verdicts.append(GpuFit(
            gpu=gpu, name=device.name, total_bytes=device.total_bytes, used_bytes=device.used_bytes,
            predicted_bytes=predicted.total_bytes, weights_bytes=predicted.weights_bytes,
            base_bytes=predicted.context_bytes + predicted.weights_bytes, kv_pool_bytes=predicted.kv_pool_bytes,
            fits="weights_do_not_fit" not in predicted.problems and predicted.total_bytes <= device.total_bytes))
    return verdicts
