"""A stand-in for `lmdeploy serve api_server` on machines without a GPU (the real READY path runs on the GPU).

It prints the start-up lines LMDeploy 0.18.0 prints (copied from the recorded log), answers GET /health with
503 while "initializing" and 200 when ready, and serves /v1/models. Options model the awkward children:
--grandchild spawns a worker (like the pytorch engine's), --ignore-sigterm survives SIGTERM,
--fail-with prints a message and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PHASE_LINES = [
    "2026-11-26 09:56:47,463 - lmdeploy - INFO - async_engine.py:133 - input backend=pytorch, backend_config=...",
    "2026-11-26 09:57:13,678 - lmdeploy - INFO - __init__.py:131 - Build <uni> executor.",
    "2026-11-26 09:57:14,188 - lmdeploy - INFO - base.py:430 - Building Model.",
    "2026-11-26 09:57:17,703 - lmdeploy - INFO - base.py:439 - Building CacheEngine with config: ",
    "CacheConfig(max_batches=1024, block_size=64, num_cpu_blocks=0, num_gpu_blocks=256839, kernel_block_size=64)",
    "2026-11-26 09:57:17,706 - lmdeploy - INFO - base.py:446 - Warming up model.",
    "2026-11-26 09:57:41,345 - lmdeploy - INFO - agent.py:566 - Engine warmup completed in 23.64 seconds.",
    "INFO:     Started server process [1550]",
    "INFO:     Waiting for application startup.",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_path")
    parser.add_argument("--server-port", type=int, required=True)
    parser.add_argument("--server-name", default="127.0.0.1")
    parser.add_argument("--model-name", default="")
    parser.add_argument("--api-keys", nargs="*", default=[])
    parser.add_argument("--phase-delay", type=float, default=0.05)
    parser.add_argument("--init-seconds", type=float, default=0.3, help="503 time after the port opens")
    parser.add_argument("--grandchild", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--fail-with", default="")
    args, _unknown = parser.parse_known_args()

    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild:
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # noqa: S603
        print(f"engine worker pid {worker.pid}", flush=True)
    for line in PHASE_LINES:
        print(line, flush=True)
        time.sleep(args.phase_delay)
        if args.fail_with and "Building Model" in line:
            print(args.fail_with, flush=True)
            sys.exit(1)

    ready_at = time.monotonic() + args.init_seconds
    model_id = args.model_name or args.model_path
    keys = set(args.api_keys)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path == "/health":
                if time.monotonic() < ready_at:
                    self._send(503, {"status": "initializing"})
                else:
                    self._send(200, {"status": "healthy", "message": "stand-in engine is healthy."})
            elif self.path == "/v1/models":
                auth = self.headers.get("Authorization", "")
                if keys and auth.removeprefix("Bearer ") not in keys:
                    self._send(401, {"message": "Unauthorized.", "type": "authentication_error", "code": 401,
                                     "param": None, "object": "error"})
                    return
                self._send(200, {"object": "list", "data": [{"id": model_id, "object": "model",
                                                             "owned_by": "lmdeploy"}]})
            else:
                self._send(404, {"detail": "Not Found"})

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *fargs: object) -> None:
            print(f'INFO:     {self.client_address[0]} - "{fmt % fargs}"', flush=True)

    server = ThreadingHTTPServer((args.server_name, args.server_port), Handler)
    print("INFO:     Application startup complete.", flush=True)
    print(f"INFO:     Uvicorn running on http://{args.server_name}:{args.server_port} (Press CTRL+C to quit)",
          flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"stand-in pid {os.getpid()} serving", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
