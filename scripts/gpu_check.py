"""Prove every engine-facing capability of the console on a real GPU, through its own services (no browser).

Usage: python scripts/gpu_check.py OUTPUT_DIR [--python PYTHON] [--runs 10]

On a CUDA machine with LMDeploy (pytorch backend; TurboMind is not exercised here), in one go:
1. the Memory service's sampler on real NVML: its CPU use at 4 Hz;
2. builds a tiny Llama offline and quantizes it with AWQ on cuda through the Quantize service, recording
   the progress events it showed and the peak memory;
3. starts api_servers through the Serve service with KV policy 0 at fractions 0.8 and 0.4, policy 8 at 0.4
   (with --tool-call-parser qwen) and the AWQ output (--model-format awq) with policy 4 at 0.4; for each:
   time to READY, the start-up phases shown, the lag between the first /health 200 and READY, the memory
   NVML shows and who holds it (attributed to the server's process tree), the planner's prediction against
   it and against the engine's block count, and the time until the memory is back after stop;
4. chats through the Chat service and through a direct `openai` client side by side (TTFT, tokens/s,
   32 concurrent streams), and sends tools to the servers without and with --tool-call-parser;
5. drops the console's services while a server runs, builds them again from the same state folder and
   checks that the server is re-attached;
6. stops every server through the monitor's events: the stop call returns at once, STOPPED follows, and the
   "memory released" event is checked against a fresh NVML reading; finally two servers run at once and the
   console's shutdown stops them in parallel.
Writes report.json, summary.md and the sampled memory history (memory.csv) to OUTPUT_DIR and prints the
summary table last. Each check passes or fails on its own; exits 1 if any fails.
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
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.chat_overhead import compare as chat_compare  # noqa: E402
from benchmarks.sampler_cost import cpu_share  # noqa: E402
from benchmarks.serve_lifecycle import first_healthy  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402
from webui.services.chat import ChatError, SamplingParams  # noqa: E402
from webui.services.container import Services  # noqa: E402
from webui.services.gpu import GpuProbe  # noqa: E402
from webui.services.lifecycle import handle_of  # noqa: E402
from webui.services.serve_spec import ServerSpec, suggest_port  # noqa: E402
from webui.services.tool_loop import new_run, parse_tool_choice, preset  # noqa: E402
from webui.settings import Settings  # noqa: E402

MIB = 1024 * 1024
PLANNER_GOAL_PCT = 5.0
MEMORY_BACK_GOAL_S = 5.0
UI_CALL_GOAL_S = 0.2
READY_LAG_GOAL_S = 0.5


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


def tree_pids(services: Services, server_id: str) -> list[int]:
    record = services.store.get_server(server_id)
    if record is None:
        return []
    return [p.pid for p in services.supervisor.tree(handle_of(record.pid, record.create_time, record.log_path))]


def device_used_mib(services: Services) -> float:
    return services.gpu.devices()[0].used_bytes / MIB


def start_and_watch(services: Services, spec: ServerSpec, timeout_s: float = 300) -> dict[str, Any]:
    """Start through the Serve service; record phases, READY time and the lag behind /health's first 200."""
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
    while time.time() - t0 < timeout_s:
        snap = services.servers.get(server_id)
        if not phases or phases[-1][0] != snap.phase:
            phases.append((snap.phase, round(time.time() - t0, 2)))
        if snap.state in ("READY", "FAILED", "LOST"):
            break
        time.sleep(0.01)
    ready_seen = time.time()
    done.set()
    watcher.join(2)
    time.sleep(1.5)  # let the sampler (2 Hz) take a reading of the settled server
    memory = services.memory.snapshot()
    pids = set(tree_pids(services, server_id))
    held = [p for p in memory["processes"] if p["pid"] in pids]
    return {
        "id": server_id, "state": snap.state, "hint": snap.hint, "hint_line": snap.hint_line,
        "ready_seconds": snap.ready_seconds, "ready_lag_s": (ready_seen - seen[0]) if seen else None,
        "phases": phases, "model_id": snap.model_id, "gpu_blocks": snap.gpu_blocks, "tree_pids": sorted(pids),
        "held_by": held, "tree_gpu_mib": sum(p["used_mib"] for p in held), "device_used_mib": device_used_mib(services),
        "command": snap.command,
    }


