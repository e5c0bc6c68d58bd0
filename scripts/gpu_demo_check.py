"""Prove shared demos against a real LMDeploy api_server on a GPU, through the console's services (no Gradio).

Usage: python scripts/gpu_demo_check.py OUTPUT_DIR [--runs 20] [--max-tokens 128]

1. builds the tiny Llama offline (tests/tiny_model.py) and starts an api_server (pytorch backend) READY;
2. publishes a demo and compares a guest's reply through the demo gate with the console's own Chat service,
   interleaved, same prompt and length: time to first token (overhead, median) and decode tokens/s (ratio),
   with an A/A control (the gate measured twice) beside it;
3. revokes a demo while a guest's reply streams: the stream ends and the link says the demo has ended;
4. 40 guests at once against tight limits: refusals by rate and by max tokens, no errors, the owner's own chat
   still answers;
5. stops the server: the demo's page says "back soon".
Writes demo_check.json to OUTPUT_DIR and prints PASS/FAIL per check; exits 0 only if every check passed.
The HTTP layer of the guest app (Gradio) is measured on the CPU by benchmarks/demo_overhead.py; Gradio does
not fit on the GPU machine beside LMDeploy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.checks import Checks  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402
from webui.services.chat import SamplingParams  # noqa: E402
from webui.services.container import Services  # noqa: E402
from webui.services.demos import DemoGate, DemoSpec  # noqa: E402
from webui.services.serve_spec import ServerSpec, suggest_port  # noqa: E402
from webui.settings import Settings  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper and the sea."
READY_TIMEOUT_S = 600.0


def timed(pieces: Iterator[str]) -> tuple[float | None, float | None, int]:
    """(TTFT s, decode pieces/s, pieces) of one reply's text pieces, timed as they arrive."""
    started = time.perf_counter()
    first = last = None
    count = 0
    for _piece in pieces:
        now = time.perf_counter()
        first = first if first is not None else now - started
        last = now - started
        count += 1
    if first is None or last is None or count < 2 or last <= first:
        return first, None, count
    return first, (count - 1) / (last - first), count


def guest_reply(gate: DemoGate, token: str, guest: str) -> tuple[float | None, float | None, int]:
    """A guest's reply through the demo gate, as the guest app sees it."""
    return timed(e.text for e in gate.chat(token, guest, PROMPT, []) if e.text)


def console_reply(services: Services, server_id: str, max_tokens: int) -> tuple[float | None, float | None, int]:
    """The same through the console's own Chat service (pieces counted the same way)."""
    endpoint = services.chat.endpoint_for_server(server_id)
    return timed(e.content for e in services.chat.stream(endpoint, [{"role": "user", "content": PROMPT}],
                                                         SamplingParams(temperature=0.7, max_tokens=max_tokens))
                 if e.content)


def median(values: list[float | None]) -> float:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else float("nan")


