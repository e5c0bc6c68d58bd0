"""A demo guest against the console's own Chat service, side by side on the same server.

Usage: python -m benchmarks.demo_overhead [--base-url URL --api-key KEY] [--runs 20] [--max-tokens 64] [--breakdown]

Without --base-url it starts llama.cpp's server with SmolLM2-135M-Instruct on the CPU (as chat_overhead does).
The server is attached to the console, a demo of it is published (limits high enough never to refuse), and the
guest app is launched on 127.0.0.1. Each run measures, in a rotating order so drift hits every side alike:
- guest (twice, A1 and A2): gradio_client on the guest app's `chat` API, its streamed outputs read as they come,
  as a guest's script (or a browser) reads them;
- console (B): ChatService.stream on the same server, the same prompt, greedy, the same max tokens;
- with --breakdown, also the same `chat` call over raw HTTP (POST /gradio_api/call/chat, then its SSE stream,
  as curl would: Gradio's server without gradio_client) and the demo gate called in-process (no Gradio), which
  split the guest's overhead into the client's, Gradio's server's and the gate's (admission, audit, lookups).
TTFT is the time to the first non-empty reply text; decode tokens/s is (tokens - 1) / (last output - first),
with tokens as the server's count (the console's reply stats; the demo's audit row for the guest).
Goals: guest - console TTFT median <= 20 ms; guest / console decode >= 0.97. A1 against A2 (the same side
measured twice) is printed beside them, so the noise is visible. The exit code is 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.chat_overhead import PROMPT, console_stream, speed, start_llama_server  # noqa: E402
from webui.services import serve as serve_module  # noqa: E402
from webui.services.chat import ChatService, Endpoint  # noqa: E402
from webui.services.container import Services  # noqa: E402
from webui.services.demos import DemoSpec, text_of  # noqa: E402
from webui.settings import Settings  # noqa: E402

TTFT_GOAL_MS = 20.0
SPEED_GOAL = 0.97
MESSAGE = str(PROMPT[-1]["content"])


@dataclass(frozen=True)
class Sample:
    """One streamed reply: seconds to the first text, seconds to the last output, tokens, text pieces seen."""

    ttft: float
    total: float
    tokens: int
    pieces: int

    def as_tuple(self) -> tuple[float, float, int]:
        return self.ttft, self.total, self.tokens


def _reply(history: list[dict[str, Any]]) -> str:
    """The streamed reply so far: the last message's text when it is the assistant's."""
    if history and history[-1].get("role") == "assistant":
        return text_of(history[-1].get("content")) or ""
    return ""


def guest_stream(client: Any, token: str, last_tokens: Callable[[], int]) -> Sample:
    """One guest message through the guest app's `chat` API, its outputs read as they stream."""
    started = time.perf_counter()
    first: float | None = None
    last = started
    shown, pieces, notice = "", 0, ""
    job = client.submit(MESSAGE, [], token, api_name="/chat")
    for output in job:
        now = time.perf_counter()
        history, _box, notice = output
        reply = _reply(history)
        if reply and first is None:
            first = now
        if reply != shown:
            pieces += 1
            shown = reply
        last = now
    if notice:
        raise RuntimeError(f"the demo refused or failed: {notice}")
    return Sample((first or last) - started, last - started, last_tokens(), pieces)


def raw_http_stream(url: str, token: str, last_tokens: Callable[[], int]) -> Sample:
    """The same `chat` call over Gradio's plain HTTP API (join, then read the event's SSE), without gradio_client."""
    parts = urlsplit(url)
    started = time.perf_counter()
    first: float | None = None
    last = started
    shown, pieces, notice = "", 0, ""
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=120)
    try:
        conn.request("POST", "/gradio_api/call/chat", json.dumps({"data": [MESSAGE, [], token]}),
                     {"Content-Type": "application/json"})
        event_id = json.loads(conn.getresponse().read())["event_id"]
        conn.request("GET", f"/gradio_api/call/chat/{event_id}")
        reply_stream = conn.getresponse()
        event = ""
        for raw_line in reply_stream:
            line = raw_line.decode("utf-8", "replace").strip()
            if line.startswith("event:"):
                event = line[6:].strip()
                if event == "error":
                    raise RuntimeError(f"the guest app answered an error: {reply_stream.read()[:200]!r}")
                continue
            if not line.startswith("data:"):
                continue
            now = time.perf_counter()
            history, _box, notice = json.loads(line[5:])
            reply = _reply(history)
            if reply and first is None:
                first = now
            if reply != shown:
                pieces += 1
                shown = reply
            last = now
            if event == "complete":
                break
    finally:
        conn.close()
    if notice:
        raise RuntimeError(f"the demo refused or failed: {notice}")
    return Sample((first or last) - started, last - started, last_tokens(), pieces)


