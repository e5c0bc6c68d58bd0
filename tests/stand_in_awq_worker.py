"""Stand-in for the AWQ worker in the cancel-race test: the job protocol of webui/workers/awq_worker.py (a
`.partial` folder, progress events, and the worker's own `publish` step) without LMDeploy's minutes of work.

Usage: python stand_in_awq_worker.py JOB_FILE SECONDS_BEFORE_PUBLISH SECONDS_AFTER [SECONDS_INSIDE_PUBLISH]

It runs a second thread, as torch does, and installs the worker's own TermGuard. With SECONDS_INSIDE_PUBLISH, it
publishes as the worker does, but pauses between the rename and "done", so a test's cancel can land inside.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webui.workers.awq_worker import ProgressWriter, TermGuard, publish  # noqa: E402


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    before, after = float(sys.argv[2]), float(sys.argv[3])
    inside = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    guard = TermGuard()
    guard.install()
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()  # a signal may land on this thread
    progress = ProgressWriter(Path(job["progress_path"]))
    partial = Path(job["partial_dir"])
    partial.mkdir(parents=True)
    progress.emit(phase="load")
    (partial / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    (partial / "model.safetensors").write_bytes(b"\0" * 4096)
    time.sleep(before)
    output = Path(job["output_dir"])
    if inside:
        with guard.publishing():  # publish(), with a pause between its two steps
            if output.exists():
                output.rmdir()
            os.replace(partial, output)
            time.sleep(inside)
            progress.emit(phase="done", seconds=before)
    else:
        publish(partial, output, progress, seconds=before, guard=guard)
    time.sleep(after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
