"""Read an api_server log: the start-up phase reached so far, and a plain hint for the errors users hit.

Parsed against LMDeploy 0.18.0's real output (see the project's tests for the recorded lines).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Phase:
    """A start-up step that LMDeploy logs, with how far along start-up it usually is (0..1)."""

    key: str
    pattern: re.Pattern[str]
    progress: float


# In start-up order. Weights are from the pytorch backend's log on an H100 (imports 6 s, engine 7 s,
# executor 20 s, model 2 s, warm-up 14 s); TurboMind prints fewer of them, which simply skips steps.
PHASES: tuple[Phase, ...] = (
    Phase("launching", re.compile(r"$^"), 0.0),
    Phase("engine", re.compile(r"input backend=|Connecting to AsyncRPCServer|turbomind", re.I), 0.15),
    Phase("executor", re.compile(r"Build <\w+> executor"), 0.3),
    Phase("model", re.compile(r"Building Model|Loading weights|load(ing)? model", re.I), 0.55),
    Phase("cache", re.compile(r"Building CacheEngine|Building GraphRunner"), 0.6),
    Phase("warmup", re.compile(r"Warming up model|Starting engine warmup"), 0.65),
    Phase("warmed", re.compile(r"Engine warmup completed"), 0.9),
    Phase("http", re.compile(r"Started server process|Waiting for application startup"), 0.93),
    Phase("listening", re.compile(r"Application startup complete|Uvicorn running on"), 0.97),
)
PHASE_KEYS = tuple(p.key for p in PHASES)

WARMUP_DONE = re.compile(r"Engine warmup completed in ([\d.]+) seconds")
GPU_BLOCKS = re.compile(r"num_gpu_blocks=(\d+)")
BLOCK_SIZE = re.compile(r"\bblock_size=(\d+)")
# the engine's config as it settled, e.g. "updated backend_config=PytorchEngineConfig(… session_len=4096, …"
SESSION_LEN = re.compile(r"backend_config=\w+\(.*?\bsession_len=(\d+)")
# TurboMind's line, from the format string in LMDeploy 0.18's _turbomind library (never seen running here):
# "Object cache budget: {:.2f} MB from free {:.2f} MB and ratio {:.3f}"
CACHE_BUDGET = re.compile(r"Object cache budget: ([\d.]+) MB from free ([\d.]+) MB and ratio ([\d.]+)")


@dataclass(frozen=True)
class Hint:
    """A known failure: which catalog key explains it and the log line that proved it."""

    key: str
    line: str


# (catalog key, pattern) — first match in the log wins, so the specific ones come first.
HINT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hints.no_gpu", re.compile(r"Found no NVIDIA driver|no CUDA GPUs are available|CUDA driver initialization failed|"
                                r"NVIDIA driver on your system is too old", re.I)),
    ("hints.out_of_memory", re.compile(r"CUDA out of memory|OutOfMemoryError|out of memory|"
                                       r"No enough (gpu )?memory|num_gpu_blocks.*(<=|less than) ?0", re.I)),
    ("hints.port_in_use", re.compile(r"address already in use|Errno 98|error while attempting to bind", re.I)),
    ("hints.model_missing", re.compile(r"does not appear to have a file named config\.json|"
                                       r"Repo id must be in the form|is not a local folder and is not a valid model|"
                                       r"Can't load the configuration of|Incorrect path_or_model_id", re.I)),
    ("hints.unsupported_architecture", re.compile(r"(architecture|model)s? .{0,80}(is|are) not supported|"
                                                  r"not supported (by|in) (lmdeploy|turbomind|pytorch)|"
                                                  r"Unsupported (model|architecture)|"
                                                  r"Can not found rewrite for (architectures|auto_map)|"
                                                  r"support has been removed from LMDeploy|"
                                                  r"checkpoint you are trying to load has model type", re.I)),
    ("hints.tools_without_parser", re.compile(r"launch the api_server with --tool-call-parser", re.I)),
    ("hints.turbomind_missing", re.compile(r"No module named ['\"]?(lmdeploy\.turbomind\.)?_turbomind", re.I)),
    ("hints.lmdeploy_missing", re.compile(r"No module named lmdeploy|No module named ['\"]lmdeploy['\"]", re.I)),
)


@dataclass(frozen=True)
class StartupReading:
    """What the log says so far: the last phase reached, warm-up seconds and KV blocks if printed."""

    phase: str
    progress: float
    warmup_seconds: float | None = None
    gpu_blocks: int | None = None
    block_size: int | None = None
    cache_budget_mb: float | None = None  # TurboMind's KV budget
    cache_free_mb: float | None = None
    session_len: int | None = None  # what the engine settled on (the model's own length when not given)


def clean(line: str) -> str:
    """Drop ANSI colours and carriage-return progress bars: keep what a person would read last."""
    return ANSI.sub("", line.rsplit("\r", 1)[-1]).rstrip()


def read_startup(lines: list[str]) -> StartupReading:
    """The furthest phase any line reached (phases may print out of order around progress bars)."""
    best = 0
    warmup: float | None = None
    blocks: int | None = None
    block_size: int | None = None
    budget: tuple[float, float] | None = None
    session_len: int | None = None
    for raw in lines:
        for segment in raw.split("\r"):
            for index in range(len(PHASES) - 1, best, -1):
                if PHASES[index].pattern.search(segment):
                    best = index
                    break
            if m := WARMUP_DONE.search(segment):
                warmup = float(m.group(1))
            if m := GPU_BLOCKS.search(segment):
                blocks = int(m.group(1))
                if bs := BLOCK_SIZE.search(segment):
                    block_size = int(bs.group(1))
            if m := CACHE_BUDGET.search(segment):
                budget = (float(m.group(1)), float(m.group(2)))
            if m := SESSION_LEN.search(segment):
                session_len = int(m.group(1))
    phase = PHASES[best]
    return StartupReading(phase.key, phase.progress, warmup, blocks, block_size,
                          cache_budget_mb=budget[0] if budget else None, cache_free_mb=budget[1] if budget else None,
                          session_len=session_len)


def find_hint(lines: list[str]) -> Hint | None:
    """The first known failure in the log, most specific first."""
    cleaned = [clean(line) for line in lines]
    for key, pattern in HINT_PATTERNS:
        for line in cleaned:
            if pattern.search(line):
                return Hint(key, line.strip()[:300])
    return None


def tail(path: Path | str, max_lines: int = 200, max_bytes: int = 256_000) -> list[str]:
    """The last lines of a log file without reading all of it; a missing file is an empty log."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first one is probably cut
    return list(deque((clean(line) for line in lines), maxlen=max_lines))
