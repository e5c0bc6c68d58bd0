"""The console's model download against `huggingface_hub`'s own `snapshot_download`, side by side.

Usage: python -m benchmarks.download_speed [--rounds 5] [--shards 4] [--shard-mib 128] [--throttle-mib 40]

A model-shaped repo (config, tokenizer files, N random weight shards; 4 × 128 MiB by default, so the
transfer and not the process starts decides the time, and a run stays near 75 s on two cores) is served by
the local hub endpoint (tests/hub_endpoint.py) in a child process, so the server shares no GIL with the side
being measured; it throttles each connection, as a CDN does. Both sides start from an empty folder and
pay a process start:
- console: a fresh state folder, `Services.build`, then `downloads.submit` (hub listing, job row, worker
  process that fetches and sha256-checks every file); wall time from submit until the snapshot says
  SUCCEEDED, polled every 50 ms as the page polls it. The polls also give the progress interval the
  browser can show: the longest time `done_bytes` stood still while bytes were still due.
- snapshot_download: a child `python -c` running `snapshot_download(repo, local_dir=...)` with
  `HF_ENDPOINT` pointing at the endpoint; wall time from spawn to exit.
Each round runs the console twice in a row (the second run is the A/A control, so the noise is visible)
and snapshot_download once, the order of the two sides alternating between rounds. Goals: console
throughput >= 0.95 of snapshot_download's (median time of B over median time of A) and a progress update
at least once a second. Always exits 0: it reports, it does not gate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from webui.services.container import Services  # noqa: E402
from webui.services.downloads import DownloadRequest  # noqa: E402
from webui.settings import Settings  # noqa: E402

MIB = 1 << 20
REPO_ID = "internlm/bench-chat"
GOAL_RATIO = 0.95
GOAL_GAP_S = 1.0
POLL_S = 0.05
TIMEOUT_S = 600.0

SNAPSHOT_CODE = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], local_dir=sys.argv[2], revision="main")
"""


@dataclass(frozen=True)
class ConsoleRun:
    seconds: float
    first_progress_s: float  # submit → the first done_bytes above zero (listing, spawn, imports, first piece)
    longest_gap_s: float  # longest stretch without a done_bytes change while bytes were still due
    updates: int


def build_repo(folder: Path, shards: int, shard_mib: int) -> Path:
    """config.json, generation config, a shard index, tokenizer files and `shards` random weight files."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-6, "torch_dtype": "float16"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    index = {"metadata": {"total_size": shards * shard_mib * MIB},
             "weight_map": {f"model.layers.{i}.weight": names[i % shards] for i in range(32)}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    vocab = {f"tok{i}": i for i in range(32000)}
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": vocab}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 4096, "eos_token": "</s>"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    for name in names:
        with (folder / name).open("wb") as out:
            for _ in range(shard_mib):
                out.write(os.urandom(MIB))
    return folder


def repo_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def start_endpoint(folder: Path, throttle_bps: int) -> tuple[subprocess.Popen[str], str]:
    """The local hub as a child process; returns it and the URL it printed."""
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "tests.hub_endpoint", "--repo", f"{REPO_ID}={folder}",
         "--throttle-bps", str(throttle_bps)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("URL "):
        proc.kill()
        raise SystemExit(f"hub endpoint did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def console(root: Path, url: str, total: int) -> ConsoleRun:
    """One download through the console's services, from an empty state folder."""
    state = Path(tempfile.mkdtemp(prefix="console-", dir=root))
    services = Services.build(Settings(state_dir=state / "state", hub_endpoint=url, hf_cache_dir=state / "hf-cache"))
    try:
        started = time.perf_counter()
        outcome = services.downloads.submit(DownloadRequest(REPO_ID))
        if outcome.download is None:
            raise SystemExit(f"console refused the download: {outcome.errors}")
        download_id = outcome.download.id
        last_done, last_change, first, gap, updates = 0, 0.0, 0.0, 0.0, 0
        while True:
            snap = services.downloads.get(download_id)
            now = time.perf_counter()
            if snap is None:
                raise SystemExit("the download row vanished")
            if snap.state in ("RUNNING", "SUCCEEDED") and snap.done_bytes != last_done and last_done < total:
                if last_done == 0:
                    first = now - started
                else:
                    gap = max(gap, now - last_change)
                last_done, last_change = snap.done_bytes, now
                updates += 1
            if snap.state == "SUCCEEDED":
                return ConsoleRun(now - started, first, gap, updates)
            if snap.state not in ("QUEUED", "RUNNING"):
                log = "\n".join(services.downloads.log(download_id)[-10:])
                raise SystemExit(f"console download {snap.state}: {snap.error}\n{log}")
            if now - started > TIMEOUT_S:
                raise SystemExit("console download timed out")
            time.sleep(POLL_S)
    finally:
        services.close()
        shutil.rmtree(state, ignore_errors=True)


