"""Which GPUs a server or a job runs on, and which distributed executor a multi-GPU PyTorch engine uses.

A child sees only its chosen GPUs through `CUDA_VISIBLE_DEVICES`; `CUDA_DEVICE_ORDER=PCI_BUS_ID` goes with it, so
that the numbers mean what NVML (and `nvidia-smi`) call them (CUDA's own default order is fastest first).
LMDeploy's PyTorch engine picks the `ray` executor for tp > 1 (lmdeploy/pytorch/engine/executor/__init__.py) and
dies with "Multi-nodes support requires `ray`" where ray is not installed; `auto` then passes `mp` and says so.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from webui.services.field_errors import FieldError

EXECUTORS = ("auto", "mp", "ray")
GPU_LIST = re.compile(r"^\s*\d+(\s*[, ]\s*\d+)*\s*$")
MAX_GPU_INDEX = 1023
RAY_PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class UsableGpus:
    """The GPUs a child may be placed on, in NVML numbers: every GPU, unless the console itself was started
    with `CUDA_VISIBLE_DEVICES` (an operator's limit, e.g. a shared box), which a choice must not reach past.

    indices None: NVML is absent or the limit is opaque (only the shape of a choice is checked). `spelling` maps
    an index to the console's own entry for it (`2`, `GPU-…`), which is what the child is given. `opaque` names
    (a catalog key) why the limit cannot be mapped to NVML numbers (its entries are MIG slices, or plain numbers
    counted fastest-first over unlike GPUs): a child then keeps the console's devices and no GPU can be chosen."""

    indices: tuple[int, ...] | None
    limit: str | None = None
    spelling: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    opaque: str = ""

    @property
    def count(self) -> int | None:
        return None if self.indices is None else len(self.indices)


def usable_of(value: UsableGpus | int | None) -> UsableGpus:
    """A plain GPU count means every one of them is usable (no limit)."""
    if isinstance(value, UsableGpus):
        return value
    return UsableGpus(None if value is None else tuple(range(value)))


def usable_gpus(limit: str | None, order: str, uuids: Sequence[str], names: Sequence[str]) -> UsableGpus:
    """What `CUDA_VISIBLE_DEVICES=limit` leaves usable of the GPUs NVML lists (uuids and names by NVML index).

    Read as CUDA reads it: entries are numbers, `GPU-` UUIDs (a unique prefix will do) or `MIG-` slices, and
    enumeration stops at the first entry that names no device (or one already named)."""
    count = len(uuids)
    if limit is None:
        return UsableGpus(tuple(range(count)))
    entries = [e.strip() for e in limit.split(",")] if limit.strip() else []
    if any(e.upper().startswith("MIG-") for e in entries):
        return UsableGpus(None, limit, opaque="errors.gpus_limit_mig")
    numbered = order.strip().upper() == "PCI_BUS_ID" or len(set(names)) <= 1  # alike GPUs: both orders agree
    spelling: dict[int, str] = {}
    for entry in entries:
        if entry.isascii() and entry.isdigit() and int(entry) < count:
            index = int(entry)
            if not numbered:
                return UsableGpus(None, limit, opaque="errors.gpus_limit_order")
        elif entry.upper().startswith("GPU-"):
            found = [i for i, u in enumerate(uuids) if u.upper().startswith(entry.upper())]
            if len(found) != 1:
                break
            index = found[0]
        else:
            break
        if index in spelling:
            break
        spelling[index] = entry
    return UsableGpus(tuple(spelling), limit, MappingProxyType(spelling))


def parse_gpus(text: str | tuple[int, ...] | list[int] | None, field: str = "gpus") -> tuple[int, ...] | FieldError:
    """"0,1" / "0 1" / [0, 1] / "[0, 1]" (a JSON list that an API client's text field turned into text) → (0, 1);
    "" or "[]" → () (no choice: every GPU is visible, as without the console)."""
    if text is None or text == "" or text == () or text == []:
        return ()
    if isinstance(text, (tuple, list)):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in text):
            return FieldError(field, "errors.gpus_syntax", {"value": str(list(text))[:100]})
        values = tuple(text)
    else:
        given = str(text).strip()
        inner = given[1:-1] if given.startswith("[") and given.endswith("]") else given  # a JSON list, as text
        if not inner.strip():
            return ()
        if not GPU_LIST.match(inner) or len(given) > 400:
            return FieldError(field, "errors.gpus_syntax", {"value": given[:100]})
        values = tuple(int(x) for x in re.split(r"[,\s]+", inner.strip()) if x)
    if any(i < 0 or i > MAX_GPU_INDEX for i in values):
        return FieldError(field, "errors.gpus_syntax", {"value": ",".join(map(str, values))[:100]})
    if len(set(values)) != len(values):
        return FieldError(field, "errors.gpus_repeated", {"value": ",".join(map(str, values))})
    return values


