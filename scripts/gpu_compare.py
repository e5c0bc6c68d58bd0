"""Prove the Compare service on a real GPU, through the console's services (no Gradio).

Usage: python scripts/gpu_compare.py OUTPUT_DIR [--part grid|extras|all] [--work DIR] [--requests 32]
                                     [--max-tokens 64] [--concurrency 1,32]

--part grid: builds the tiny Llama offline and its AWQ output on cuda (both kept in --work, reused when there),
  then runs the whole usual grid through the Compare service: original and AWQ × KV none/int8/int4 (six
  configurations, pytorch backend, fraction 0.4), each started, warmed up, measured at each concurrency, its
  perplexity read through /get_ppl, then stopped. Checks: every configuration done, the KV block ratios (×1.9 and
  ×3.8 of policy 0), the perplexity deltas small, the wall time under 10 minutes and the console's own share of
  it (everything that is not the engine starting or stopping, the load itself or /get_ppl) under 5%.
--part extras: the sleep/wake path against stop/start on one server, timed with NVML readings; a comparison
  that reuses that READY server (put to sleep while a TurboQuant (policy 42) configuration runs, woken after);
  and the planner's block prediction for policy 42 against the engine's count.
Writes compare_<part>.json and the grid's table as compare_table.md to OUTPUT_DIR; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.checks import Checks  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402
from webui.services.compare import CompareConfig, CompareRequest, deltas, usual_grid  # noqa: E402
from webui.services.container import Services  # noqa: E402
from webui.services.serve_spec import ServerSpec  # noqa: E402
from webui.settings import Settings  # noqa: E402

MIB = 1 << 20
ENDED = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
GRID_GOAL_S = 600.0
OVERHEAD_GOAL = 0.05
ENGINE_KEYS = ("start_s", "wake_s", "answers_s", "ppl_s", "stop_s", "sleep_s")


def models(work: Path, services: Services, checks: Checks) -> tuple[Path, Path | None]:
    """The tiny model and its AWQ output (cuda), built once and kept in `work`."""
    model = work / "models" / "tiny-llama"
    if not (model / "config.json").is_file():
        build_tiny_model(model)
    awq = work / "models" / "tiny-llama-awq"
    if (awq / "config.json").is_file():
        return model, awq
    from webui.services.quantize_spec import AwqSpec

    spec = AwqSpec(model_path=str(model), output_dir=str(awq), calib_source="sample", calib_samples=32,
                   calib_seqlen=256, device="cuda")
    outcome = services.jobs.submit(spec)
    if outcome.job is None:
        checks.add("AWQ job accepted", False, str(outcome.errors))
        return model, None
    job = services.jobs.wait_for(outcome.job.id, {"SUCCEEDED", "FAILED", "CANCELLED", "LOST"}, 600)
    checks.add("AWQ output on cuda", job.state == "SUCCEEDED", f"{job.state} {job.error[-200:]}")
    return model, Path(job.output_dir) if job.state == "SUCCEEDED" else None


def used_mib(services: Services) -> float:
    return sum(d.used_bytes for d in services.gpu.devices()) / MIB


def console_share(config: dict[str, Any]) -> tuple[float, float]:
    """(seconds of the configuration, seconds that were not the engine or the load): the console's own part."""
    timings = config.get("timings") or {}
    total = float(timings.get("total_s") or 0.0)
    engine = sum(float(timings.get(k) or 0.0) for k in ENGINE_KEYS)
    load = sum(float(v) for k, v in timings.items() if k.startswith("level_"))
    return total, max(0.0, total - engine - load)


def grid(services: Services, model: Path, awq: Path | None, args: argparse.Namespace,
         checks: Checks) -> dict[str, Any]:
    configs = [c for c in usual_grid(str(model), str(awq or ""), backend="pytorch", cache_max_entry_count=0.4)
               if c.spec is not None and c.spec.kv_policy in ("none", "int8", "int4")]
    request = CompareRequest(configs=tuple(configs), concurrency=args.concurrency,
                             requests_per_level=args.requests, max_new_tokens=args.max_tokens, answers=2)
    t0 = time.monotonic()
    snap = services.compare.submit(request)
    if isinstance(snap, list):
        checks.add("grid accepted", False, str(snap))
        return {}
    done = services.compare.wait_for(snap.id, ENDED, 1800)
    wall = time.monotonic() - t0
    result = services.compare.result(snap.id) or {}
    rows = result.get("configs", [])
    checks.add("grid: every configuration measured", done.state == "SUCCEEDED" and all(
        c.get("status") == "done" for c in rows), f"{done.state}: " + ", ".join(
        f"{c.get('label')}={c.get('status')}" for c in rows))
    found = deltas(rows, 0)
    by_label = {c["label"]: (c, d) for c, d in zip(rows, found, strict=False)}
    for tag in ("orig", "awq"):
        for policy, goal in (("int8", 1.94), ("int4", 3.76)):
            pair = by_label.get(f"{tag} · KV {policy}")
            base = by_label.get(f"{tag} · KV none")
            if pair and base and pair[0].get("kv_tokens") and base[0].get("kv_tokens"):
                ratio = pair[0]["kv_tokens"] / base[0]["kv_tokens"]
                checks.add(f"grid: {tag} KV {policy} blocks ×{goal}", abs(ratio / goal - 1) < 0.05, f"×{ratio:.3f}")
    ppl = [d.get("perplexity_pct") for d in found if d.get("perplexity_pct") is not None]
    checks.add("grid: perplexity read on every configuration", len(ppl) == len(rows),
               ", ".join(f"{p:+.2f}%" for p in ppl))
    checks.add("grid: wall time", wall < GRID_GOAL_S, f"{wall:.0f} s (goal < {GRID_GOAL_S:.0f} s)")
    totals = [console_share(c) for c in rows]
    own = sum(o for _, o in totals)
    share = own / wall if wall else 1.0
    checks.add("grid: the console's own share of the wall time", share < OVERHEAD_GOAL,
               f"{own:.1f} s of {wall:.0f} s = {share * 100:.2f}% (goal < {OVERHEAD_GOAL * 100:.0f}%)")
    return {"id": snap.id, "wall_s": wall, "console_own_s": own, "console_share": share, "result": result}


