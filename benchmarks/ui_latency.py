"""How long a browser (or a script) waits for Start, Stop, Submit and Cancel to return, on a busy console.

Usage: python -m benchmarks.ui_latency [--runs 20] [--out DIR]

It launches the real app (build_app, queued as the CLI queues it) in a temporary state folder, with the stand-in
api_server (tests/fake_api_server.py, with an engine-like worker child) and a tiny model (tests/tiny_model.py),
and times each call's round trip through Gradio's HTTP API under the stable API names, the way a page's request
travels (join the event queue, read the result stream); gradio_client adds ~100 ms of its own to every call on
this machine, so it is timed once for reference only:
- all along, one stand-in server runs, and a search-scale AWQ job keeps the CPU device busy (should it end, the
  next queued job takes its place, or one is submitted, untimed), so jobs submitted queue behind a running one;
- start_server x N: each a new stand-in server on a free port (READY awaited, untimed, before the next);
- stop_server x N: those servers (each awaited until stopped, untimed, before the next);
- submit_quantize x N: each queues behind the running job;
- cancel_job x N: the queued ones, last first, then the last few while running: the job running at the time,
  then each next one once it is calibrating.
Goal: every call returns within 200 ms (met when the max is within it). For reference, N reads (list_jobs) are
timed the same way first (the round trip that any call costs on this machine under this load), and N more through
gradio_client.
With --out, ui_latency.json is written there. Whatever an action did is checked on the services; anything amiss
(a server that never got READY, a job that was not cancelled...) is listed and the exit code is 1. At the end
every job is cancelled, every server stopped and the app closed; a process the console lost track of is ended
too, and reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gradio_client import Client  # noqa: E402

from tests.conftest import fake_argv_factory  # noqa: E402
from webui.app import build_app, prepare_to_serve  # noqa: E402
from webui.services.container import Services  # noqa: E402
from webui.services.serve_spec import suggest_port  # noqa: E402
from webui.settings import Settings  # noqa: E402

GOAL_MS = 200.0
RUNNING_CANCELS = 3  # of the N cancels, how many hit a running job (the others cancel queued ones)
ACTIONS = ("start_server", "stop_server", "submit_quantize", "cancel_job")
REFERENCE = "list_jobs"  # a plain read, timed the same way: the round trip's floor on this machine, not judged
CLIENT_REFERENCE = "list_jobs via gradio_client"  # the same read through gradio_client: its own overhead
JOB_FINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "LOST"})
SERVER_FINAL = frozenset({"STOPPED", "FAILED", "LOST"})
WORKING_PHASES = frozenset({"calibrate", "smooth", "quantize"})
# Runs for many minutes on 2 cores: search-scale AWQ of the tiny model, calibrated on the sample corpus that
# ships with Python. Every submitted job is the same, so the ones cancelled while running are real jobs too.
LONG_JOB = MappingProxyType(dict(
    output_dir="", calib_source="sample", calib_dataset="wikitext2", calib_paths="", text_field="text",
    calib_samples=128, calib_seqlen=512, batch_size=1, w_bits=4, w_group_size=128, w_sym=False, search_scale=True,
    dtype="auto", device="cpu", trust_remote_code=False))


@dataclass
class Timings:
    """Round trips of one action in ms, each with a note on what the call met."""

    samples: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, ms: float, note: str = "") -> None:
        self.samples.append(ms)
        self.notes.append(note)

    def subset(self, prefix: str) -> Timings:
        part = Timings()
        for ms, note in zip(self.samples, self.notes, strict=True):
            if note.startswith(prefix):
                part.add(ms, note)
        return part

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"n": 0}
        worst = max(self.samples)
        return {"n": len(self.samples), "median_ms": round(statistics.median(self.samples), 1),
                "max_ms": round(worst, 1), "goal_ms": GOAL_MS, "met": worst <= GOAL_MS,
                "samples_ms": [round(s, 1) for s in self.samples], "notes": self.notes}


class HttpApi:
    """Gradio's REST API (POST /gradio_api/call/<name>, then the event stream of the result): the path a page's
    request takes through the event queue, without gradio_client's own overhead."""

    def __init__(self, url: str, client: Client) -> None:
        import httpx2 as httpx

        self._http = httpx.Client(base_url=url, timeout=60)
        endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        self._params = {name: endpoint["parameters"] for name, endpoint in endpoints.items()}

    def predict(self, api_name: str, **kwargs: Any) -> Any:
        data = []
        for param in self._params[api_name]:
            name = param["parameter_name"]
            data.append(kwargs.pop(name) if name in kwargs else param["parameter_default"])
        if kwargs:
            raise TypeError(f"{api_name} has no parameters {sorted(kwargs)}")
        event = self._http.post(f"gradio_api/call{api_name}", json={"data": data}).json()["event_id"]
        kind = ""
        with self._http.stream("GET", f"gradio_api/call{api_name}/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ").strip()
                elif line.startswith("data: ") and kind in ("complete", "error"):
                    payload = json.loads(line.removeprefix("data: "))
                    if kind == "error":
                        raise RuntimeError(f"{api_name}: {payload}")
                    return payload[0] if len(payload) == 1 else payload
        raise RuntimeError(f"{api_name}: the stream ended without a result")

    def close(self) -> None:
        self._http.close()


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return (time.perf_counter() - start) * 1000, result