def check_gpus(gpus: tuple[int, ...], usable: UsableGpus | int | None, tp: int | None = None,
               field: str = "gpus") -> list[FieldError]:
    """Chosen GPUs must be usable (present, and inside the console's own CUDA_VISIBLE_DEVICES; unknown without
    NVML, then only the shape is checked) and, for a server, be as many as its tp (LMDeploy gives rank i the
    i-th visible GPU)."""
    errors: list[FieldError] = []
    if not gpus:
        return errors
    usable = usable_of(usable)
    if usable.opaque:
        errors.append(FieldError(field, usable.opaque, {"limit": str(usable.limit)}))
    elif usable.indices is not None:
        missing = [i for i in gpus if i not in usable.indices]
        if missing:
            present = ", ".join(str(i) for i in usable.indices) or "-"
            params = {"missing": ", ".join(map(str, missing)), "present": present}
            if usable.limit is None:
                errors.append(FieldError(field, "errors.gpus_missing", params))
            else:
                errors.append(FieldError(field, "errors.gpus_outside_limit", {**params, "limit": usable.limit}))
    if tp is not None and len(gpus) != tp:
        errors.append(FieldError(field, "errors.gpus_tp", {"count": str(len(gpus)), "tp": str(tp)}))
    return errors


def placement_env(gpus: tuple[int, ...], usable: UsableGpus | None = None) -> dict[str, str]:
    """The environment a child gets so that it sees only `gpus`; {} when none were chosen (or the console's own
    limit is opaque: the child keeps the console's devices). Under a limit each GPU is given as the console's
    own entry names it (a UUID stays a UUID)."""
    if not gpus or (usable is not None and usable.opaque):
        return {}
    spelled = [usable.spelling.get(i, str(i)) if usable is not None else str(i) for i in gpus]
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(spelled)}


def env_prefix(env: Mapping[str, str]) -> str:
    """`A=1 B=2 ` as a shell line shows an environment (values here are digits, UUIDs and commas: nothing to
    quote)."""
    return "".join(f"{k}={v} " for k, v in env.items())


def resolve_executor(executor: str, tp: int, backend: str, ray_ok: bool | None) -> tuple[str | None, str]:
    """(`--distributed-executor-backend` value or None for LMDeploy's own choice, catalog key of a note or "").

    Only LMDeploy's PyTorch engine with tp > 1 has an executor to choose; TurboMind runs its ranks itself."""
    if backend != "pytorch" or tp <= 1:
        return None, ""
    if executor == "auto":
        if ray_ok is False:
            return "mp", "serve.note.executor_mp_fallback"
        return None, ""
    return executor, ""


def ray_importable(python: str) -> bool | None:
    """Whether `ray` imports in LMDeploy's interpreter (not the console's: they may differ); None if unknown."""
    try:
        done = subprocess.run(  # noqa: S603 - a fixed argv, no shell
            [python, "-c", "import ray"],  # an import, not a lookup: a broken install counts as absent
            capture_output=True, timeout=RAY_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.returncode == 0