def stop_and_measure(services: Services, server_id: str, idle_mib: float) -> dict[str, Any]:
    """Stop: time the call (it signals and returns), the time until STOPPED, and the "memory_released" event
    the monitor records; then check that event against a fresh NVML reading of our own."""
    pids = tree_pids(services, server_id)
    before = device_used_mib(services)
    t0 = time.monotonic()
    snap = services.servers.stop(server_id)
    stop_s = time.monotonic() - t0
    stopped = services.servers.wait_for(server_id, {"STOPPED", "FAILED"}, 30)
    stopped_s = time.monotonic() - t0
    kind = services.servers.wait_for_event(server_id, {"memory_released", "memory_not_released"}, 90)
    event_seen_s = time.monotonic() - t0
    events = [e for e in services.store.events(server_id) if e.kind == kind]
    released_s = float(events[-1].detail.split()[0]) if kind == "memory_released" and events else None
    fresh_device = device_used_mib(services)  # read after the event: it must already be back
    fresh_pids = [p.pid for p in services.gpu.process_memory() if p.pid in set(pids)]
    gone = not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    return {"state_after_call": snap.state, "state": stopped.state, "detail": stopped.detail,
            "detail_params": stopped.detail_params, "stop_call_s": stop_s, "stopped_s": stopped_s,
            "event": kind, "memory_back_s": released_s, "event_seen_s": event_seen_s,
            "event_honest": kind == "memory_released" and fresh_device < idle_mib + 256 and not fresh_pids,
            "tree_gone": gone, "device_used_before_mib": before, "device_used_after_mib": fresh_device,
            "pids_still_listed": fresh_pids}


def server_checks(services: Services, checks: Checks, label: str, run: dict[str, Any], idle_mib: float,
                  report: dict[str, Any]) -> None:
    """The checks every server gets: READY, lag, phases, attribution, planner, and (later) stop."""
    checks.add(f"{label}: READY through the Serve service", run["state"] == "READY",
               f"{run['state']} after {run['ready_seconds'] or 0:.1f} s {run['hint']} {run['hint_line']}")
    if run["state"] != "READY":
        return
    lag = run["ready_lag_s"]
    checks.add(f"{label}: READY shown after the first /health 200", lag is not None and lag <= READY_LAG_GOAL_S,
               f"{(lag or 0) * 1000:.0f} ms", "<= 500 ms")
    shown = [p for p, _ in run["phases"]]
    checks.add(f"{label}: start-up phases shown", len(set(shown) - {"ready"}) >= 4,
               " → ".join(f"{p} {t:.0f}s" for p, t in run["phases"]))
    owners = {p["owner"] for p in run["held_by"]}
    checks.add(f"{label}: GPU memory attributed to the server's processes (NVML)",
               run["tree_gpu_mib"] > 1000 and owners == {f"server {run['id']}"},
               f"{run['tree_gpu_mib']:,.0f} MiB held by pids {[p['pid'] for p in run['held_by']]} "
               f"(api_server pid {run['tree_pids'][0] if run['tree_pids'] else '?'}), owner {sorted(owners)}")
    compared = services.memory.compare_server(run["id"])
    run["planner"] = compared
    if "error" in compared:
        checks.add(f"{label}: planner against measured", False, str(compared))
        return
    err = compared["error_percent"]
    predicted = compared["predicted"]
    ok = abs(err["total"]) <= PLANNER_GOAL_PCT and err["blocks"] is not None and abs(err["blocks"]) <= PLANNER_GOAL_PCT
    checks.add(f"{label}: planner within 5% of measured", ok,
               f"memory {predicted['total_bytes'] / MIB:,.0f} predicted vs {run['device_used_mib']:,.0f} MiB "
               f"measured ({err['total']:+.1f}%); blocks {predicted['blocks']:,} vs {run['gpu_blocks']:,} "
               f"({err['blocks']:+.1f}%)", "within 5%")
    report.setdefault("planner_table", []).append({
        "server": label, "predicted_mib": predicted["total_bytes"] / MIB, "measured_mib": run["device_used_mib"],
        "error_pct": err["total"], "predicted_blocks": predicted["blocks"], "engine_blocks": run["gpu_blocks"],
        "blocks_error_pct": err["blocks"], "server_tree_mib": run["tree_gpu_mib"]})