class Bench:
    """The launched console, a client, and the checks and waits around the timed calls (all untimed)."""

    def __init__(self, tmp: Path) -> None:
        from tests.tiny_model import build_tiny_model

        self.anomalies: list[str] = []
        self.model = build_tiny_model(tmp / "models" / "tiny")
        settings = Settings(state_dir=tmp / "state", model_roots=(self.model.parent,))
        self.services = Services.build(settings, argv_factory=fake_argv_factory("--grandchild"))
        self.demo, launch_kwargs = build_app(self.services)
        prepare_to_serve(self.demo)  # as webui.cli launches it
        port = suggest_port(19860)
        self.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                         **launch_kwargs)
        self.client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        self.api = HttpApi(f"http://127.0.0.1:{port}/", self.client)
        self.next_port = suggest_port(35000)

    # the timed calls, as a script (or the page's buttons) make them --------------------------------------
    def start_server(self) -> tuple[float, str]:
        ms, (message, server_id, next_port) = timed(lambda: self.api.predict(
            model_path=str(self.model), backend="pytorch", model_format="auto", kv_policy="none",
            cache_max_entry_count=0.2, session_len=0, max_batch_size=0, tp=1, port=self.next_port,
            host="127.0.0.1", model_name="", api_keys="", tool_call_parser="", eager_mode=False, extra_args="",
            api_name="/start_server"))
        if not server_id:
            raise SystemExit(f"start_server refused: {message}")
        self.next_port = suggest_port(int(next_port))
        return ms, server_id

    def stop_server(self, server_id: str) -> float:
        return timed(lambda: self.api.predict(server_id=server_id, api_name="/stop_server"))[0]

    def submit(self) -> tuple[float, str]:
        ms, (message, job_id) = timed(lambda: self.api.predict(
            model_path=str(self.model), **LONG_JOB, api_name="/submit_quantize"))
        if not job_id:
            raise SystemExit(f"submit_quantize refused: {message}")
        return ms, job_id

    def cancel(self, job_id: str) -> float:
        return timed(lambda: self.api.predict(job_id=job_id, api_name="/cancel_job"))[0]

    def list_jobs(self) -> float:
        return timed(lambda: self.api.predict(api_name="/list_jobs"))[0]

    def list_jobs_with_gradio_client(self) -> float:
        return timed(lambda: self.client.predict(api_name="/list_jobs"))[0]

    # untimed ----------------------------------------------------------------------------------------------
    def server_reaches(self, server_id: str, wanted: str, timeout: float) -> str:
        state = self.services.servers.wait_for(server_id, {wanted} | SERVER_FINAL, timeout).state
        if state != wanted:
            self.anomalies.append(f"server {server_id}: {state} where {wanted} was expected "
                                  f"({self.services.servers.get(server_id)})")
        return state

    def job_reaches(self, job_id: str, ok: Callable[[Any], bool], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not ok(job := self.services.jobs.get(job_id)):
            if time.monotonic() > deadline:
                self.anomalies.append(f"job {job_id}: not {what} after {timeout:.0f} s ({job})")
                break
            time.sleep(0.05)
        return job

    def running_job(self) -> str:
        return next((j.id for j in self.services.jobs.snapshots() if j.state == "RUNNING"), "")

    def keep_cpu_busy(self, timeout: float = 300) -> str:
        """The id of the job running on the CPU device (one is submitted if none runs or waits)."""
        if not self.running_job() and not any(j.state == "QUEUED" for j in self.services.jobs.snapshots()):
            self.submit()
        deadline = time.monotonic() + timeout
        while not (job_id := self.running_job()):
            if time.monotonic() > deadline:
                raise SystemExit(f"no job running after {timeout:.0f} s: {self.services.jobs.snapshots()}")
            time.sleep(0.05)
        return job_id

    def clean_up(self) -> None:
        try:
            for job in self.services.jobs.snapshots():
                if job.state not in JOB_FINAL:
                    self.services.jobs.cancel(job.id)
            for server in self.services.servers.snapshots():
                if server.owned and server.state not in SERVER_FINAL:
                    self.services.servers.stop(server.id)
            for server in self.services.servers.snapshots():
                if server.owned:
                    self.services.servers.wait_for(server.id, set(SERVER_FINAL), 30)
        finally:
            self.client.close()
            self.api.close()
            self.demo.close()
            self.services.close()
            self.end_leftovers()

    def end_leftovers(self) -> None:
        """Processes of this run still alive 10 s after the clean-up: the console lost track of them."""
        _, left = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=10)
        for proc in left:
            try:
                self.anomalies.append(f"left running after the clean-up, ended here: pid {proc.pid} "
                                      f"{' '.join(proc.cmdline())[:160]}")
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=10)


