"""Stand-in for the AWQ worker in the cancel-race test: the job protocol of webui/workers/awq_worker.py (a
`.partial` folder, progress events, and the worker's own `publish` step) without LMDeploy's minutes of work.

Usage: python stand_in_awq_worker.py JOB_FILE SECONDS_BEFORE_PUBLISH SECONDS_AFTER
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webui.workers.awq_worker import ProgressWriter, publish  # noqa: E402


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    before, after = float(sys.argv[2]), float(sys.argv[3])
    progress = ProgressWriter(Path(job["progress_path"]))
    partial = Path(job["partial_dir"])
    partial.mkdir(parents=True)
    progress.emit(phase="load")
    (partial / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    (partial / "model.safetensors").write_bytes(b"\0" * 4096)
    time.sleep(before)
    publish(partial, Path(job["output_dir"]), progress, seconds=before)
    time.sleep(after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