def stop_checks(services: Services, checks: Checks, label: str, server_id: str, idle_mib: float) -> dict[str, Any]:
    stop = stop_and_measure(services, server_id, idle_mib)
    back = stop["memory_back_s"]
    checks.add(f"{label}: stop returns at once", stop["stop_call_s"] <= UI_CALL_GOAL_S,
               f"stop call {stop['stop_call_s'] * 1000:.0f} ms ({stop['state_after_call']}), STOPPED after "
               f"{stop['stopped_s']:.2f} s", f"<= {UI_CALL_GOAL_S * 1000:.0f} ms")
    checks.add(f"{label}: stopped, memory released (event)",
               stop["tree_gone"] and stop["event_honest"] and back is not None and back <= MEMORY_BACK_GOAL_S,
               f"{stop['event']} {back if back is None else round(back, 2)} s after the stop; a fresh reading then: "
               f"{stop['device_used_after_mib']:,.0f} MiB (before stop {stop['device_used_before_mib']:,.0f}, idle "
               f"{idle_mib:,.0f}), server pids still listed: {stop['pids_still_listed'] or 'none'}", "<= 5 s, honest")
    return stop


def parallel_shutdown(services: Services, model: Path, idle_mib: float, checks: Checks) -> dict[str, Any]:
    """Two servers on the GPU at once, then the console's own shutdown: both are signalled together and waited
    for together, so it takes one server's stop time, not the sum; the GPU is idle again afterwards."""
    first = services.servers.start(ServerSpec(model_path=str(model), backend="pytorch", cache_max_entry_count=0.3,
                                              port=suggest_port(23733))).server
    second = services.servers.start(ServerSpec(model_path=str(model), backend="pytorch", cache_max_entry_count=0.3,
                                               port=suggest_port(23833))).server
    if first is None or second is None:
        checks.add("shutdown stops servers in parallel", False, "a server was refused")
        return {}
    states = [services.servers.wait_for(s.id, {"READY", "FAILED", "LOST"}, 300).state for s in (first, second)]
    pids = tree_pids(services, first.id) + tree_pids(services, second.id)
    before = device_used_mib(services)
    t0 = time.monotonic()
    services.close()
    took = time.monotonic() - t0
    probe = GpuProbe()
    deadline = time.monotonic() + 10
    while probe.devices()[0].used_bytes / MIB > idle_mib + 256 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = probe.devices()[0].used_bytes / MIB
    probe.close()
    gone = not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    ok = states == ["READY", "READY"] and gone and after <= idle_mib + 256 and took < 5.0
    checks.add("shutdown stops servers in parallel", ok,
               f"2 servers ({', '.join(states)}), {before:,.0f} MiB: console shutdown took {took:.2f} s; processes "
               f"gone: {gone}; GPU then {after:,.0f} MiB (idle {idle_mib:,.0f})", "< 5 s, both stopped")
    return {"states": states, "shutdown_s": took, "before_mib": before, "after_mib": after, "gone": gone}


def sampler_cpu(seconds: float = 10.0, hz: float = 4.0) -> dict[str, Any]:
    """CPU the Memory sampler costs at `hz` on real NVML, before anything else of the console runs."""
    probe = GpuProbe()
    percent, reads = cpu_share(probe, hz, seconds)
    probe.close()
    return {"hz": hz, "seconds": seconds, "core_percent": percent, "reads": reads}