def gate_stream(gate: Any, token: str, last_tokens: Callable[[], int]) -> Sample:
    """The same message through DemoGate in-process: the demo's own cost, without Gradio."""
    started = time.perf_counter()
    first: float | None = None
    pieces = 0
    refused = ""
    for event in gate.chat(token, "bench-gate", MESSAGE, []):
        if event.text:
            pieces += 1
            if first is None:
                first = time.perf_counter()
        if event.done:
            refused = event.refused
    last = time.perf_counter()
    if refused:
        raise RuntimeError(f"the demo refused or failed: {refused}")
    return Sample((first or last) - started, last - started, last_tokens(), pieces)


def console_sample(chat: ChatService, endpoint: Endpoint, max_tokens: int) -> Sample:
    ttft, total, tokens = console_stream(chat, endpoint, max_tokens)
    return Sample(ttft, total, tokens, tokens)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def patch_health() -> Callable[[], None]:
    """llama-cpp-python's server has no /health (404), so an attached one would never be READY, and its
    /v1/models waits behind a running generation (so it cannot stand in): for this benchmark only, a server
    that answers /health at all, even 404, counts as up. Returns the undo."""
    original = serve_module._health  # noqa: SLF001

    def health(base_url: str) -> int | None:
        status = original(base_url)
        return 200 if status == 404 else status

    serve_module._health = health  # noqa: SLF001
    return lambda: setattr(serve_module, "_health", original)


def compare(base_url: str, api_key: str, runs: int, max_tokens: int, breakdown: bool) -> dict[str, Any]:
    """Attach, publish, launch the guest app, run the sides in rotating order; the samples by side."""
    from gradio_client import Client

    from webui.guest_app import build_guest_app

    undo = patch_health()
    folder = tempfile.TemporaryDirectory(prefix="demo-overhead-")
    services = Services.build(Settings(state_dir=Path(folder.name) / "state"))
    app = client = None
    try:
        server = services.servers.attach(base_url, api_key)
        server = services.servers.wait_for(server.id, {"READY"}, 30)
        if server.state != "READY":
            raise SystemExit(f"the attached server is {server.state}, not READY")
        snap, token, errors = services.demos.publish(DemoSpec(
            server_id=server.id, title="Benchmark", temperature=0.0, top_p=1.0, max_new_tokens=max_tokens,
            rate_per_minute=600, max_concurrent=8, max_guests=100))
        if snap is None:
            raise SystemExit(f"publish refused: {errors}")

        def last_tokens() -> int:
            return int(services.store.demo_requests(snap.id, 1)[0]["completion_tokens"] or 0)

        app, kwargs = build_guest_app(services.demos.gate())
        app.queue(default_concurrency_limit=None)
        _, url, _ = app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, allowed_paths=[],
                               **kwargs)
        client = Client(url, verbose=False)
        chat = services.chat
        endpoint = chat.endpoint_for_server(server.id)
        gate = services.demos.gate()
        sides: dict[str, Callable[[], Sample]] = {
            "A1": lambda: guest_stream(client, token, last_tokens),
            "A2": lambda: guest_stream(client, token, last_tokens),
            "B": lambda: console_sample(chat, endpoint, max_tokens),
        }
        if breakdown:
            sides["R"] = lambda: raw_http_stream(url, token, last_tokens)
            sides["C"] = lambda: gate_stream(gate, token, last_tokens)
        for fn in sides.values():  # warm the connection pools, the queue and the server
            fn()
        samples: dict[str, list[Sample]] = {name: [] for name in sides}
        names = list(sides)
        for i in range(runs):
            for name in names[i % len(names):] + names[:i % len(names)]:
                samples[name].append(sides[name]())
        return {"server": endpoint.masked(), "samples": samples}
    finally:
        if client is not None:
            client.close()
        if app is not None:
            with contextlib.redirect_stdout(sys.stderr):  # Gradio says "Closing server..." on stdout
                app.close()
        services.close()
        folder.cleanup()
        undo()


