"""How fast the console sees a server become READY, and how fast a stop leaves nothing behind.

Usage: python -m benchmarks.serve_lifecycle [--runs 5] [--real-lmdeploy MODEL_DIR]

Without --real-lmdeploy it drives the stand-in server (tests/fake_api_server.py), which answers /health like
the api_server; with it, the real `lmdeploy serve api_server` (needs a GPU). For every run it prints:
- ready lag: from the first 200 of GET /health (seen by an independent 5 ms poller) to the moment the
  console's snapshot says READY (goal <= 0.5 s);
- stop: from the stop call until every process of the server's tree is gone (goal <= 5 s).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import fake_argv_factory  # noqa: E402
from webui.services.container import Services  # noqa: E402
from webui.services.serve_spec import ServerSpec, suggest_port  # noqa: E402
from webui.settings import Settings  # noqa: E402

READY_LAG_GOAL_S = 0.5
STOP_GOAL_S = 5.0


def first_healthy(port: int, stop: threading.Event, out: list[float]) -> None:
    """Independent observer: the wall time of the first 200 on /health."""
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                out.append(time.time())
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.005)


def one_run(services: Services, model: Path, backend: str) -> tuple[float, float, float]:
    port = suggest_port(34000)
    seen: list[float] = []
    done = threading.Event()
    watcher = threading.Thread(target=first_healthy, args=(port, done, seen), daemon=True)
    watcher.start()
    server = services.servers.start(ServerSpec(model_path=str(model), backend=backend, port=port,
                                               cache_max_entry_count=0.2)).server
    assert server is not None
    while True:
        snap = services.servers.get(server.id)
        if snap.state == "READY":
            ready_seen = time.time()
            break
        if snap.state in ("FAILED", "LOST"):
            raise SystemExit(f"server failed: {snap.hint} {snap.hint_line}")
        time.sleep(0.005)
    done.set()
    watcher.join(2)
    lag = ready_seen - seen[0] if seen else float("nan")
    tree = [snap.pid, *[c.pid for c in psutil.Process(snap.pid).children(recursive=True)]]
    start = time.monotonic()
    services.servers.stop(server.id)
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in tree):
        time.sleep(0.005)
    stop_s = time.monotonic() - start
    return lag, stop_s, snap.ready_seconds or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--real-lmdeploy", type=Path, help="a model folder; use the real api_server (GPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.real_lmdeploy:
            model = args.real_lmdeploy.resolve()
            settings = Settings(state_dir=Path(tmp) / "state", model_roots=(model.parent,))
            services = Services.build(settings)
            backend = "pytorch"
        else:
            from tests.tiny_model import build_tiny_model

            model = build_tiny_model(Path(tmp) / "models" / "tiny")
            settings = Settings(state_dir=Path(tmp) / "state", model_roots=(model.parent,))
            services = Services.build(settings, argv_factory=fake_argv_factory("--grandchild"))
            backend = "pytorch"
        lags, stops = [], []
        try:
            for i in range(args.runs):
                lag, stop_s, ready_s = one_run(services, model, backend)
                lags.append(lag)
                stops.append(stop_s)
                print(f"run {i + 1}: ready after {ready_s:6.2f} s | ready lag {lag * 1000:6.1f} ms | "
                      f"stop-to-gone {stop_s * 1000:7.1f} ms", flush=True)
        finally:
            services.close()
    worst_lag, worst_stop = max(lags), max(stops)
    print(f"\nready lag   median {statistics.median(lags) * 1000:.1f} ms, max {worst_lag * 1000:.1f} ms; "
          f"goal {READY_LAG_GOAL_S * 1000:.0f} ms -> ratio to goal {worst_lag / READY_LAG_GOAL_S:.2f}")
    print(f"stop-to-gone median {statistics.median(stops) * 1000:.1f} ms, max {worst_stop * 1000:.1f} ms; "
          f"goal {STOP_GOAL_S:.0f} s -> ratio to goal {worst_stop / STOP_GOAL_S:.3f}")


if __name__ == "__main__":
    main()
