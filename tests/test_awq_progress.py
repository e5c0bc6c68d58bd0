"""AWQ progress from LMDeploy 0.18.0's recorded output, and from the worker's JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

from webui.services.awq_progress import parse_line, progress_from, progress_from_log, read_events

DATA = Path(__file__).parent / "data"


def test_recorded_gpu_log_walks_every_phase_and_layer() -> None:
    lines = (DATA / "auto_awq-gpu.log").read_text().splitlines()
    fractions, seen = [], []
    for n in range(len(lines) + 1):
        p = progress_from_log(layers=4, data_free=False, lines=lines[:n])
        fractions.append(p.fraction)
        if not seen or seen[-1] != (p.phase, p.layer):
            seen.append((p.phase, p.layer))
    assert fractions == sorted(fractions), "progress never goes backwards"
    phases = [phase for phase, _ in seen]
    assert [p for i, p in enumerate(phases) if p not in phases[:i]] == ["queued", "load", "calibrate", "smooth",
                                                                        "quantize", "save"]
    assert ("calibrate", 4) in seen and ("smooth", 4) in seen and ("quantize", 4) in seen
    final = progress_from_log(4, False, lines)
    assert final.gpu_gb == 0.13
    assert 0.9 < final.fraction < 1.0  # saved, but only the worker's "done" makes it 100%


def test_lines_become_events() -> None:
    assert parse_line("model.layers.2, samples: 32, max gpu memory: 0.11 GB") == {
        "phase": "calibrate", "layer": 2, "samples": 32, "gpu_gb": 0.11}
    assert parse_line("model.layers.3.mlp.down_proj weight packed.") == {
        "phase": "quantize", "layer": 3, "linear": "mlp.down_proj"}
    assert parse_line("model.layers.0 smooth weight done. max gpu memory: 0.13 GB") == {
        "phase": "smooth", "layer": 0, "gpu_gb": 0.13}
    assert parse_line("[transformers] `torch_dtype` is deprecated! Use `dtype` instead!") is None


def test_worker_events_with_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    events = [{"phase": "load"}, {"phase": "quantize", "layer": 0}, {"phase": "quantize", "layer": 1},
              {"phase": "save"}, {"phase": "done", "seconds": 1.5}]
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"phase": "qua')
    read = read_events(path)
    assert read == events
    progress = progress_from(2, True, read)
    assert progress.phase == "done" and progress.fraction == 1.0 and progress.seconds == 1.5
    assert read_events(tmp_path / "missing.jsonl") == []
    errored = progress_from(2, True, [{"phase": "load"}, {"phase": "error", "message": "ValueError: x"}])
    assert errored.error == "ValueError: x" and errored.phase == "load"
