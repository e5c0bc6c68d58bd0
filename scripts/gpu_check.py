"""Prove the Serve service on a real GPU: real `lmdeploy serve api_server` (pytorch backend) on a tiny model.

Usage: python scripts/gpu_check.py OUTPUT_DIR [--python PYTHON]

Through the console's own services (no browser), it:
1. builds a tiny Llama offline;
2. starts an api_server, records the start-up phases the console showed and when, the time to READY, the lag
   between /health's first 200 (independent poller) and READY, the model id, the KV blocks, and the GPU
   memory held by the server's process tree (NVML);
3. stops it and measures stop-to-gone and the time until NVML shows that memory released;
4. starts a second server (int8 KV), drops the services, builds them again from the same state folder and
   checks the server is re-attached READY by (pid, create time), then stops it;
5. quantizes the model with AWQ on cuda through the Quantize service (local calibration text), records the
   progress it showed and the peak memory, then serves the result with --model-format awq and int4 KV.
Writes report.json and summary.md to OUTPUT_DIR and prints the summary; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.serve_lifecycle import first_healthy  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402
from webui.services.container import Services  # noqa: E402
from webui.services.serve_spec import ServerSpec, suggest_port  # noqa: E402
from webui.settings import Settings  # noqa: E402

MIB = 1024 * 1024


class Checks:
    """Named pass/fail checks with the numbers behind them."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    def add(self, name: str, ok: bool, value: str, goal: str = "") -> None:
        self.rows.append({"check": name, "ok": bool(ok), "value": value, "goal": goal})
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {value} {('(goal ' + goal + ')') if goal else ''}", flush=True)

    @property
    def failed(self) -> bool:
        return any(not r["ok"] for r in self.rows)


def tree_memory(services: Services, server_id: str) -> tuple[int, list[int]]:
    snap = services.servers.get(server_id)
    if snap is None or snap.pid is None:
        return 0, []
    from webui.services.processes import ProcessHandle

    record = services.store.get_server(server_id)
    handle = ProcessHandle(record.pid, record.create_time or 0.0, record.log_path)
    pids = [p.pid for p in services.supervisor.tree(handle)]
    return services.gpu.memory_of(set(pids)), pids


def start_and_watch(services: Services, spec: ServerSpec, timeout_s: float = 300) -> dict[str, object]:
    seen: list[float] = []
    done = threading.Event()
    watcher = threading.Thread(target=first_healthy, args=(spec.port, done, seen), daemon=True)
    watcher.start()
    t0 = time.time()
    outcome = services.servers.start(spec)
    if outcome.server is None:
        raise SystemExit(f"refused: {outcome.errors}")
    server_id = outcome.server.id
    phases: list[tuple[str, float]] = []
    memory: list[tuple[float, int]] = []
    last_mem = 0.0
    while time.time() - t0 < timeout_s:
        snap = services.servers.get(server_id)
        if not phases or phases[-1][0] != snap.phase:
            phases.append((snap.phase, round(time.time() - t0, 2)))
        if time.time() - last_mem > 1.0:
            last_mem = time.time()
            memory.append((round(last_mem - t0, 1), tree_memory(services, server_id)[0]))
        if snap.state in ("READY", "FAILED", "LOST"):
            break
        time.sleep(0.01)
    ready_seen = time.time()
    done.set()
    watcher.join(2)
    used, pids = tree_memory(services, server_id)
    return {
        "id": server_id,
        "state": snap.state,
        "hint": snap.hint,
        "hint_line": snap.hint_line,
        "ready_seconds": snap.ready_seconds,
        "ready_lag_s": (ready_seen - seen[0]) if seen else None,
        "phases": phases,
        "model_id": snap.model_id,
        "gpu_blocks": snap.gpu_blocks,
        "tree_pids": pids,
        "tree_gpu_mib": used / MIB,
        "device_used_mib": [d.used_bytes / MIB for d in services.gpu.devices()],
        "memory_timeline_mib": [(t, m / MIB) for t, m in memory],
        "command": snap.command,
    }