def chat_and_tools_without_parser(services: Services, server_id: str, runs: int, checks: Checks) -> dict[str, Any]:
    out: dict[str, Any] = {}
    endpoint = services.chat.endpoint_for_server(server_id)
    text, stats, _ = services.chat.complete(endpoint, [{"role": "user", "content": "Hello!"}],
                                            SamplingParams(temperature=0.7, max_tokens=32))
    out["reply"] = {"text": text[:200], "stats": stats.as_dict()}
    streamed = stats.usage_reported and stats.completion_tokens > 0 and stats.ttft_s is not None
    checks.add("Chat service: a streamed reply from the api_server", streamed,
               f"TTFT {stats.ttft_s * 1000:.1f} ms, {stats.completion_tokens} tokens (usage reported), "
               f"{stats.tokens_per_s or 0:.0f} tok/s")
    bench = chat_compare(endpoint.base_url, endpoint.api_key, endpoint.model, runs=runs, streams=32,
                         max_tokens=128, concurrent_tokens=128)
    out["chat_benchmark"] = bench
    checks.add("Chat: TTFT overhead against a direct openai client", bench["goals"]["ttft_overhead_ms<=5"],
               f"{bench['ttft_overhead_ms_median']:+.2f} ms at the median (console "
               f"{bench['ttft_console_ms_median']:.1f} ms, direct {bench['ttft_direct_ms_median']:.1f} ms, "
               f"{runs} runs each)", "<= 5 ms")
    checks.add("Chat: decode tokens/s against direct", bench["goals"]["speed_ratio>=0.98"],
               f"ratio {bench['speed_ratio']:.3f} ({bench['tokens_per_s_console_median']:.0f} vs "
               f"{bench['tokens_per_s_direct_median']:.0f} tok/s)", ">= 0.98")
    checks.add("Chat: 32 concurrent streams against direct", bench["goals"]["concurrent_ratio>=0.95"],
               f"ratio {bench['concurrent_ratio']:.3f} ({bench['concurrent_tokens_per_s_console']:.0f} vs "
               f"{bench['concurrent_tokens_per_s_direct']:.0f} tok/s aggregate)", ">= 0.95")
    tools, prompt = preset("add_mul")
    run = new_run(prompt)
    list(services.tool_loop.run(endpoint, run, tools, "auto", SamplingParams(temperature=0.0, max_tokens=32), 2))
    out["tools_without_parser"] = run.as_dict()
    checks.add("Tools without --tool-call-parser: LMDeploy's 400 explained", bool(run.error)
               and run.error["kind"] == "needs_parser", f"{run.error}")
    return out


def tools_with_parser(services: Services, server_id: str, checks: Checks) -> dict[str, Any]:
    """A random model cannot call tools well; prove the console sends them right and handles what comes back."""
    endpoint = services.chat.endpoint_for_server(server_id)
    tools, prompt = preset("add_mul")
    out: dict[str, Any] = {}
    for choice in ("required", "auto", "add"):
        run = new_run(prompt)
        list(services.tool_loop.run(endpoint, run, tools, parse_tool_choice(choice, tools),
                                    SamplingParams(temperature=0.0, max_tokens=48), max_steps=2))
        out[choice] = run.as_dict()
    required = out["required"]
    calls = [c for s in required["steps"] if s["type"] == "model" for c in s["tool_calls"]]
    handled = [s for s in required["steps"] if s["type"] == "tool"]
    ok = all(r["error"] is None or r["error"]["kind"] in ("step_limit",) for r in out.values())
    checks.add("Tools with --tool-call-parser qwen: requests accepted, replies handled", ok and bool(required["steps"]),
               f"required → {len(calls)} parsed call(s) {[c['function']['name'] for c in calls]}, results "
               f"{[(h['ok'], h['result'][:40]) for h in handled]}; auto → "
               f"{'answer' if out['auto']['answer'] is not None else out['auto']['error']}; named add → "
               f"{'answer' if out['add']['answer'] is not None else out['add']['error']}")
    return out


