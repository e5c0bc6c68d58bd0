"""Sends one level of chat requests to an OpenAI-compatible server and writes one JSON line per finished request.

Run as `python -m webui.workers.load_worker SPEC.json OUT.jsonl` (the API key, if any, in the environment).
Closed loop: `concurrency` requests are in flight until all are sent. Each reply is streamed, so the first
content chunk times TTFT; output tokens come from the server's `usage` (one chunk can carry several tokens
under load), counted from chunks only where a server sends no usage. A failed request is a record with its
error, never an exception that ends the level.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import httpx

from webui.services.load import API_KEY_ENV, LevelSpec, RequestRecord, bearer


def _body(spec: LevelSpec, messages: tuple[dict[str, str], ...]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": spec.model, "messages": list(messages), "max_tokens": spec.max_tokens,
                            "temperature": spec.temperature, "stream": True,
                            "stream_options": {"include_usage": True}}
    if spec.seed is not None:
        body["seed"] = spec.seed
    if spec.ignore_eos:
        body["ignore_eos"] = True
    return body


def _error_text(status: int, raw: bytes) -> str:
    try:
        data = json.loads(raw)
        message = data.get("message") or (data.get("error") or {}).get("message") or data.get("detail") or raw[:200]
    except (ValueError, AttributeError):
        message = raw[:200].decode("utf-8", "replace")
    return f"HTTP {status}: {str(message)[:300]}"


async def one_request(client: httpx.AsyncClient, spec: LevelSpec, index: int, t0: float) -> RequestRecord:
    """One streamed chat request, timed against the level's start `t0`."""
    start = time.monotonic() - t0
    ttft = last = None
    chunks = 0
    usage: dict[str, Any] = {}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=_body(spec, spec.requests[index])) as resp:
            if resp.status_code != 200:
                raw = await resp.aread()
                return RequestRecord(index, start, time.monotonic() - t0, error=_error_text(resp.status_code, raw))
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if "error" in chunk and not chunk.get("choices"):
                    err = chunk["error"]
                    message = err.get("message") if isinstance(err, dict) else err
                    return RequestRecord(index, start, time.monotonic() - t0, error=f"stream error: {message}"[:300])
                for choice in chunk.get("choices") or ():
                    if choice.get("finish_reason") in ("error", "abort"):  # the engine gave up on this request
                        return RequestRecord(index, start, time.monotonic() - t0,
                                             error=f"finish_reason {choice['finish_reason']}")
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                        now = time.monotonic() - t0
                        if ttft is None:
                            ttft = now - start
                        last = now
                        chunks += 1
    except (httpx.HTTPError, OSError) as exc:
        return RequestRecord(index, start, time.monotonic() - t0, error=f"{type(exc).__name__}: {exc}"[:300])
    end = time.monotonic() - t0
    completion = usage.get("completion_tokens")
    if ttft is None and not completion:
        return RequestRecord(index, start, end, error="no content in the reply")
    # tokens that decode to no text yet (a random model's half UTF-8 characters) stream nothing: the reply
    # still counts, by the server's usage, without a first-token time
    return RequestRecord(index, start, end, ttft=ttft, last_token=last,
                         output_tokens=int(completion) if completion else chunks,
                         prompt_tokens=int(usage.get("prompt_tokens") or 0), tokens_from_usage=bool(completion))


async def run_level(spec: LevelSpec, out: TextIO | None = None, api_key: str = "") -> list[RequestRecord]:
    """The warm-up (not recorded), then every request with at most `concurrency` in flight."""
    headers = bearer(api_key)
    limits = httpx.Limits(max_connections=spec.concurrency + 1, max_keepalive_connections=spec.concurrency + 1)
    timeout = httpx.Timeout(spec.timeout_s, connect=10.0)
    records: list[RequestRecord] = []
    async with httpx.AsyncClient(base_url=spec.base_url, headers=headers, limits=limits, timeout=timeout) as client:
        gate = asyncio.Semaphore(spec.concurrency)

        async def warm(index: int) -> None:
            async with gate:
                await one_request(client, spec, index, time.monotonic())

        # at the level's own concurrency: a batch shape the engine has not run yet (kernels compiled, graphs
        # captured on first use) would otherwise be timed in the first measured wave
        await asyncio.gather(*(warm(i % len(spec.requests)) for i in range(spec.warmup if spec.requests else 0)))
        t0 = time.monotonic()

        async def send(index: int) -> None:
            async with gate:
                record = await one_request(client, spec, index, t0)
            records.append(record)
            if out is not None:
                out.write(json.dumps(asdict(record)) + "\n")
                out.flush()

        await asyncio.gather(*(send(i) for i in range(len(spec.requests))))
    return records


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m webui.workers.load_worker SPEC.json OUT.jsonl", file=sys.stderr)
        return 2
    spec = LevelSpec.from_json(Path(argv[0]).read_text(encoding="utf-8"))
    with open(argv[1], "a", encoding="utf-8") as out:
        records = asyncio.run(run_level(spec, out, os.environ.get(API_KEY_ENV, "")))
    errors = sum(1 for r in records if not r.ok)
    print(json.dumps({"finished": len(records), "errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
