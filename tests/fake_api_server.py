"""A stand-in for `lmdeploy serve api_server` on machines without a GPU (the real READY path runs on the GPU).

It prints the start-up lines LMDeploy 0.18.0 prints (copied from the recorded log), answers GET /health with
503 while "initializing" and 200 when ready, and serves /v1/models. POST /v1/chat/completions replays the
recorded LMDeploy stream (tests/data/api_record.json), answers tools with the recorded 400 unless started
with --tool-call-parser, and prints each request body as a `request: {json}` log line for tests to read.
Like LMDeploy's pytorch engine it also answers POST /sleep, /wakeup (chat is 503 while asleep), GET /is_sleeping,
POST /get_ppl and GET /metrics (`lmdeploy:gpu_cache_usage_perc`), and logs a block count that grows with
--quant-policy and --cache-max-entry-count by the ratios measured on the GPU (these stand-in values only let the
console's arithmetic and display be tested; the real numbers come from the GPU tier).
Options model the awkward children:
--grandchild spawns a worker (like the pytorch engine's), --ignore-sigterm survives SIGTERM,
--fail-with prints a message and exits 1, --oom-above F fails like CUDA out of memory when the fraction is over F.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PHASE_LINES = [
    "2026-11-26 09:56:47,463 - lmdeploy - INFO - async_engine.py:133 - input backend=pytorch, backend_config=...",
    "2026-11-26 09:57:13,678 - lmdeploy - INFO - __init__.py:131 - Build <uni> executor.",
    "2026-11-26 09:57:14,188 - lmdeploy - INFO - base.py:430 - Building Model.",
    "2026-11-26 09:57:17,703 - lmdeploy - INFO - base.py:439 - Building CacheEngine with config: ",
    "CacheConfig(max_batches=1024, block_size=64, num_cpu_blocks=0, num_gpu_blocks={blocks}, kernel_block_size=64)",
    "2026-11-26 09:57:17,706 - lmdeploy - INFO - base.py:446 - Warming up model.",
    "2026-11-26 09:57:41,345 - lmdeploy - INFO - agent.py:566 - Engine warmup completed in 23.64 seconds.",
    "2026-11-26 09:57:41,385 - lmdeploy - INFO - async_engine.py:168 - updated backend_config=PytorchEngineConfig("
    "dtype='auto', tp=1, dp=1, dp_rank=0, ep=1, session_len=4096, max_batch_size=1024, attn_tp_size=None, "
    "cache_max_entry_count=0.8, prefill_interval=16, block_size=64)",
    "INFO:     Started server process [1550]",
    "INFO:     Waiting for application startup.",
]


def load_record() -> dict:
    """LMDeploy's recorded answers, shaped for replay (the stream's elided middle is skipped)."""
    recorded = json.loads(RECORD_FILE.read_text(encoding="utf-8"))
    lines = [line.removeprefix("data: ") for line in recorded["stream"]["lines"]
             if line.startswith("data: {")]
    return {"chat": recorded["chat"]["json"], "stream": lines, "tools": recorded["tools"]["json"],
            "bad_model": json.loads(recorded["bad_model"]["body"]),
            "models_401": {"message": "Unauthorized.", "type": "authentication_error", "code": 401, "param": None,
                           "object": "error"}}


# Blocks relative to quant policy 0, as measured on the GPU (gpu/README.md): int8, int4, fp8, TurboQuant.
POLICY_BLOCKS = {0: 1.0, 8: 1.94, 4: 3.76, 16: 2.0, 17: 2.0, 42: 5.02}
OOM_LINE = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
            "of 139.81 GiB of which 1.06 GiB is free.")

RECORD_FILE = Path(__file__).resolve().parent / "data" / "api_record.json"
RECORD = load_record()


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
    parser.add_argument("--tool-call-parser", default="")
    parser.add_argument("--quant-policy", type=int, default=0)
    parser.add_argument("--cache-max-entry-count", type=float, default=0.8)
    parser.add_argument("--oom-above", type=float, default=0.0)
    args, _unknown = parser.parse_known_args()
    blocks = round(256839 * args.cache_max_entry_count / 0.8 * POLICY_BLOCKS.get(args.quant_policy, 1.0))

    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild:
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # noqa: S603
        print(f"engine worker pid {worker.pid}", flush=True)
    for line in PHASE_LINES:
        if args.oom_above and args.cache_max_entry_count > args.oom_above and "Building CacheEngine" in line:
            print(OOM_LINE, flush=True)
            sys.exit(1)
        print(line.format(blocks=blocks), flush=True)
        time.sleep(args.phase_delay)
        if args.fail_with and "Building Model" in line:
            print(args.fail_with, flush=True)
            sys.exit(1)

    ready_at = time.monotonic() + args.init_seconds
    model_id = args.model_name or args.model_path
    keys = set(args.api_keys)
    state = {"sleeping": False, "streams": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path == "/health":
                if time.monotonic() < ready_at:
                    self._send(503, {"status": "initializing"})
                else:
                    self._send(200, {"status": "healthy", "message": "stand-in engine is healthy."})
            elif self.path == "/is_sleeping":
                self._send(200, {"is_sleeping": state["sleeping"]})
            elif self.path == "/metrics":
                with lock:
                    usage = min(1.0, state["streams"] * 0.01 / POLICY_BLOCKS.get(args.quant_policy, 1.0))
                text = (f'# TYPE lmdeploy:gpu_cache_usage_perc gauge\n'
                        f'lmdeploy:gpu_cache_usage_perc{{engine="0",model_name="{model_id}"}} {usage}\n')
                self._send_text(200, text)
            elif self.path == "/v1/models":
                auth = self.headers.get("Authorization", "")
                if keys and auth.removeprefix("Bearer ") not in keys:
                    self._send(401, RECORD["models_401"])
                    return
                self._send(200, {"object": "list", "data": [{"id": model_id, "object": "model",
                                                             "owned_by": "lmdeploy"}]})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            print("request: " + json.dumps(body), flush=True)
            auth = self.headers.get("Authorization", "")
            if keys and auth.removeprefix("Bearer ") not in keys:
                self._send(401, RECORD["models_401"])
            elif self.path.startswith(("/sleep", "/wakeup")) and not self.headers.get(
                    "Content-Type", "").startswith("application/json"):  # LMDeploy's validate_json_request
                self._send(422, {"detail": ["Unsupported Media Type: Only 'application/json' is allowed"]})
            elif self.path.startswith("/sleep"):
                state["sleeping"] = True
                self._send_text(200, "OK")
            elif self.path == "/wakeup":
                state["sleeping"] = False
                self._send_text(200, "OK")
            elif self.path == "/v1/encode":  # stand-in ids: a token per 3 bytes of UTF-8 (plus BOS)
                pieces = body.get("input")
                ids = [list(range(len(p.encode()) // 3 + 1)) for p in
                       (pieces if isinstance(pieces, list) else [pieces or ""])]
                self._send(200, {"input_ids": ids if isinstance(pieces, list) else ids[0],
                                 "length": [len(i) for i in ids] if isinstance(pieces, list) else len(ids[0])})
            elif self.path == "/get_ppl":
                text = body.get("input") or ""
                if isinstance(text, list):  # token ids, as LMDeploy takes them too
                    text = "x" * (3 * len(text))
                if not text:
                    self._send(400, {"message": "Input must not be empty.", "type": "invalid_request_error",
                                     "code": 400, "param": None, "object": "error"})
                elif len(text) > 4000:  # LMDeploy's answer to an input longer than the session
                    self._send(400, {"message": "async_get_ppl failed to compute ce_loss.",
                                     "type": "invalid_request_error", "code": 400, "param": None, "object": "error"})
                else:  # a stand-in value: lower-bit KV reads a little worse, like the real engine
                    self._send(200, {"ppl": 2.0 + 0.002 * args.quant_policy + (len(text) % 97) / 10000})
            elif self.path != "/v1/chat/completions":
                self._send(404, {"detail": "Not Found"})
            elif body.get("model") != model_id:
                self._send(404, {**RECORD["bad_model"], "message": f"The model '{body.get('model')}' does not exist."})
            elif state["sleeping"]:
                self._send(503, {"message": "Engine is sleeping; call POST /wakeup before inference "
                                            "(e.g. tags=weights&tags=kv_cache).", "type": "service_unavailable",
                                 "code": 503, "param": None, "object": "error"})
            elif body.get("tools") and not args.tool_call_parser:
                self._send(400, RECORD["tools"])
            elif not body.get("stream"):
                self._send(200, RECORD["chat"])
            else:
                self._stream(body)

        def _stream(self, body: dict) -> None:
            with lock:
                state["streams"] += 1
            try:
                self._stream_lines(body)
            finally:
                with lock:
                    state["streams"] -= 1

        def _stream_lines(self, body: dict) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for line in RECORD["stream"]:
                self.wfile.write(f"data: {line}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.002)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": "chatcmpl-usage", "object": "chat.completion.chunk", "created": 0, "model": model_id,
                         "choices": [], "usage": {"prompt_tokens": 36, "completion_tokens": len(RECORD["stream"]),
                                                  "total_tokens": 36 + len(RECORD["stream"])}}
                self.wfile.write(f"data: {json.dumps(usage)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_text(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *fargs: object) -> None:
            print(f'INFO:     {self.client_address[0]} - "{fmt % fargs}"', flush=True)

    server_class = ThreadingHTTPServer
    if ":" in args.server_name:  # an IPv6 address, as uvicorn binds it

        class ServerV6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = ServerV6
    server = server_class((args.server_name, args.server_port), Handler)
    print("INFO:     Application startup complete.", flush=True)
    print(f"INFO:     Uvicorn running on http://{args.server_name}:{args.server_port} (Press CTRL+C to quit)",
          flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"stand-in pid {os.getpid()} serving", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