def table(result: dict[str, Any], concurrency: tuple[int, ...]) -> str:
    """The grid as the README shows it."""
    rows = result.get("configs", [])
    found = deltas(rows, 0)
    head = ["configuration", "peak GPU MiB", "KV blocks", "× blocks"] + \
        [f"tok/s @{c}" for c in concurrency] + [f"TTFT p50 @{c} ms" for c in concurrency] + ["perplexity", "Δ ppl"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, d in zip(rows, found, strict=False):
        levels = {lv["concurrency"]: lv for lv in c.get("levels") or []}
        ppl = (c.get("perplexity") or {}).get("perplexity")
        cells = [c.get("label"), f"{(c.get('peak_gpu_bytes') or 0) / MIB:,.0f}", f"{c.get('gpu_blocks') or 0:,}",
                 f"{d.get('kv_tokens_ratio') or 0:.2f}"]
        cells += [f"{(levels.get(k) or {}).get('output_tps') or 0:,.0f}" for k in concurrency]
        cells += [f"{(levels.get(k) or {}).get('ttft_p50_ms') or 0:,.1f}" for k in concurrency]
        cells += [f"{ppl:.4f}" if ppl else "-", f"{d.get('perplexity_pct') or 0:+.2f}%"]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(lines)


def wait_memory(services: Services, below: float | None = None, above: float | None = None,
                timeout_s: float = 30.0) -> tuple[float, float]:
    """(seconds until NVML shows the device under `below` / over `above`, the reading then)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        now = used_mib(services)
        if (below is not None and now < below) or (above is not None and now > above):
            return time.monotonic() - t0, now
        time.sleep(0.02)
    return float("inf"), used_mib(services)


def chat_status(base_url: str, model_id: str) -> int:
    import httpx

    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    try:
        return httpx.post(base_url + "/v1/chat/completions", json=body, timeout=60).status_code
    except httpx.HTTPError:
        return 0


def extras(services: Services, model: Path, checks: Checks) -> dict[str, Any]:
    report: dict[str, Any] = {}
    idle = used_mib(services)
    spec = ServerSpec(model_path=str(model), backend="pytorch", cache_max_entry_count=0.4,
                      port=services.servers.suggest_port())
    t0 = time.monotonic()
    started = services.servers.start(spec)
    assert started.server is not None, started.errors
    server = services.servers.wait_for(started.server.id, {"READY", "FAILED"}, 600)
    start_s = time.monotonic() - t0
    checks.add("server READY", server.state == "READY", f"{server.state} in {start_s:.1f} s")
    time.sleep(1.0)
    awake = used_mib(services)
    # sleep / wake, timed against NVML
    t0 = time.monotonic()
    asleep_outcome = services.servers.sleep(server.id)  # the Serve tab's Sleep
    slept = not asleep_outcome.error and asleep_outcome.server.state == "SLEEPING"
    sleep_call = time.monotonic() - t0
    drop_s, asleep = wait_memory(services, below=awake - (awake - idle) * 0.5)
    status_asleep = chat_status(server.base_url, server.model_id)
    t0 = time.monotonic()
    awake_outcome = services.servers.wake(server.id)
    woke = not awake_outcome.error and awake_outcome.server.state == "READY"
    wake_call = time.monotonic() - t0
    back_s, woken = wait_memory(services, above=awake - 512)
    status_awake = chat_status(server.base_url, server.model_id)
    report["sleep"] = {"awake_mib": awake, "asleep_mib": asleep, "woken_mib": woken, "sleep_call_s": sleep_call,
                       "memory_drop_s": drop_s, "wake_call_s": wake_call, "memory_back_s": back_s,
                       "chat_asleep": status_asleep, "chat_awake": status_awake}
    checks.add("sleep frees the KV pool", slept and asleep < awake - 1024,
               f"{awake:,.0f} → {asleep:,.0f} MiB, call {sleep_call:.3f} s, memory down after {drop_s:.3f} s")
    checks.add("chat while asleep is refused, after wake it answers", status_asleep != 200 and status_awake == 200,
               f"asleep {status_asleep}, awake {status_awake}")
    checks.add("wake restores the memory", woke and woken > awake - 512,
               f"{woken:,.0f} MiB, call {wake_call:.3f} s, memory back after {back_s:.3f} s")
    # a comparison that reuses the READY server: asleep while TurboQuant (42) runs, woken after
    turbo = ServerSpec(model_path=str(model), backend="pytorch", kv_policy="turbo_quant", cache_max_entry_count=0.4)
    request = CompareRequest(configs=(CompareConfig(label="reused · KV none", server_id=server.id),
                                      CompareConfig(label="KV turbo_quant", spec=turbo)),
                             concurrency=(1, 8), requests_per_level=16, max_new_tokens=64, answers=1,
                             keep_servers=True)
    snap = services.compare.submit(request)
    assert not isinstance(snap, list), snap
    asleep_during = None
    planned: dict[str, Any] = {}
    while (current := services.compare.get(snap.id)).state not in ENDED:
        if len(current.configs) > 1 and current.configs[1].get("status") == "measuring" and asleep_during is None:
            import httpx

            asleep_during = httpx.get(server.base_url + "/is_sleeping", timeout=5).json().get("is_sleeping")
            # the planner as the engine saw the GPU at its start: the reused server asleep, nothing else
            planned = services.memory.compare_server(current.configs[1]["server_id"])
        time.sleep(0.2)
    result = services.compare.result(snap.id) or {}
    rows = result.get("configs", [])
    report["compare"] = result
    checks.add("compare with a reused server: both measured", current.state == "SUCCEEDED" and all(
        c.get("status") == "done" for c in rows), f"{current.state}: {[c.get('status') for c in rows]}")
    checks.add("the reused server slept while the other ran, and is awake after", asleep_during is True and
               chat_status(server.base_url, server.model_id) == 200, f"asleep during: {asleep_during}")
    if len(rows) == 2 and rows[1].get("server_id"):
        turbo_id = rows[1]["server_id"]
        error = (planned.get("error_percent") or {}).get("blocks")
        checks.add("policy 42: the planner's blocks against the engine's", error is not None and abs(error) < 2.0,
                   f"engine {rows[1].get('gpu_blocks'):,}, predicted {planned['predicted']['blocks']:,} "
                   f"({error:+.2f}%), ×{rows[1]['gpu_blocks'] / max(rows[0].get('gpu_blocks') or 1, 1):.2f} of "
                   f"policy 0")
        report["turbo_planner"] = planned
        services.servers.stop(turbo_id)
        services.servers.wait_for(turbo_id, {"STOPPED", "FAILED"}, 60)
        services.servers.wait_for_event(turbo_id, {"memory_released", "memory_not_released"}, 60)
    # stop and start again: the path sleep/wake replaces
    t0 = time.monotonic()
    services.servers.stop(server.id)
    services.servers.wait_for(server.id, {"STOPPED", "FAILED"}, 60)
    services.servers.wait_for_event(server.id, {"memory_released", "memory_not_released"}, 60)
    stop_s = time.monotonic() - t0
    t0 = time.monotonic()
    services.servers.restart(server.id)
    again = services.servers.wait_for(server.id, {"READY", "FAILED"}, 600)
    restart_s = time.monotonic() - t0
    report["stop_start"] = {"stop_s": stop_s, "start_s": restart_s, "state": again.state}
    sleep_wake = sleep_call + drop_s + wake_call + back_s
    checks.add("sleep/wake against stop/start", again.state == "READY" and sleep_wake < restart_s,
               f"sleep+wake {sleep_wake:.2f} s against stop {stop_s:.2f} s + start {restart_s:.1f} s")
    services.servers.stop(server.id)
    services.servers.wait_for(server.id, {"STOPPED", "FAILED"}, 60)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--part", choices=("grid", "extras", "all"), default="all")
    parser.add_argument("--work", type=Path, default=None, help="where the models are built and kept")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,32")
    args = parser.parse_args()
    args.concurrency = tuple(int(c) for c in args.concurrency.split(","))
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (args.work or out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    checks = Checks()
    settings = Settings(state_dir=work / f"state-{args.part}-{int(time.time())}", model_roots=(work / "models",))
    services = Services.build(settings)
    report: dict[str, Any] = {}
    try:
        model, awq = models(work, services, checks)
        if args.part in ("grid", "all"):
            report["grid"] = grid(services, model, awq, args, checks)
            if report["grid"]:
                (out / "compare_table.md").write_text(table(report["grid"]["result"], args.concurrency) + "\n")
                print(table(report["grid"]["result"], args.concurrency), flush=True)
        if args.part in ("extras", "all"):
            report["extras"] = extras(services, model, checks)
    finally:
        services.close()
    report["checks"] = checks.rows
    (out / f"compare_{args.part}.json").write_text(json.dumps(report, indent=1, default=str))
    passed = sum(1 for r in checks.rows if r["ok"])
    print(f"\n{passed} of {len(checks.rows)} checks passed", flush=True)
    return 0 if checks.rows and passed == len(checks.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