def stop_and_measure(services: Services, server_id: str) -> dict[str, object]:
    _, pids = tree_memory(services, server_id)
    before = [d.used_bytes / MIB for d in services.gpu.devices()]
    t0 = time.monotonic()
    snap = services.servers.stop(server_id)
    stop_s = time.monotonic() - t0
    import psutil

    gone = not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    after = [d.used_bytes / MIB for d in services.gpu.devices()]
    return {"state": snap.state, "detail": snap.detail, "stop_call_s": stop_s, "tree_gone": gone,
            "device_used_before_mib": before, "device_used_after_mib": after}


def quantize_and_serve(services: Services, model: Path, checks: Checks) -> dict[str, object]:
    from webui.services.quantize_spec import AwqSpec

    spec = AwqSpec(model_path=str(model), calib_source="sample", calib_samples=64, calib_seqlen=512, device="cuda")
    t0 = time.time()
    outcome = services.jobs.submit(spec)
    if outcome.job is None:
        checks.add("AWQ job accepted", False, str(outcome.errors))
        return {}
    seen: list[tuple[str, int, float]] = []
    while True:
        job = services.jobs.get(outcome.job.id)
        if not seen or seen[-1][:2] != (job.phase, job.layer):
            seen.append((job.phase, job.layer, round(time.time() - t0, 2)))
        if job.state not in ("QUEUED", "RUNNING"):
            break
        time.sleep(0.05)
    r = job.result
    checks.add("AWQ on cuda through the Quantize service", job.state == "SUCCEEDED",
               f"{job.state} in {r.get('wall_seconds')} s (library call {r.get('awq_seconds')} s) {job.error[-200:]}")
    report: dict[str, object] = {"job": job.as_dict(), "progress_seen": seen}
    if job.state != "SUCCEEDED":
        return report
    from webui.services.awq_progress import read_events

    events = read_events(services.settings.jobs_dir / job.id / "progress.jsonl")
    layers_seen: dict[str, set[int]] = {}
    for event in events:
        if "layer" in event:
            layers_seen.setdefault(str(event["phase"]), set()).add(int(event["layer"]))
    checks.add("AWQ progress events: every layer calibrated, smoothed, quantized",
               all(len(layers_seen.get(p, ())) == job.layers for p in ("calibrate", "smooth", "quantize")),
               ", ".join(f"{p} {len(v)}/{job.layers}" for p, v in layers_seen.items())
               + f"; UI saw {len(seen)} distinct (phase, layer) states")
    checks.add("AWQ peak memory reported", r["peak_gpu_bytes"] > 0,
               f"GPU {r['peak_gpu_bytes'] / MIB:.0f} MiB, RAM {r['peak_ram_bytes'] / MIB:.0f} MiB; "
               f"{r['size_before_bytes'] / MIB:.1f} -> {r['size_after_bytes'] / MIB:.1f} MiB (x{r['ratio']})")
    served = start_and_watch(services, ServerSpec(model_path=job.output_dir, backend="pytorch", model_format="awq",
                                                  kv_policy="int4", cache_max_entry_count=0.4,
                                                  port=suggest_port(25333)))
    report["server_awq_q4"] = served
    checks.add("AWQ output served (--model-format awq, int4 KV)", served["state"] == "READY",
               f"{served['state']} after {served['ready_seconds'] or 0:.1f} s, {served['gpu_blocks']} blocks")
    if served["state"] == "READY":
        report["stop_awq"] = stop_and_measure(services, served["id"])
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--python", default=sys.executable, help="interpreter with lmdeploy")
    args = parser.parse_args()
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lmdeploy-console-gpu-"))
    model = build_tiny_model(work / "models" / "tiny-llama")
    settings = Settings(state_dir=work / "state", model_roots=(work / "models",), lmdeploy_python=args.python)
    checks = Checks()
    report: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version()}
    try:
        import lmdeploy

        report["lmdeploy"] = lmdeploy.__version__
    except ImportError:
        report["lmdeploy"] = "not importable here"

    services = Services.build(settings)
    report["gpus"] = [d.name for d in services.gpu.devices()]
    report["idle_used_mib"] = [d.used_bytes / MIB for d in services.gpu.devices()]
    try:
        spec = ServerSpec(model_path=str(model), backend="pytorch", cache_max_entry_count=0.4,
                          port=suggest_port(23333))
        first = start_and_watch(services, spec)
        report["server_q0"] = first
        checks.add("api_server READY through the Serve service", first["state"] == "READY",
                   f"{first['state']} after {first['ready_seconds'] or 0:.1f} s {first['hint']} {first['hint_line']}")
        if first["state"] == "READY":
            lag = first["ready_lag_s"]
            checks.add("READY lag after first /health 200", lag is not None and lag <= 0.5,
                       f"{(lag or 0) * 1000:.0f} ms", "<= 500 ms")
            shown = [p for p, _ in first["phases"]]
            checks.add("start-up phases shown", len(set(shown) - {"ready"}) >= 4, " -> ".join(shown))
            checks.add("model id read from /v1/models", first["model_id"] == str(model), str(first["model_id"]))
            checks.add("server memory attributed via its process tree (NVML)", first["tree_gpu_mib"] > 1000,
                       f"{first['tree_gpu_mib']:.0f} MiB in pids {first['tree_pids']}")
            stop = stop_and_measure(services, first["id"])
            report["stop_q0"] = stop
            released = stop["detail"]
            checks.add("stop: process tree gone", stop["tree_gone"] and stop["state"] == "STOPPED",
                       f"{stop['stop_call_s']:.2f} s ({released})", "<= 5 s")
            back = stop["device_used_after_mib"][0] - report["idle_used_mib"][0]
            checks.add("stop: GPU memory back", back < 256,
                       f"{stop['device_used_before_mib'][0]:.0f} -> {stop['device_used_after_mib'][0]:.0f} MiB "
                       f"(idle {report['idle_used_mib'][0]:.0f})")

        spec8 = ServerSpec(model_path=str(model), backend="pytorch", kv_policy="int8", cache_max_entry_count=0.4,
                           port=suggest_port(24333))
        second = start_and_watch(services, spec8)
        report["server_q8"] = second
        checks.add("int8 KV server READY", second["state"] == "READY",
                   f"{second['ready_seconds'] or 0:.1f} s, {second['gpu_blocks']} blocks "
                   f"(q0: {first.get('gpu_blocks')})")
        if second["state"] == "READY":
            services.close(keep_servers=True)  # the console exits, keeping the server
            services = Services.build(settings)  # ... and starts again from the same state folder
            snap = services.servers.wait_for(second["id"], {"READY"}, 30)
            events = [e.kind for e in services.store.events(second["id"])]
            checks.add("re-attached after console restart", snap.state == "READY" and "reattached" in events,
                       f"{snap.state}, pid {snap.pid}, events {events}")
            stop8 = stop_and_measure(services, second["id"])
            report["stop_q8"] = stop8
            checks.add("re-attached server stops cleanly", stop8["tree_gone"],
                       f"{stop8['stop_call_s']:.2f} s ({stop8['detail']})")

        awq_report = quantize_and_serve(services, model, checks)
        report["awq"] = awq_report
    finally:
        services.close()
        for log in sorted(settings.log_dir.glob("server-*.log")):
            shutil.copy(log, out / log.name)
        report["checks"] = checks.rows
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        lines = [f"# GPU check — {report['date']}", "",
                 f"GPU: {', '.join(report.get('gpus', [])) or 'none'}; LMDeploy {report['lmdeploy']}; "
                 f"backend pytorch (TurboMind not run here); Python {report['python']}", "",
                 "| check | result | value | goal |", "|---|---|---|---|"]
        lines += [f"| {r['check']} | {'pass' if r['ok'] else 'FAIL'} | {r['value']} | {r['goal']} |"
                  for r in checks.rows]
        summary = "\n".join(lines) + "\n"
        (out / "summary.md").write_text(summary)
        print("\n" + summary)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