def quantize(services: Services, model: Path, checks: Checks) -> dict[str, Any]:
    from webui.services.awq_progress import read_events
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
    report: dict[str, Any] = {"job": job.as_dict(), "progress_seen": seen}
    if job.state != "SUCCEEDED":
        return report
    layers_seen: dict[str, set[int]] = {}
    for event in read_events(services.settings.jobs_dir / job.id / "progress.jsonl"):
        if "layer" in event:
            layers_seen.setdefault(str(event["phase"]), set()).add(int(event["layer"]))
    checks.add("AWQ progress events: every layer calibrated, smoothed, quantized",
               all(len(layers_seen.get(p, ())) == job.layers for p in ("calibrate", "smooth", "quantize")),
               ", ".join(f"{p} {len(v)}/{job.layers}" for p, v in layers_seen.items())
               + f"; the UI saw {len(seen)} distinct (phase, layer) states")
    checks.add("AWQ peak memory reported", r["peak_gpu_bytes"] > 0,
               f"GPU {r['peak_gpu_bytes'] / MIB:.0f} MiB, RAM {r['peak_ram_bytes'] / MIB:.0f} MiB; "
               f"{r['size_before_bytes'] / MIB:.1f} → {r['size_after_bytes'] / MIB:.1f} MiB (×{r['ratio']})")
    report["output_dir"] = job.output_dir
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--python", default=sys.executable, help="interpreter with lmdeploy")
    parser.add_argument("--runs", type=int, default=10, help="chat benchmark runs per side")
    args = parser.parse_args()
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    checks = Checks()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
                              "backend": "pytorch (TurboMind is not run by this script)"}
    try:
        import lmdeploy

        report["lmdeploy"] = lmdeploy.__version__
    except ImportError:
        report["lmdeploy"] = "not importable here"

    cpu = sampler_cpu()
    report["sampler_cpu"] = cpu
    checks.add("Memory sampler CPU at 4 Hz on real NVML", cpu["core_percent"] <= 1.0,
               f"{cpu['core_percent']:.2f}% of one core ({cpu['reads']} readings in {cpu['seconds']:.1f} s)", "<= 1%")

    work = Path(tempfile.mkdtemp(prefix="lmdeploy-console-gpu-"))
    model = build_tiny_model(work / "models" / "tiny-llama")
    settings = Settings(state_dir=work / "state", model_roots=(work / "models",), lmdeploy_python=args.python)
    services = Services.build(settings)
    report["gpus"] = [d.name for d in services.gpu.devices()]
    idle = device_used_mib(services)
    report["idle_used_mib"] = idle
    try:
        awq = quantize(services, model, checks)
        report["awq"] = awq

        # KV policy 0 at 0.8
        run = start_and_watch(services, ServerSpec(model_path=str(model), backend="pytorch",
                                                   cache_max_entry_count=0.8, port=suggest_port(23333)))
        report["q0_f08"] = run
        server_checks(services, checks, "policy 0, fraction 0.8", run, idle, report)
        if run["state"] == "READY":
            checks.add("model id read from /v1/models", run["model_id"] == str(model), str(run["model_id"]))
            run["stop"] = stop_checks(services, checks, "policy 0, fraction 0.8", run["id"], idle)

        # KV policy 0 at 0.4, no tool parser: chat, benchmark, tools refused, re-attach
        run = start_and_watch(services, ServerSpec(model_path=str(model), backend="pytorch",
                                                   cache_max_entry_count=0.4, port=suggest_port(23433)))
        report["q0_f04"] = run
        server_checks(services, checks, "policy 0, fraction 0.4", run, idle, report)
        if run["state"] == "READY":
            try:
                report["chat"] = chat_and_tools_without_parser(services, run["id"], args.runs, checks)
            except ChatError as exc:
                checks.add("Chat service against the api_server", False, f"{exc.kind}: {exc.message}")
            services.close(keep_servers=True)  # the console exits, keeping the server …
            services = Services.build(settings)  # … and starts again from the same state folder
            snap = services.servers.wait_for(run["id"], {"READY"}, 30)
            events = [e.kind for e in services.store.events(run["id"])]
            checks.add("re-attached after the console's services were rebuilt",
                       snap.state == "READY" and "reattached" in events,
                       f"{snap.state}, pid {snap.pid}, events {events}")
            time.sleep(1.0)
            run["stop"] = stop_checks(services, checks, "policy 0, fraction 0.4 (re-attached)", run["id"], idle)

        # KV policy 8 at 0.4, with a tool-call parser
        run = start_and_watch(services, ServerSpec(model_path=str(model), backend="pytorch", kv_policy="int8",
                                                   cache_max_entry_count=0.4, tool_call_parser="qwen",
                                                   port=suggest_port(23533)))
        report["q8_f04"] = run
        server_checks(services, checks, "policy 8, fraction 0.4", run, idle, report)
        if run["state"] == "READY":
            try:
                report["tools_with_parser"] = tools_with_parser(services, run["id"], checks)
            except ChatError as exc:
                checks.add("Tools with --tool-call-parser", False, f"{exc.kind}: {exc.message}")
            run["stop"] = stop_checks(services, checks, "policy 8, fraction 0.4", run["id"], idle)

        # The AWQ output with KV policy 4 at 0.4
        if awq.get("output_dir"):
            run = start_and_watch(services, ServerSpec(model_path=awq["output_dir"], backend="pytorch",
                                                       model_format="awq", kv_policy="int4", cache_max_entry_count=0.4,
                                                       port=suggest_port(23633)))
            report["awq_q4_f04"] = run
            server_checks(services, checks, "AWQ model, policy 4, fraction 0.4", run, idle, report)
            if run["state"] == "READY":
                run["stop"] = stop_checks(services, checks, "AWQ model, policy 4, fraction 0.4", run["id"], idle)
        history = services.memory.history_csv("1h")
        (out / "memory.csv").write_text(history)
        events = services.memory.events("1h")
        report["events"] = events
        samples = history.count("\n") - 1
        checks.add("Memory service sampled the whole run, with event markers", samples > 100 and len(events) >= 8,
                   f"{samples} samples over {time.time() - started:.0f} s, {len(events)} events")
        report["shutdown"] = parallel_shutdown(services, model, idle, checks)
    finally:
        services.close()
        for log in sorted(settings.log_dir.glob("server-*.log")):
            shutil.copy(log, out / log.name)
        report["checks"] = checks.rows
        report["seconds"] = time.time() - started
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        summary = render_summary(report, checks)
        (out / "summary.md").write_text(summary)
        print("\n" + summary)
    return 1 if checks.failed else 0


def render_summary(report: dict[str, Any], checks: Checks) -> str:
    lines = [f"# GPU check — {report['date']}", "",
             f"GPU: {', '.join(report.get('gpus', [])) or 'none'}; LMDeploy {report['lmdeploy']}; backend "
             f"{report['backend']}; Python {report['python']}; {report.get('seconds', 0):.0f} s in all.", "",
             "| check | result | value | goal |", "|---|---|---|---|"]
    lines += [f"| {r['check']} | {'pass' if r['ok'] else 'FAIL'} | {r['value']} | {r['goal']} |" for r in checks.rows]
    table = report.get("planner_table") or []
    if table:
        lines += ["", "| server | predicted MiB | measured MiB | error | predicted blocks | engine blocks | error |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['server']} | {r['predicted_mib']:,.0f} | {r['measured_mib']:,.0f} | {r['error_pct']:+.1f}% | "
                  f"{r['predicted_blocks']:,} | {r['engine_blocks']:,} | {r['blocks_error_pct']:+.1f}% |"
                  for r in table]
    passed = sum(1 for r in checks.rows if r["ok"])
    lines += ["", f"{passed} of {len(checks.rows)} checks passed."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
