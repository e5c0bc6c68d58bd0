"""Cold start of the console to its first page, side by side with a bare Gradio Blocks app.

Usage: python -m benchmarks.cold_start [--runs 5]

Each run starts a fresh Python process and times until GET / answers 200 and the app's config (GET /config)
is served, alternating console and baseline so both see the same machine state. Goal: console <= 1.5x.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_RATIO = 1.5
BARE_APP = (
    "import sys, gradio as gr\n"
    "with gr.Blocks() as demo:\n"
    "    gr.Markdown('bare')\n"
    "demo.launch(server_name='127.0.0.1', server_port=int(sys.argv[1]))\n"
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def time_to_first_page(argv: list[str], port: int, timeout: float = 120.0) -> float:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"{argv} exited with {proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/")
                if conn.getresponse().status == 200:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/config")
                    if conn.getresponse().status == 200:
                        return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.02)
        raise SystemExit(f"{argv} did not serve a page within {timeout} s")
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    console, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            port = free_port()
            c = time_to_first_page([sys.executable, "-m", "webui", "--state-dir", f"{tmp}/state{i}",
                                    "--port", str(port)], port)
            port = free_port()
            b = time_to_first_page([sys.executable, "-c", BARE_APP, str(port)], port)
            console.append(c)
            bare.append(b)
            print(f"run {i + 1}: console {c:.2f} s | bare Blocks {b:.2f} s | ratio {c / b:.2f}", flush=True)
    ratio = statistics.median(console) / statistics.median(bare)
    print(f"\nmedian console {statistics.median(console):.2f} s, bare {statistics.median(bare):.2f} s, "
          f"ratio {ratio:.2f} (goal <= {GOAL_RATIO})")


if __name__ == "__main__":
    main()
