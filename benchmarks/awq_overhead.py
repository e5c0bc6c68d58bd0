"""The console's AWQ job wall time against the bare `lmdeploy lite auto_awq` command, side by side.

Usage: python -m benchmarks.awq_overhead [--runs 3] [--device cpu|cuda] [--model DIR]

Both do the same data-free W4 quantization of the same model (a tiny Llama built offline unless --model is
given), alternating so both see the same machine. The console's time runs from submit() until its snapshot
says SUCCEEDED; the bare command's from spawn to exit. Goal: console <= 1.03x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from webui.services.container import Services  # noqa: E402
from webui.services.quantize_spec import AwqSpec  # noqa: E402
from webui.settings import Settings  # noqa: E402

GOAL_RATIO = 1.03


def bare(model: Path, out: Path, device: str) -> float:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "lmdeploy", "lite", "auto_awq", str(model), "--work-dir", str(out),  # noqa: S603
                    "--calib-samples", "0", "--device", device], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def console(services: Services, model: Path, device: str) -> float:
    start = time.monotonic()
    job = services.jobs.submit(AwqSpec(model_path=str(model), calib_source="none", device=device)).job
    assert job is not None
    while (snap := services.jobs.get(job.id)).state in ("QUEUED", "RUNNING"):
        time.sleep(0.01)
    if snap.state != "SUCCEEDED":
        raise SystemExit(f"console job {snap.state}: {snap.error}")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model:
            model = args.model.resolve()
        else:
            from tests.tiny_model import build_tiny_model

            model = build_tiny_model(root / "models" / "tiny")
        services = Services.build(Settings(state_dir=root / "state", model_roots=(model.parent,)))
        pairs = []
        try:
            for i in range(args.runs):
                c = console(services, model, args.device)
                out = root / f"bare-{i}"
                b = bare(model, out, args.device)
                shutil.rmtree(out, ignore_errors=True)
                pairs.append((c, b))
                print(f"run {i + 1}: console {c:.2f} s | bare CLI {b:.2f} s | ratio {c / b:.3f}", flush=True)
        finally:
            services.close()
    ratios = [c / b for c, b in pairs]
    print(f"\nmedian console {statistics.median(c for c, _ in pairs):.2f} s, bare "
          f"{statistics.median(b for _, b in pairs):.2f} s, median ratio {statistics.median(ratios):.3f} "
          f"(goal <= {GOAL_RATIO})")


if __name__ == "__main__":
    main()
