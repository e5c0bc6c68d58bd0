"""What the Memory tab shows: the sampler's history and latest reading with processes named by owner, the
store's events as markers, CSV export, and the planner's prediction next to what a READY server holds."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psutil

from webui.services.awq_progress import read_events
from webui.services.fit import fit_gpus, plan_input
from webui.services.gpu import DeviceSample, GpuSampler, Sample
from webui.services.job_states import LIVE_JOB_STATES
from webui.services.lifecycle import handle_of
from webui.services.models import ModelRoots
from webui.services.planner import MIB, ModelShape, error_percent, plan
from webui.services.processes import ProcessSupervisor
from webui.services.serve_log import read_startup, tail
from webui.services.serve_spec import ServerSpec
from webui.services.server_states import LIVE_STATES
from webui.services.store import Store

WINDOWS = MappingProxyType({"5m": 300.0, "1h": 3600.0, "24h": 86_400.0})
CSV_FIELDS = ("time", "gpu", "name", "used_mib", "total_mib", "utilization", "temperature", "power_w")


class MemoryService:
    """App-scoped read model over the one GpuSampler; every method is a snapshot, safe from any thread."""

    def __init__(self, sampler: GpuSampler, store: Store, supervisor: ProcessSupervisor, roots: ModelRoots) -> None:
        self.sampler = sampler
        self._store = store
        self._supervisor = supervisor
        self._roots = roots

    # status --------------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.sampler.probe.available

    @property
    def reason(self) -> str:
        """Why there is nothing to show (no NVIDIA driver, NVML missing, a failing read)."""
        return self.sampler.probe.reason or self.sampler.error

    # owners ----------------------------------------------------------------------------------------
    def owners(self) -> dict[int, str]:
        """pid → "server <id>" / "job <id>" for every live process tree this console started."""
        out: dict[int, str] = {}
        roots = [(f"server {r.id}", r.pid, r.create_time, r.log_path) for r in self._store.list_servers()
                 if r.owned and r.pid and r.state in LIVE_STATES]
        roots += [(f"job {r.id}", r.pid, r.create_time, r.log_path) for r in self._store.list_jobs()
                  if r.pid and r.state in LIVE_JOB_STATES]
        for label, pid, create_time, log in roots:
            for proc in self._supervisor.tree(handle_of(pid, create_time, log)):
                out[proc.pid] = label
        return out

    # snapshot and history --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The latest reading like `nvidia-smi`: GPUs, then compute processes with their owners."""
        latest = self.sampler.latest()
        if latest is None:
            return {"available": self.available, "reason": self.reason or ("" if self.available else "no GPU"),
                    "t": None, "devices": [], "processes": []}
        owners = self.owners()
        processes = []
        for p in latest.processes:
            try:
                name = psutil.Process(p.pid).name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                name = ""
            processes.append({"gpu": p.gpu_index, "pid": p.pid, "name": name, "used_mib": p.used_bytes / MIB,
                              "owner": owners.get(p.pid, "")})
        return {"available": self.available, "reason": self.reason, "t": latest.t,
                "devices": [_device_row(latest, d) for d in range(len(latest.devices))],
                "processes": sorted(processes, key=lambda r: (r["gpu"], -r["used_mib"]))}

    def history(self, window: str = "5m") -> list[dict[str, Any]]:
        """One row per GPU per sample in the window, oldest first."""
        samples = self.sampler.history(WINDOWS.get(window, WINDOWS["5m"]))
        return [_device_row(s, i) for s in samples for i in range(len(s.devices))]

    def history_csv(self, window: str = "5m") -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.history(window):
            writer.writerow({**row, "time": f"{row['t']:.3f}"})
        return out.getvalue()

    def events(self, window: str = "5m", now: float | None = None) -> list[dict[str, Any]]:
        """Server and job events in the window, for markers on the chart."""
        latest = self.sampler.latest()
        now = now if now is not None else (latest.t if latest else None)
        if now is None:
            return []
        since = now - WINDOWS.get(window, WINDOWS["5m"])
        marks = [{"t": e.at, "source": e.source, "kind": e.kind, "detail": e.detail}
                 for e in self._store.events(since=since)]
        return sorted(marks + self._job_phases(since), key=lambda m: m["t"])

    def _job_phases(self, since: float) -> list[dict[str, Any]]:
        """Where each quantization job entered each phase (from its progress file), for jobs in the window."""
        marks = []
        for job in self._store.list_jobs("awq"):  # a download's progress file is one JSON object, not events
            if not job.progress_path or not job.started_at or (job.ended_at or since) < since:
                continue
            seen: set[str] = set()
            for event in read_events(job.progress_path):
                phase, at = str(event.get("phase", "")), event.get("at")
                if phase and phase not in seen and isinstance(at, (int, float)) and at >= since:
                    seen.add(phase)
                    marks.append({"t": float(at), "source": job.id, "kind": f"phase {phase}", "detail": ""})
        return marks

    # predicted against measured --------------------------------------------------------------------
    def compare_server(self, server_id: str) -> dict[str, Any]:
        """For a READY server: the planner's prediction next to NVML and the engine's blocks, GPU by GPU.

        The planner predicts one GPU (weights and KV heads split by tp), so each of the server's GPUs is compared
        with that GPU alone: what its device holds and what the server's process tree holds there. `per_gpu` has a
        row per GPU; the top-level keys are the first GPU's (callers that know one GPU read those)."""
        record = self._store.get_server(server_id)
        if record is None or not record.owned:
            return {"error": "unknown_server"}
        try:
            spec = ServerSpec.from_json_dict(record.spec)
        except (TypeError, ValueError) as exc:  # a row a newer version wrote
            return {"error": "model_unreadable", "detail": str(exc)}
        resolved = self._roots.resolve(spec.model_path)
        if not isinstance(resolved, Path):
            return {"error": "model_unreadable"}
        try:
            shape = ModelShape.from_config(json.loads((resolved / "config.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            return {"error": "model_unreadable", "detail": str(exc)}
        latest = self.sampler.latest()
        if latest is None or not latest.devices:
            return {"error": "no_gpu", "detail": self.reason}
        tree = set(self.owners_of(server_id))
        held: dict[int, int] = {}
        for p in latest.processes:
            if p.pid in tree:
                held[p.gpu_index] = held.get(p.gpu_index, 0) + p.used_bytes
        devices = {d.index: d for d in latest.devices}
        rows = [self._compare_gpu(spec, shape, devices[gpu], held.get(gpu, 0))
                for gpu in server_gpus(spec, held) if gpu in devices]
        if not rows:  # its GPUs are not among those NVML shows now
            return {"error": "no_gpu", "detail": ", ".join(f"GPU {g}" for g in server_gpus(spec, held))}
        first = rows[0]
        predicted = first["predicted"]
        blocks = record.gpu_blocks
        reading = read_startup(tail(record.log_path, 5000)) if record.log_path else None
        budget = reading.cache_budget_mb if reading else None  # TurboMind says its KV budget instead of blocks
        return {
            "server_id": server_id, "state": record.state, "gpu": first["name"], "gpu_index": first["gpu"],
            "predicted": predicted,
            "measured": {"device_used_bytes": first["device_used_bytes"],
                         "server_tree_bytes": first["server_tree_bytes"], "others_bytes": first["others_bytes"],
                         "engine_blocks": blocks,
                         "engine_cache_budget_bytes": int(budget * MIB) if budget else None},
            "error_percent": {
                **first["error_percent"],
                "blocks": error_percent(predicted["blocks"], blocks) if blocks else None,
                "cache_budget": error_percent(predicted["kv_pool_bytes"], budget * MIB) if budget else None,
            },
            "per_gpu": rows,
        }

    @staticmethod
    def _compare_gpu(spec: ServerSpec, shape: ModelShape, device: DeviceSample, held: int) -> dict[str, Any]:
        """One GPU: the planner with that device's size and what others hold on it, against NVML there."""
        others = max(device.used_bytes - held, 0)  # what other programs hold: not the server's to predict
        predicted = plan(plan_input(spec, shape, device.total_bytes, others))
        return {
            "gpu": device.index, "name": device.name, "total_bytes": device.total_bytes,
            "predicted": predicted.as_dict(), "predicted_total_bytes": predicted.total_bytes,
            "predicted_server_bytes": predicted.total_bytes - others,
            "device_used_bytes": device.used_bytes, "server_tree_bytes": held, "others_bytes": others,
            "error_percent": {
                "total": error_percent(predicted.total_bytes, device.used_bytes),
                "server": error_percent(predicted.total_bytes - others, held) if held else None,
            },
        }

    def owners_of(self, server_id: str) -> list[int]:
        return [pid for pid, label in self.owners().items() if label == f"server {server_id}"]


def server_gpus(spec: ServerSpec, held: dict[int, int]) -> tuple[int, ...]:
    """A server's GPUs: those its spec chose, else those where NVML shows its process tree, else GPU 0..tp-1."""
    return spec.gpu_list or tuple(sorted(held)) or fit_gpus(spec)


def _device_row(sample: Sample, index: int) -> dict[str, Any]:
    d = sample.devices[index]
    return {"t": sample.t, "gpu": d.index, "name": d.name, "used_mib": d.used_bytes / MIB,
            "total_mib": d.total_bytes / MIB, "utilization": d.utilization, "temperature": d.temperature,
            "power_w": d.power_w}


def parse_csv(text: str) -> list[dict[str, Any]]:
    """Read an exported history back (numbers as floats, blanks as None)."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({k: (None if v == "" else (v if k == "name" else float(v))) for k, v in row.items()})
    return rows