def summarize(samples: dict[str, list[Sample]]) -> dict[str, float]:
    def med(name: str, pick: Callable[[Sample], float]) -> float:
        return statistics.median(pick(s) for s in samples[name])

    guest_ttft_diff = statistics.median((a.ttft - b.ttft) * 1000 for a, b in zip(samples["A1"], samples["B"],
                                                                                   strict=True))
    aa_ttft_diff = statistics.median((a.ttft - b.ttft) * 1000 for a, b in zip(samples["A2"], samples["A1"],
                                                                                strict=True))
    speeds = {name: med(name, lambda s: speed(s.as_tuple())) for name in samples}
    result = {
        "ttft_overhead_ms": guest_ttft_diff,
        "speed_ratio": speeds["A1"] / speeds["B"] if speeds["B"] else 0.0,
        "aa_ttft_diff_ms": aa_ttft_diff,
        "aa_speed_ratio": speeds["A2"] / speeds["A1"] if speeds["A1"] else 0.0,
    }
    for name in ("R", "C"):
        if name in samples:
            result[f"{name}_ttft_overhead_ms"] = statistics.median(
                (x.ttft - b.ttft) * 1000 for x, b in zip(samples[name], samples["B"], strict=True))
            result[f"{name}_speed_ratio"] = speeds[name] / speeds["B"] if speeds["B"] else 0.0
    return result


def print_table(server: dict[str, Any], samples: dict[str, list[Sample]], max_tokens: int) -> None:
    labels = {"A1": "guest (A1)", "A2": "guest (A2)", "B": "console (B)", "R": "guest raw HTTP (R)",
              "C": "gate in-process (C)"}
    print(f"server: {server.get('base_url')} model {server.get('model')}; {len(samples['B'])} runs, "
          f"max tokens {max_tokens}, {os.cpu_count()} CPU cores")
    print(f"{'side':<22}{'TTFT med ms':>12}{'TTFT p90 ms':>12}{'tok/s med':>11}{'tok/s p90':>11}{'tokens':>8}"
          f"{'pieces':>8}")
    for name, rows in samples.items():
        ttfts = [s.ttft * 1000 for s in rows]
        speeds = [speed(s.as_tuple()) for s in rows]
        print(f"{labels[name]:<22}{statistics.median(ttfts):>12.1f}{p90(ttfts):>12.1f}"
              f"{statistics.median(speeds):>11.1f}{p90(speeds):>11.1f}"
              f"{statistics.median(s.tokens for s in rows):>8.0f}{statistics.median(s.pieces for s in rows):>8.0f}")
    r = summarize(samples)
    print(f"TTFT overhead guest - console, median: {r['ttft_overhead_ms']:+.1f} ms (goal <= {TTFT_GOAL_MS:.0f} ms); "
          f"A/A (A2 - A1): {r['aa_ttft_diff_ms']:+.1f} ms")
    print(f"decode ratio guest / console: {r['speed_ratio']:.3f} (goal >= {SPEED_GOAL}); "
          f"A/A (A2 / A1): {r['aa_speed_ratio']:.3f}")
    if "R_ttft_overhead_ms" in r:
        print(f"breakdown against console: raw HTTP TTFT {r['R_ttft_overhead_ms']:+.1f} ms, decode "
              f"{r['R_speed_ratio']:.3f} (Gradio's server + gate); gate in-process TTFT {r['C_ttft_overhead_ms']:+.1f} "
              f"ms, decode {r['C_speed_ratio']:.3f} (the gate alone); A1 - R is gradio_client's own share")
    print(f"{'PASS' if r['ttft_overhead_ms'] <= TTFT_GOAL_MS else 'MISS'} TTFT overhead "
          f"{r['ttft_overhead_ms']:+.1f} ms <= {TTFT_GOAL_MS:.0f} ms")
    print(f"{'PASS' if r['speed_ratio'] >= SPEED_GOAL else 'MISS'} decode ratio {r['speed_ratio']:.3f} >= {SPEED_GOAL}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the guest over raw HTTP and the demo gate in-process (no Gradio)")
    args = parser.parse_args()
    proc = None
    base_url, key = args.base_url, args.api_key
    if not base_url:
        proc, base_url, key = start_llama_server()
    try:
        result = compare(base_url, key, max(args.runs, 1), args.max_tokens, args.breakdown)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
    print_table(result["server"], result["samples"], args.max_tokens)


if __name__ == "__main__":
    main()