def run(out: Path, runs: int, max_tokens: int, checks: Checks) -> dict[str, Any]:
    model = build_tiny_model(out / "work" / "tiny-chat")
    services = Services.build(Settings(state_dir=out / "state", model_roots=(model.parent,)))
    report: dict[str, Any] = {}
    try:
        started = services.servers.start(ServerSpec(model_path=str(model), backend="pytorch",
                                                    cache_max_entry_count=0.4, port=suggest_port(24133)))
        assert started.server is not None, started.errors
        server_id = started.server.id
        snap = services.servers.wait_for(server_id, {"READY", "FAILED", "LOST"}, READY_TIMEOUT_S)
        if not checks.add("server READY", snap.state == "READY", f"{snap.state}"):
            return report
        demos = services.demos
        gate = demos.gate()
        _, token, errors = demos.publish(DemoSpec(server_id=server_id, title="GPU demo", temperature=0.7,
                                                  max_new_tokens=max_tokens, rate_per_minute=600, max_concurrent=8))
        checks.add("demo published", bool(token), f"errors {errors}")

        # 2. overhead, interleaved, with an A/A control (the gate twice)
        guest_reply(gate, token, "warm")
        console_reply(services, server_id, max_tokens)
        sides: dict[str, list[tuple[float | None, float | None, int]]] = {"guest": [], "guest_again": [],
                                                                         "console": []}
        for n in range(runs):
            order = ("guest", "console", "guest_again") if n % 2 == 0 else ("console", "guest_again", "guest")
            for side in order:
                sides[side].append(console_reply(services, server_id, max_tokens) if side == "console"
                                   else guest_reply(gate, token, f"bench-{side}"))
        ttft = {k: median([r[0] for r in v]) * 1000 for k, v in sides.items()}
        tps = {k: median([r[1] for r in v]) for k, v in sides.items()}
        report["overhead"] = {"ttft_ms": ttft, "decode_tps": tps, "runs": runs, "max_tokens": max_tokens}
        checks.add("guest TTFT overhead ≤ 20 ms (median)", ttft["guest"] - ttft["console"] <= 20,
                   f"guest {ttft['guest']:.1f} ms, console {ttft['console']:.1f} ms, A/A guest again "
                   f"{ttft['guest_again']:.1f} ms")
        checks.add("guest decode ≥ 0.97 × console", tps["guest"] / tps["console"] >= 0.97,
                   f"ratio {tps['guest'] / tps['console']:.3f} ({tps['guest']:.0f} / {tps['console']:.0f} pieces/s); "
                   f"A/A {tps['guest_again'] / tps['guest']:.3f}")

        # 3. revoke while a reply streams
        _, live, _ = demos.publish(DemoSpec(server_id=server_id, title="revoke me", max_new_tokens=2048))
        demo_id = next(d.id for d in demos.snapshots() if d.spec.get("title") == "revoke me")
        stream = gate.chat(live, "g-revoke", PROMPT, [])
        next(stream)
        at = time.perf_counter()
        demos.revoke(demo_id)
        rest = list(stream)
        ended_s = time.perf_counter() - at
        checks.add("revoke closes the open stream", rest[-1].done and rest[-1].refused in ("ended", "stopped")
                   and ended_s < 2.0, f"ended {ended_s * 1000:.0f} ms after revoke ({rest[-1].refused}); link: "
                   f"{gate.view(live).reason}")

        # 4. 40 guests at once against tight limits
        _, tight, _ = demos.publish(DemoSpec(server_id=server_id, title="tight", max_new_tokens=64,
                                             rate_per_minute=2, max_concurrent=8, max_guests=30))
        outcomes: list[str] = []
        lock = threading.Lock()

        def guest(n: int) -> None:
            for _ in range(3):
                events = list(gate.chat(tight, f"guest-{n}", "Hello", [], max_tokens=64 if n % 5 else 4096))
                with lock:
                    outcomes.append(events[-1].refused or "ok")

        threads = [threading.Thread(target=guest, args=(n,)) for n in range(40)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        owner = console_reply(services, server_id, 32)
        for t in threads:
            t.join(120)
        counts = {k: outcomes.count(k) for k in sorted(set(outcomes))}
        report["forty_guests"] = {"outcomes": counts, "seconds": time.perf_counter() - began,
                                  "owner_ttft_ms": (owner[0] or 0) * 1000}
        checks.add("40 guests: clear refusals, no errors, the owner still chats",
                   len(outcomes) == 120 and counts.get("tokens") == 24 and "error" not in counts
                   and owner[2] > 0, f"{counts}; owner's reply {owner[2]} pieces, TTFT {(owner[0] or 0) * 1000:.0f} ms")

        # 5. the server stops: back soon
        services.servers.stop(server_id)
        services.servers.wait_for(server_id, {"STOPPED", "FAILED", "LOST"}, 60)
        checks.add("stopped server: the demo says back soon", gate.view(token).reason == "back_soon",
                   gate.view(token).reason)
        refusal = [e.refused for e in gate.chat(token, "late", "hi", [])]
        checks.add("a guest's message then gets words, not a stack trace", refusal == ["back_soon"], str(refusal))
    finally:
        services.close()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    checks = Checks()
    report = run(out, args.runs, args.max_tokens, checks)
    passed = sum(1 for r in checks.rows if r["ok"])
    report["checks"] = checks.rows
    (out / "demo_check.json").write_text(json.dumps(report, indent=2))
    print(f"\n{passed} of {len(checks.rows)} checks passed", flush=True)
    return 0 if checks.rows and passed == len(checks.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
