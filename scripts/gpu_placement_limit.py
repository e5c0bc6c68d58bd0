"""Prove, on a machine with a GPU, that placement stays inside a CUDA_VISIBLE_DEVICES the console was started with.

Usage: python scripts/gpu_placement_limit.py OUTPUT_DIR [--work DIR] [--no-server]

1. Real NVML: the probe reads each GPU's UUID; a limit given as GPU 0's UUID (and as its number) leaves GPU 0
   usable, spelled as the limit spells it; a MIG entry makes the limit opaque.
2. A child given that placement environment sees exactly GPU 0 through CUDA (torch reports its UUID).
3. Unless --no-server: a console whose own limit is GPU 0's UUID starts a real api_server placed on GPU 0
   (pytorch backend, the tiny Llama built offline); its environment names the UUID, NVML shows its memory on
   GPU 0, and a choice outside the limit is refused with nothing spawned.
Writes placement_limit.json to OUTPUT_DIR; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.checks import Checks  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402
from webui.services.container import Services  # noqa: E402
from webui.services.gpu import GpuProbe  # noqa: E402
from webui.services.placement import placement_env  # noqa: E402
from webui.services.serve_spec import ServerSpec  # noqa: E402
from webui.settings import Settings  # noqa: E402

MIB = 1 << 20
CUDA_UUID = "import torch; p = torch.cuda.get_device_properties(0); print(torch.cuda.device_count(), p.uuid)"


def nvml_checks(checks: Checks) -> str:
    """The probe's reading of limits on this machine; returns GPU 0's UUID."""
    probe = GpuProbe()
    try:
        everything = probe.usable()
        checks.add("no limit: every GPU NVML lists", everything.indices == tuple(range(probe.device_count() or 0)),
                   f"{everything.indices}")
        uuid = probe.identities()[0][0]
    finally:
        probe.close()
    by_uuid = GpuProbe(uuid).usable()
    checks.add("a UUID limit leaves GPU 0, spelled as the UUID", by_uuid.indices == (0,)
               and by_uuid.spelling.get(0) == uuid, f"{by_uuid.indices} {dict(by_uuid.spelling)}")
    by_prefix = GpuProbe(uuid[:12] + ",7").usable()
    checks.add("a UUID prefix, then a GPU that is not there", by_prefix.indices == (0,), f"{by_prefix.indices}")
    mig = GpuProbe("MIG-" + uuid[4:]).usable()
    checks.add("a MIG limit is opaque", mig.opaque == "errors.gpus_limit_mig", mig.opaque)
    return uuid


def cuda_sees(uuid: str, checks: Checks) -> None:
    env = {**os.environ, **placement_env((0,), GpuProbe(uuid).usable())}
    done = subprocess.run([sys.executable, "-c", CUDA_UUID], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    words = done.stdout.split()
    checks.add("CUDA in a child placed under the limit sees exactly that GPU",
               done.returncode == 0 and words[:1] == ["1"] and uuid.endswith(words[-1]),
               f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} → {done.stdout.strip() or done.stderr[-300:]}")


def server_under_limit(uuid: str, work: Path, checks: Checks, report: dict[str, object]) -> None:
    model = work / "models" / "tiny-limit"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    settings = Settings(state_dir=work / f"state-{int(time.time())}", model_roots=(work / "models",),
                        cuda_visible_devices=uuid, cuda_device_order="")
    services = Services.build(settings)
    try:
        count = services.gpu.device_count() or 0
        if count > 1:
            refused = services.servers.start(ServerSpec(model_path=str(model), backend="pytorch", gpus=(1,),
                                                        port=services.servers.suggest_port()))
            checks.add("a GPU outside the limit is refused, nothing spawned",
                       [e.key for e in refused.errors] == ["errors.gpus_outside_limit"]
                       and not services.servers.snapshots(), f"{[e.key for e in refused.errors]}")
        idle = {d.index: d.used_bytes / MIB for d in services.gpu.devices()}
        spec = ServerSpec(model_path=str(model), backend="pytorch", cache_max_entry_count=0.2, gpus=(0,),
                          port=services.servers.suggest_port())
        t0 = time.monotonic()
        started = services.servers.start(spec)
        assert started.server is not None, started.errors
        ready = services.servers.wait_for(started.server.id, {"READY", "FAILED"}, 400)
        elapsed = time.monotonic() - t0
        env = psutil.Process(ready.pid).environ() if ready.pid else {}
        used = {d.index: d.used_bytes / MIB for d in services.gpu.devices()}
        grown = {i: round(used[i] - idle.get(i, 0.0)) for i in used}
        report["server"] = {"state": ready.state, "ready_s": elapsed, "env": env.get("CUDA_VISIBLE_DEVICES"),
                            "grown_mib": grown, "command": ready.command.splitlines()[0]}
        checks.add("a server placed under a UUID limit is READY with the UUID in its environment",
                   ready.state == "READY" and env.get("CUDA_VISIBLE_DEVICES") == uuid
                   and f"CUDA_VISIBLE_DEVICES={uuid} lmdeploy" in ready.command,
                   f"{ready.state} in {elapsed:.1f} s; {ready.command.splitlines()[0][:160]}")
        checks.add("its memory is on GPU 0 only", grown.get(0, 0) > 1024 and all(v < 256 for i, v in grown.items()
                                                                                 if i != 0), json.dumps(grown))
        t0 = time.monotonic()
        services.servers.stop(started.server.id)
        stopped = services.servers.wait_for(started.server.id, {"STOPPED", "FAILED"}, 60)
        checks.add("and it stops", stopped.state == "STOPPED", f"{stopped.state} in {time.monotonic() - t0:.2f} s")
    finally:
        services.close(keep_servers=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--no-server", action="store_true")
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="placement-limit-"))
    checks = Checks()
    report: dict[str, object] = {}
    uuid = nvml_checks(checks)
    cuda_sees(uuid, checks)
    if not args.no_server:
        server_under_limit(uuid, work, checks, report)
    report["checks"] = checks.rows
    (args.output_dir / "placement_limit.json").write_text(json.dumps(report, indent=2))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
