"""One level of load against an OpenAI-compatible server: its spec, its worker's command, and its statistics.

The requests are sent by a child process (webui/workers/load_worker.py), not by the console: the console's own
threads (Gradio, the NVML sampler, the monitors) would otherwise share a GIL with the clock that times each token.
The worker writes one JSON line per finished request; this module reads them back and summarizes them with the
definitions the field's load generators use (TTFT from the request to the first content; inter-token latency
as (last token - first token) / (output tokens - 1) per request; throughput over the level's wall time).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

API_KEY_ENV = "LMDEPLOY_CONSOLE_API_KEY"


@dataclass(frozen=True)
class LevelSpec:
    """Everything the worker needs for one level; the API key travels in its environment, never in this file."""

    base_url: str  # without /v1
    model: str
    requests: tuple[tuple[dict[str, str], ...], ...]  # one message list per request, in sending order
    concurrency: int
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = 0
    ignore_eos: bool = False  # LMDeploy's extension: every reply runs to max_tokens, so configurations compare
    warmup: int = 0  # requests sent at the level's concurrency before the measured ones, not recorded
    timeout_s: float = 300.0

    def to_json(self) -> str:
        data = asdict(self)
        data["requests"] = [list(messages) for messages in self.requests]
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> LevelSpec:
        data = json.loads(text)
        data["requests"] = tuple(tuple(dict(m) for m in messages) for messages in data["requests"])
        return cls(**data)


def bearer(key: str) -> dict[str, str]:
    """The Authorization header of a server's API key (none without one)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def worker_argv(spec_path: Path, out_path: Path, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "webui.workers.load_worker", str(spec_path), str(out_path)]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the worker saw it; times in seconds from the level's start (monotonic clock)."""

    index: int
    start: float
    end: float
    ttft: float | None = None
    last_token: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    tokens_from_usage: bool = True
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def itl(self) -> float | None:
        """Mean time between tokens after the first (None for replies of one token)."""
        if self.ttft is None or self.last_token is None or self.output_tokens < 2:
            return None
        return max(0.0, self.last_token - (self.start + self.ttft)) / (self.output_tokens - 1)


def read_records(path: Path) -> list[RequestRecord]:
    """The worker's lines; a half-written last line (the worker was killed mid-write) is skipped."""
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "index" in data:
            records.append(RequestRecord(**{k: v for k, v in data.items() if k in RequestRecord.__annotations__}))
    return records


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class LevelStats:
    """What one level measured; latencies in milliseconds, None where nothing could be measured."""

    concurrency: int
    requests: int
    ok: int
    errors: int
    wall_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    itl_p95_ms: float | None
    output_tokens: int
    output_tps: float | None
    rps: float | None
    tokens_from_usage: bool
    first_errors: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["first_errors"] = list(self.first_errors)
        return data


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 3)


def summarize(records: Iterable[RequestRecord], concurrency: int) -> LevelStats:
    """The level's numbers: wall time from the first request sent to the last reply finished."""
    records = list(records)
    ok = [r for r in records if r.ok]
    wall = (max(r.end for r in records) - min(r.start for r in records)) if records else 0.0
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [v for r in ok if (v := r.itl) is not None]
    tokens = sum(r.output_tokens for r in ok)
    errors = [r.error for r in records if not r.ok]
    return LevelStats(
        concurrency=concurrency, requests=len(records), ok=len(ok), errors=len(errors), wall_s=round(wall, 4),
        ttft_p50_ms=_ms(percentile(ttfts, 50)), ttft_p95_ms=_ms(percentile(ttfts, 95)),
        itl_p50_ms=_ms(percentile(itls, 50)), itl_p95_ms=_ms(percentile(itls, 95)),
        output_tokens=tokens, output_tps=round(tokens / wall, 3) if wall > 0 and ok else None,
        rps=round(len(ok) / wall, 4) if wall > 0 and ok else None,
        tokens_from_usage=all(r.tokens_from_usage for r in ok),
        first_errors=tuple(dict.fromkeys(errors))[:3],
    )
