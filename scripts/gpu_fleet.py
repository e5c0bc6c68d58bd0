"""Prove the fleet on a machine with two GPUs, through the console's services (no Gradio).

Usage: python scripts/gpu_fleet.py OUTPUT_DIR [--work DIR] [--requests 512] [--max-tokens 256] [--rounds 5]
                                    [--skip-tp2] [--strategies]

In one run:
1. Two api_servers (pytorch backend, the tiny Llama built offline), one placed on GPU 0 and one on GPU 1, and a
   quantization job placed on GPU 1 while they start: NVML must show each one's memory on its own GPU only.
2. LMDeploy's proxy started by the console, both servers added once READY; the fleet status lists both healthy.
3. The same 32 concurrent streams through the proxy, and split by hand (16 to each server at once), alternated
   for --rounds rounds with an A/A control (the split twice): the proxy's aggregate tokens/s against the split's
   (medians). Both sides are driven by two load workers of 16 streams.
4. Sleep / wake of the GPU-0 server through the ServerManager, timed against NVML, with chat refused while asleep
   and answered after.
5. Both stopped; then a tp 2 server on GPUs 0,1 (executor auto: `mp` where ray is not installed), READY, the
   Memory service's per-GPU prediction against NVML on each GPU, and its stop (goal ≤ 5 s) with memory back on both.
Writes fleet.json to OUTPUT_DIR; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.checks import Checks  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402
from webui.services.container import Services  # noqa: E402
from webui.services.load import LevelSpec, RequestRecord, read_records, summarize, worker_argv  # noqa: E402
from webui.services.serve_spec import ServerSpec  # noqa: E402
from webui.settings import Settings  # noqa: E402

MIB = 1 << 20
MODEL_NAME = "tiny-fleet"
PROXY_GOAL = 0.95
STOP_GOAL_S = 5.0
PREDICTION_GOAL_PCT = 5.0
PROMPTS = ("Tell me about the sea.", "Write a short story about a fox.", "Explain how rain forms.",
           "List ten colours and what they mean.", "请介绍一下长城。", "Describe a busy market in the morning.",
           "What makes a good friend?", "Summarise the history of paper.")


def per_gpu_mib(services: Services) -> dict[int, float]:
    return {d.index: d.used_bytes / MIB for d in services.gpu.devices()}


def owners_by_gpu(services: Services) -> dict[str, set[int]]:
    """owner label → the GPUs NVML shows its processes on (read from the Memory service's snapshot)."""
    time.sleep(1.0)  # a fresh sample (2 Hz)
    found: dict[str, set[int]] = {}
    for p in services.memory.snapshot()["processes"]:
        if p["owner"]:
            found.setdefault(p["owner"], set()).add(int(p["gpu"]))
    return found


def load(targets: list[tuple[str, int]], requests: int, max_tokens: int, work: Path) -> dict[str, Any]:
    """Run one load worker per (base_url, concurrency) at once, `requests` split evenly; the aggregate numbers."""
    procs = []
    outs = []
    share = requests // len(targets)
    for n, (base_url, concurrency) in enumerate(targets):
        messages = tuple(({"role": "user", "content": PROMPTS[(n * share + i) % len(PROMPTS)]},)
                         for i in range(share))
        spec = LevelSpec(base_url=base_url, model=MODEL_NAME, requests=messages, concurrency=concurrency,
                         max_tokens=max_tokens, ignore_eos=True, warmup=0)
        spec_path = Path(tempfile.mkstemp(suffix=".json", dir=work)[1])
        spec_path.write_text(spec.to_json())
        out = spec_path.with_suffix(".jsonl")
        outs.append(out)
        procs.append(subprocess.Popen(worker_argv(spec_path, out)))  # noqa: S603 - an argv list, no shell
    for proc in procs:
        proc.wait(timeout=600)
    # Each worker times from its own start; they start within a fraction of a second of each other, and the
    # aggregate wall time is the longest worker's (a later start is not counted: that favours the split).
    records = [r for out in outs for r in read_records(out)]
    stats = summarize(records, sum(c for _, c in targets)) if records else None
    if stats is None:
        return {"output_tps": 0, "steady_tps": 0, "errors": requests}
    return {**stats.as_dict(), "steady_tps": steady_tps(records)}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def steady_tps(records: list[RequestRecord]) -> float:
    """Tokens/s over the middle 80% of the run (each reply's tokens spread evenly between its first and last
    token): the rate while every stream is busy, without the ramp-up and the last replies' tail, where an
    uneven share of the last requests (which a router cannot avoid and a split by hand has none of) weighs."""
    ok = [r for r in records if r.ok and r.ttft is not None and r.last_token is not None and r.output_tokens]
    if not ok:
        return 0.0
    begin, end = min(r.start for r in ok), max(r.end for r in ok)
    lo, hi = begin + 0.1 * (end - begin), begin + 0.9 * (end - begin)
    tokens = 0.0
    for r in ok:
        first, last = r.start + (r.ttft or 0.0), r.last_token or 0.0
        if last <= first:
            tokens += r.output_tokens if lo <= last <= hi else 0
            continue
        overlap = max(0.0, min(last, hi) - max(first, lo))
        tokens += r.output_tokens * overlap / (last - first)
    return round(tokens / (hi - lo), 3) if hi > lo else 0.0


def wait_memory(services: Services, gpu: int, below: float | None = None, above: float | None = None,
                timeout_s: float = 30.0) -> tuple[float, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        now = per_gpu_mib(services)[gpu]
        if (below is not None and now < below) or (above is not None and now > above):
            return time.monotonic() - t0, now
        time.sleep(0.02)
    return float("inf"), per_gpu_mib(services)[gpu]


def chat_status(base_url: str) -> int:
    import httpx

    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    try:
        return httpx.post(base_url + "/v1/chat/completions", json=body, timeout=60).status_code
    except httpx.HTTPError:
        return 0


def stop_timed(services: Services, server_id: str) -> tuple[float, str | None]:
    t0 = time.monotonic()
    services.servers.stop(server_id)
    services.servers.wait_for(server_id, {"STOPPED", "FAILED"}, 60)
    seconds = time.monotonic() - t0
    return seconds, services.servers.wait_for_event(server_id, {"memory_released", "memory_not_released"}, 60)


def strategies(services: Services, urls: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The proxy restarted with each other routing strategy (its nodes come back from its node file), each
    alternated with the split for --rounds rounds: what the strategy costs against the split."""
    found: dict[str, Any] = {}
    base = services.proxy.snapshot()
    for strategy in ("min_observed_latency", "random"):
        services.proxy.stop()
        services.proxy.wait_for({"STOPPED", "FAILED"}, 30)
        started = services.proxy.start(dataclasses.replace(services.proxy.default_spec(), port=base.port,
                                                           routing_strategy=strategy))
        proxy = services.proxy.wait_for({"READY", "FAILED"}, 120)
        nodes = len(services.proxy.fleet_status().nodes)
        if started.errors or proxy.state != "READY" or nodes != 2:
            found[strategy] = {"error": f"{[e.key for e in started.errors]} {proxy.state} {nodes} nodes"}
            continue
        load([(proxy.base_url, 16), (proxy.base_url, 16)], 64, args.max_tokens, work)
        pairs = []
        for _ in range(args.rounds):
            p = load([(proxy.base_url, 16), (proxy.base_url, 16)], args.requests, args.max_tokens, work)
            s = load([(urls[0], 16), (urls[1], 16)], args.requests, args.max_tokens, work)
            pairs.append((float(p.get("output_tps") or 0), float(s.get("output_tps") or 0),
                          float(p.get("steady_tps") or 0), float(s.get("steady_tps") or 0)))
        ratio = median([a / b for a, b, _, _ in pairs if b])
        steady = median([c / d for _, _, c, d in pairs if d])
        found[strategy] = {"pairs": pairs, "ratio": ratio, "steady_ratio": steady}
        print(f"strategy {strategy}: proxy/split {ratio:.3f} (steady {steady:.3f}) {json.dumps(pairs)}", flush=True)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-tp2", action="store_true")
    parser.add_argument("--strategies", action="store_true", help="also measure the other routing strategies")
    args = parser.parse_args()
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (args.work or out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = work / "models" / "tiny-llama"
    if not (model / "config.json").is_file():
        build_tiny_model(model)
    checks = Checks()
    report: dict[str, Any] = {}
    settings = Settings(state_dir=work / f"state-{int(time.time())}", model_roots=(work / "models",))
    services = Services.build(settings)
    try:
        count = services.gpu.device_count() or 0
        if not checks.add("two GPUs", count >= 2, f"{count} GPUs: {[d.name for d in services.gpu.devices()]}"):
            return 1
        idle = per_gpu_mib(services)
        report["idle_mib"] = idle

        # 1. two servers, one per GPU, and an AWQ job on GPU 1 while they start
        ids = []
        t0 = time.monotonic()
        for gpu in (0, 1):
            spec = ServerSpec(model_path=str(model), backend="pytorch", cache_max_entry_count=0.4, gpus=(gpu,),
                              model_name=MODEL_NAME, port=services.servers.suggest_port())
            started = services.servers.start(spec)
            assert started.server is not None, started.errors
            ids.append(started.server.id)
        job_id = None
        try:
            from webui.services.quantize_spec import AwqSpec

            if "gpu" in AwqSpec.__dataclass_fields__:
                job = services.jobs.submit(AwqSpec(model_path=str(model),
                                                   calib_source="sample", calib_samples=16, calib_seqlen=128,
                                                   device="cuda", gpu=1))  # type: ignore[call-arg]
                job_id = job.job.id if job.job else None
                report["awq_errors"] = [e.key for e in job.errors]
        except Exception as exc:  # the job is a side check: its failure must not hide the fleet's numbers
            report["awq_error"] = repr(exc)
        job_gpus: set[int] = set()
        while job_id and (snap := services.jobs.get(job_id)) is not None and snap.state in ("QUEUED", "RUNNING"):
            job_gpus |= owners_by_gpu(services).get(f"job {job_id}", set())
            if all((s := services.servers.get(i)) and s.state != "STARTING" for i in ids) and job_gpus:
                break
            time.sleep(1.0)
        servers = [services.servers.wait_for(i, {"READY", "FAILED"}, 600) for i in ids]
        ready_s = time.monotonic() - t0
        checks.add("servers on GPU 0 and GPU 1 READY", all(s.state == "READY" for s in servers),
                   f"{[s.state for s in servers]} in {ready_s:.1f} s; commands: "
                   + " | ".join(s.command.splitlines()[0] for s in servers))
        owners = owners_by_gpu(services)
        placed = {s.id: owners.get(f"server {s.id}", set()) for s in servers}
        checks.add("each server's memory on its own GPU only", placed == {ids[0]: {0}, ids[1]: {1}},
                   json.dumps({k: sorted(v) for k, v in placed.items()}))
        if job_id:
            final = services.jobs.wait_for(job_id, {"SUCCEEDED", "FAILED", "CANCELLED", "LOST"}, 300)
            checks.add("AWQ job placed on GPU 1: its memory on GPU 1 only, and it finished",
                       job_gpus == {1} and final.state == "SUCCEEDED", f"GPUs {sorted(job_gpus)}, {final.state}")
        report["servers"] = [s.as_dict() for s in servers]

        # 2. the proxy, both servers added once READY
        proxy = services.proxy.start(services.proxy.default_spec())
        assert not proxy.errors, proxy.errors
        proxy_snap = services.proxy.wait_for({"READY", "FAILED"}, 120)
        checks.add("proxy READY", proxy_snap.state == "READY", f"{proxy_snap.state}: {proxy_snap.command}")
        added = [services.proxy.add_node(i) for i in ids]
        fleet = services.proxy.fleet_status()
        checks.add("both nodes added and healthy", all(a.ok for a in added) and len(fleet.nodes) == 2 and all(
            n.health == 200 for n in fleet.nodes) and not fleet.mixed_models,
                   json.dumps(fleet.as_dict()["nodes"], default=str)[:600])
        report["fleet"] = fleet.as_dict()
        target = services.servers.get(proxy_snap.server_id) if proxy_snap.server_id else None
        checks.add("the proxy is a chat target", target is not None and chat_status(proxy_snap.base_url) == 200,
                   f"server {proxy_snap.server_id}: {target.state if target else '-'}")

        # 3. 32 streams through the proxy against the same split by hand, alternated, with an A/A control
        urls = [s.base_url for s in servers]
        # warm-up: every batch shape compiled
        load([(proxy_snap.base_url, 16), (proxy_snap.base_url, 16)], 64, args.max_tokens, work)
        load([(urls[0], 16), (urls[1], 16)], 64, args.max_tokens, work)
        runs: dict[str, list[float]] = {"proxy": [], "split": [], "split_again": []}
        details: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            # Two load workers in every run (16 streams each), so that the client side is the same: only where the
            # streams go differs (one asyncio process at ~10k chunks/s would be the bottleneck of its own).
            for name, targets in (("proxy", [(proxy_snap.base_url, 16), (proxy_snap.base_url, 16)]),
                                  ("split", [(urls[0], 16), (urls[1], 16)]),
                                  ("split_again", [(urls[0], 16), (urls[1], 16)])):
                stats = load(targets, args.requests, args.max_tokens, work)
                runs[name].append(float(stats.get("output_tps") or 0.0))
                details.append({"run": name, **stats})
        med = {k: median(v) for k, v in runs.items()}
        ratio = med["proxy"] / med["split"] if med["split"] else 0.0
        control = med["split_again"] / med["split"] if med["split"] else 0.0
        steady = {k: median([float(d["steady_tps"]) for d in details if d["run"] == k]) for k in runs}
        report["load"] = {"runs": runs, "medians": med, "ratio": ratio, "aa_control": control,
                          "steady_medians": steady, "details": details}
        checks.add("proxy / split aggregate tokens/s (32 streams)", ratio >= PROXY_GOAL,
                   f"{ratio:.3f} (medians {med['proxy']:,.0f} / {med['split']:,.0f} tok/s; A/A control "
                   f"{control:.3f}; runs {json.dumps(runs)})")
        print(f"steady state (middle 80%): proxy/split {steady['proxy'] / max(steady['split'], 1):.3f}, A/A "
              f"{steady['split_again'] / max(steady['split'], 1):.3f} ({json.dumps(steady)})", flush=True)
        errors = sum(int(d.get("errors") or 0) for d in details)
        checks.add("no request failed under load", errors == 0, f"{errors} errors")
        if args.strategies:
            report["strategies"] = strategies(services, urls, args, work)

        # 4. sleep / wake of the GPU-0 server through the ServerManager
        awake = per_gpu_mib(services)[0]
        t0 = time.monotonic()
        slept = services.servers.sleep(ids[0])
        sleep_call = time.monotonic() - t0
        drop_s, asleep = wait_memory(services, 0, below=awake - (awake - idle[0]) * 0.3)
        chat_asleep = chat_status(urls[0])
        t0 = time.monotonic()
        woke = services.servers.wake(ids[0])
        wake_call = time.monotonic() - t0
        back_s, woken = wait_memory(services, 0, above=awake - 512)
        chat_awake = chat_status(urls[0])
        report["sleep"] = {"awake_mib": awake, "asleep_mib": asleep, "woken_mib": woken, "sleep_call_s": sleep_call,
                           "memory_drop_s": drop_s, "wake_call_s": wake_call, "memory_back_s": back_s,
                           "chat_asleep": chat_asleep, "chat_awake": chat_awake,
                           "errors": [slept.error, woke.error]}
        checks.add("sleep through the ServerManager frees the KV pool", not slept.error and asleep < awake - 1024,
                   f"GPU 0 {awake:,.0f} → {asleep:,.0f} MiB; call {sleep_call:.3f} s; chat while asleep "
                   f"{chat_asleep}")
        checks.add("wake restores it and chat answers", not woke.error and woken > awake - 512 and chat_awake == 200,
                   f"{woken:,.0f} MiB; call {wake_call:.3f} s; memory back after {back_s:.3f} s; chat {chat_awake}")

        # 5. both stopped; a tp 2 server on GPUs 0,1
        stops = [stop_timed(services, i) for i in ids]
        report["single_stops"] = stops
        checks.add("single-GPU servers stop with memory back", all(s < STOP_GOAL_S and e == "memory_released"
                                                                  for s, e in stops), json.dumps(stops))
        if not args.skip_tp2:
            spec = ServerSpec(model_path=str(model), backend="pytorch", cache_max_entry_count=0.4, tp=2, gpus=(0, 1),
                              model_name=MODEL_NAME, port=services.servers.suggest_port())
            note = services.servers.executor_note(spec)
            t0 = time.monotonic()
            started = services.servers.start(spec)
            assert started.server is not None, started.errors
            tp2 = services.servers.wait_for(started.server.id, {"READY", "FAILED"}, 600)
            checks.add("tp 2 server READY", tp2.state == "READY",
                       f"{tp2.state} in {time.monotonic() - t0:.1f} s; note {note or '-'}; "
                       f"{tp2.command.splitlines()[0]} … "
                       f"{[ln for ln in tp2.command.splitlines() if 'executor' in ln]}")
            time.sleep(2.0)
            compared = services.memory.compare_server(tp2.id)
            report["tp2_compare"] = compared
            rows = compared.get("per_gpu") or []
            errs = [r.get("error_percent", {}).get("total") if isinstance(r.get("error_percent"), dict)
                    else r.get("total_error_pct") for r in rows]
            checks.add("tp 2: per-GPU prediction within 5% of NVML on each GPU",
                       len(rows) == 2 and all(e is not None and abs(e) <= PREDICTION_GOAL_PCT for e in errs),
                       json.dumps(rows, default=str)[:900])
            checks.add("tp 2: chat answers", chat_status(tp2.base_url) == 200, tp2.base_url)
            owners = owners_by_gpu(services)
            report["tp2_owners"] = {k: sorted(v) for k, v in owners.items()}
            stop_s, released = stop_timed(services, tp2.id)
            after = per_gpu_mib(services)
            report["tp2_stop"] = {"seconds": stop_s, "event": released, "after_mib": after,
                                  "events": [(e.kind, e.detail) for e in services.store.events(tp2.id)][-6:]}
            checks.add("tp 2: stop ≤ 5 s with memory back on both GPUs",
                       stop_s <= STOP_GOAL_S and released == "memory_released" and all(
                           after[g] < idle[g] + 512 for g in (0, 1)),
                       f"{stop_s:.2f} s, {released}, GPUs now {json.dumps({k: round(v) for k, v in after.items()})}")
        services.proxy.stop()
        services.proxy.wait_for({"STOPPED", "FAILED"}, 30)
    finally:
        services.close()
    report["checks"] = checks.rows
    (out / "fleet.json").write_text(json.dumps(report, indent=1, default=str))
    passed = sum(1 for r in checks.rows if r["ok"])
    print(f"\n{passed} of {len(checks.rows)} checks passed", flush=True)
    return 0 if checks.rows and passed == len(checks.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
