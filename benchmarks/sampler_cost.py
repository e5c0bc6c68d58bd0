"""What the Memory tab's one sampler costs: CPU at 4 Hz, and memory after a simulated 24 hours.

Usage: python -m benchmarks.sampler_cost [--seconds 30] [--hz 4]

CPU: the sampler thread runs for --seconds at --hz while the main thread sleeps; the process's CPU time over
the wall time is its share of one core (goal <= 1%). It reads real NVML where there is a GPU; elsewhere a
stand-in with two GPUs and a few processes answers (then it measures the sampler's own work, not NVML's),
and the output says which.
Memory: 24 hours at --hz are fed through the sampler with a simulated clock; tracemalloc reports what the
history holds afterwards (both rings full) against a baseline sampler that has seen one reading.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from webui.services.gpu import GpuProbe, GpuSampler  # noqa: E402

CPU_GOAL_PERCENT = 1.0


def probe_for_this_machine() -> tuple[GpuProbe, str]:
    probe = GpuProbe()
    if probe.available:
        return probe, "real NVML"
    from tests.conftest import StandInNvml

    stand_in = StandInNvml()
    stand_in.procs[0] = [SimpleNamespace(pid=p, usedGpuMemory=(1 + p % 7) << 30) for p in range(100, 106)]
    sys.modules["pynvml"] = stand_in
    return GpuProbe(), f"stand-in NVML ({probe.reason})"


def cpu_share(probe: GpuProbe, hz: float, seconds: float) -> tuple[float, int]:
    sampler = GpuSampler(probe, hz=hz)
    me = psutil.Process()
    before = me.cpu_times()
    started = time.monotonic()
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    wall = time.monotonic() - started
    after = me.cpu_times()
    return ((after.user - before.user) + (after.system - before.system)) / wall * 100, sampler.reads


def day_of_history(probe: GpuProbe, hz: float) -> tuple[int, tuple[int, int], float]:
    clock = SimpleNamespace(t=1_800_000_000.0)
    tracemalloc.start()
    sampler = GpuSampler(probe, hz=hz, clock=lambda: clock.t)
    sampler.tick()
    baseline = tracemalloc.take_snapshot()
    started = time.monotonic()
    for _ in range(int(86_400 * hz)):
        clock.t += 1.0 / hz
        sampler.tick()
    took = time.monotonic() - started
    held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(baseline, "filename"))
    tracemalloc.stop()
    return held, sampler.sizes(), took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hz", type=float, default=4.0)
    args = parser.parse_args()
    probe, source = probe_for_this_machine()
    percent, reads = cpu_share(probe, args.hz, args.seconds)
    print(f"NVML source: {source}")
    print(f"CPU at {args.hz:g} Hz: {percent:.2f}% of one core over {args.seconds:.0f} s ({reads} readings; "
          f"goal <= {CPU_GOAL_PERCENT}%)")
    held, sizes, took = day_of_history(probe, args.hz)
    print(f"after a simulated 24 h at {args.hz:g} Hz ({int(86_400 * args.hz):,} readings fed in {took:.0f} s): "
          f"history holds {held / 1024:,.0f} KiB (fine ring {sizes[0]} samples with processes, coarse ring "
          f"{sizes[1]} samples)")


if __name__ == "__main__":
    main()