def snapshot(root: Path, env: dict[str, str]) -> float:
    """One `snapshot_download` into an empty local folder, in a child process of its own."""
    target = Path(tempfile.mkdtemp(prefix="snapshot-", dir=root))
    try:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", SNAPSHOT_CODE, REPO_ID, str(target / "model")],  # noqa: S603
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=TIMEOUT_S, check=False)
        took = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"snapshot_download failed ({done.returncode}): {done.stderr[-1000:]}")
        return took
    finally:
        shutil.rmtree(target, ignore_errors=True)


def row(name: str, times: list[float], total: int) -> str:
    rates = [total / MIB / t for t in times]
    return (f"{name:<22} {min(times):7.2f} {statistics.median(times):7.2f} {max(times):7.2f}   "
            f"{min(rates):7.1f} {statistics.median(rates):7.1f} {max(rates):7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shards", type=int, default=4, help="weight shards in the repo")
    parser.add_argument("--shard-mib", type=int, default=128, help="size of each shard in MiB")
    parser.add_argument("--throttle-mib", type=float, default=40.0, help="MiB/s per connection (0: unthrottled)")
    parser.add_argument("--json", default="", help="also write the numbers to this file")
    args = parser.parse_args()

    # huggingface_hub reads these once, at import: neither side may be offline or find a user's token.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="download-speed-") as tmp:
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf-home")
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        folder = build_repo(root / "repo", args.shards, args.shard_mib)
        total = repo_bytes(folder)
        proc, url = start_endpoint(folder, int(args.throttle_mib * MIB))
        os.environ["HF_ENDPOINT"] = url
        env = {**os.environ, "HF_HUB_ENABLE_HF_TRANSFER": "0"}  # as the console's worker gets it
        import huggingface_hub  # noqa: F401 - the console process has the hub client loaded once it listed a repo

        throttle = f"throttled to {args.throttle_mib:g} MiB/s per connection" if args.throttle_mib else "unthrottled"
        print(f"repo: {args.shards} × {args.shard_mib} MiB shards + 6 small files = {total / MIB:.1f} MiB; "
              f"endpoint {url} {throttle}; {args.rounds} rounds, "
              f"{os.cpu_count()} CPUs", flush=True)
        runs_a: list[ConsoleRun] = []
        runs_aa: list[ConsoleRun] = []
        times_b: list[float] = []
        try:
            console(root, url, total)  # warm-up: page cache, bytecode, the endpoint's first connections
            snapshot(root, env)
            for i in range(args.rounds):
                order = ("A", "B") if i % 2 == 0 else ("B", "A")
                line = []
                for side in order:
                    if side == "A":
                        runs_a.append(console(root, url, total))
                        runs_aa.append(console(root, url, total))  # A/A control: the console again, at once
                        gap = max(runs_a[-1].longest_gap_s, runs_aa[-1].longest_gap_s)
                        line.append(f"console {runs_a[-1].seconds:.2f} s, again {runs_aa[-1].seconds:.2f} s "
                                    f"(longest progress gap {gap:.2f} s)")
                    else:
                        times_b.append(snapshot(root, env))
                        line.append(f"snapshot_download {times_b[-1]:.2f} s")
                print(f"round {i + 1}: " + " | ".join(line), flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)

    times_a = [r.seconds for r in runs_a]
    times_aa = [r.seconds for r in runs_aa]
    every = runs_a + runs_aa
    gaps = [r.longest_gap_s for r in every]
    ratio = statistics.median(times_b) / statistics.median(times_a)
    control = statistics.median(times_a) / statistics.median(times_aa)
    print(f"\n{'side':<22} {'time s (min / median / max)':>23}   {'MiB/s (min / median / max)':>23}")
    print(row("console", times_a, total))
    print(row("console again (A/A)", times_aa, total))
    print(row("snapshot_download", times_b, total))
    print(f"\nconsole throughput / snapshot_download's: {ratio:.3f} (median time B / median time A; goal >= "
          f"{GOAL_RATIO}) {'PASS' if ratio >= GOAL_RATIO else 'MISS'}")
    print(f"A/A control (console / console again): {control:.3f} (the noise: 1.000 would be none)")
    print(f"longest progress gap per console run: median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s "
          f"(goal <= {GOAL_GAP_S:g} s) {'PASS' if max(gaps) <= GOAL_GAP_S else 'MISS'}; "
          f"{statistics.median(r.updates for r in every):.0f} updates per run at the median; first progress "
          f"{statistics.median(r.first_progress_s for r in every):.2f} s after submit at the median")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "total_bytes": total, "shards": args.shards, "shard_mib": args.shard_mib,
            "throttle_mib_per_connection": args.throttle_mib, "rounds": args.rounds,
            "console": [r.__dict__ for r in runs_a], "console_again": [r.__dict__ for r in runs_aa],
            "snapshot_download_s": times_b, "ratio": ratio, "aa_ratio": control,
            "goals": {"ratio>=0.95": ratio >= GOAL_RATIO, "progress_gap<=1s": max(gaps) <= GOAL_GAP_S},
        }, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