def run(bench: Bench, runs: int) -> dict[str, Timings]:
    results = {name: Timings() for name in (*ACTIONS, REFERENCE, CLIENT_REFERENCE)}
    keep_alive = bench.start_server()[1]
    if bench.server_reaches(keep_alive, "READY", 120) != "READY":
        raise SystemExit(f"the stand-in server did not get ready: {bench.services.servers.get(keep_alive)}")
    print(f"console up; server {keep_alive} READY; job {bench.keep_cpu_busy()} running on the CPU", flush=True)
    for _ in range(runs):
        results[REFERENCE].add(bench.list_jobs())
        results[CLIENT_REFERENCE].add(bench.list_jobs_with_gradio_client())
    print(f"{REFERENCE} (reference) median {statistics.median(results[REFERENCE].samples):.1f} ms", flush=True)

    started = []
    for i in range(runs):
        ms, server_id = bench.start_server()
        state = bench.server_reaches(server_id, "READY", 120)
        results["start_server"].add(ms, state.lower())
        started.append(server_id)
        print(f"start_server {i + 1:2d}: {ms:8.1f} ms (then {state})", flush=True)
    for i, server_id in enumerate(started):
        ms = bench.stop_server(server_id)
        state = bench.server_reaches(server_id, "STOPPED", 60)
        results["stop_server"].add(ms, state.lower())
        print(f"stop_server  {i + 1:2d}: {ms:8.1f} ms (then {state})", flush=True)

    submitted = []
    for i in range(runs):
        ahead = bench.keep_cpu_busy()
        ms, job_id = bench.submit()
        note = bench.services.jobs.get(job_id).state.lower()  # queued, unless the job ahead ended meanwhile
        results["submit_quantize"].add(ms, note)
        submitted.append(job_id)
        print(f"submit       {i + 1:2d}: {ms:8.1f} ms ({note}, behind job {ahead})", flush=True)

    # The queued ones, last first, keeping a few to cancel while running: the job running now, then each next
    # one once it is calibrating. One submitted job is left over, for the clean-up.
    running = min(RUNNING_CANCELS, runs)
    order = [*reversed(submitted[running:]), *([None] * running)]
    for i, job_id in enumerate(order):
        if job_id is None:
            job_id = bench.keep_cpu_busy()
            bench.job_reaches(job_id, lambda j: j.state in JOB_FINAL or j.phase in WORKING_PHASES,
                              "calibrating", 300)
        job = bench.services.jobs.get(job_id)
        note = job.state.lower() + (f" ({job.phase})" if job.state == "RUNNING" else "")
        ms = bench.cancel(job_id)
        bench.job_reaches(job_id, lambda j: j.state == "CANCELLED", "cancelled", 60)
        results["cancel_job"].add(ms, note)
        print(f"cancel       {i + 1:2d}: {ms:8.1f} ms ({note})", flush=True)
    return results


def table(results: dict[str, Timings]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(name, results[name].summary()) for name in ACTIONS]
    for kind in ("queued", "running"):
        part = results["cancel_job"].subset(kind)
        if part.samples:
            rows.append((f"  cancel_job ({kind})", part.summary()))
    rows.append((f"{REFERENCE} (reference)", {**results[REFERENCE].summary(), "met": None}))
    rows.append((CLIENT_REFERENCE, {**results[CLIENT_REFERENCE].summary(), "met": None}))
    return rows


def commit() -> str:
    """The commit measured, with "+changes" when the work tree differs from it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)  # noqa: S603,S607
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    return head + ("+changes" if head and git("status", "--porcelain", "--untracked-files=no") else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="calls per action (default 20)")
    parser.add_argument("--out", type=Path, help="a folder for the JSON report (ui_latency.json)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    began = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp))
        try:
            results = run(bench, args.runs)
        finally:
            bench.clean_up()
            for line in bench.anomalies:
                print(f"ANOMALY: {line}", flush=True)
    rows = table(results)
    print(f"\n{'action':<28} {'n':>3} {'median ms':>10} {'max ms':>9} {'goal ms':>8}  met (max <= goal)")
    for name, s in rows:
        if s["n"]:
            verdict = "-" if s["met"] is None else "met" if s["met"] else "missed"
            print(f"{name:<28} {s['n']:>3} {s['median_ms']:>10.1f} {s['max_ms']:>9.1f} {GOAL_MS:>8.0f}  {verdict}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        data = {"benchmark": "ui_latency", "runs": args.runs, "goal_ms": GOAL_MS, "started_at": began,
                "seconds": round(time.time() - began, 1), "cpus": os.cpu_count(), "machine": platform.platform(),
                "python": platform.python_version(), "commit": commit(),
                "results": {name.strip(): s for name, s in rows}, "anomalies": bench.anomalies}
        path = args.out / "ui_latency.json"
        path.write_text(json.dumps(data, indent=2))
        print(f"\nreport: {path}")
    return 1 if bench.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
