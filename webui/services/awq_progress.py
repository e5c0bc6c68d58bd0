"""AWQ progress: the events the worker writes (JSON lines), and a parser for LMDeploy's plain prints.

LMDeploy 0.18 prints one `model.layers.{i}, samples: …` line per layer while calibrating, one
`… smooth weight done` per layer, and one `… weight packed.` per linear layer. The worker turns those into
structured events as they happen; the same parser lets the console follow a plain `lmdeploy lite auto_awq` log.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

PHASES = ("queued", "load", "calibrate", "smooth", "quantize", "save", "done")
# Share of the whole job each phase usually takes (calibrated and data-free runs).
WEIGHTS_CALIBRATED = MappingProxyType({"load": 0.10, "calibrate": 0.40, "smooth": 0.20, "quantize": 0.22, "save": 0.08})
WEIGHTS_DATA_FREE = MappingProxyType({"load": 0.25, "calibrate": 0.0, "smooth": 0.0, "quantize": 0.60, "save": 0.15})

CALIBRATED_LAYER = re.compile(r"^model\.layers\.(\d+), samples: (\d+)(?:, max gpu memory: ([\d.]+) GB)?")
SMOOTHED_LAYER = re.compile(r"^model\.layers\.(\d+) smooth weight done\.(?: max gpu memory: ([\d.]+) GB)?")
PACKED_LINEAR = re.compile(r"^model\.layers\.(\d+)\.(\S+) weight (packed|skipped)")
LOADING_DATA = re.compile(r"^Loading calibrate dataset")
MOVED = re.compile(r"^Move \S+ to (CPU|GPU)")
SAVING = re.compile(r"Writing model shards|Saving|save_pretrained")


def parse_line(line: str) -> dict[str, object] | None:
    """One printed line -> one event ({"phase", "layer"?, "gpu_gb"?}), or None if it says nothing new."""
    text = line.strip()
    if m := CALIBRATED_LAYER.match(text):
        event: dict[str, object] = {"phase": "calibrate", "layer": int(m.group(1)), "samples": int(m.group(2))}
        if m.group(3):
            event["gpu_gb"] = float(m.group(3))
        return event
    if m := SMOOTHED_LAYER.match(text):
        event = {"phase": "smooth", "layer": int(m.group(1))}
        if m.group(2):
            event["gpu_gb"] = float(m.group(2))
        return event
    if m := PACKED_LINEAR.match(text):
        return {"phase": "quantize", "layer": int(m.group(1)), "linear": m.group(2)}
    if LOADING_DATA.match(text):
        return {"phase": "calibrate"}
    if MOVED.match(text):
        return {"phase": "load"}
    if SAVING.search(text):
        return {"phase": "save"}
    return None


@dataclass
class AwqProgress:
    """Folded events: where the job is, how far, and the peak GPU memory LMDeploy reported."""

    layers: int
    data_free: bool
    phase: str = "queued"
    layer_done: dict[str, int] = field(default_factory=dict)  # phase -> layers finished in it
    gpu_gb: float = 0.0
    error: str = ""
    seconds: float | None = None

    def apply(self, event: dict[str, object]) -> None:
        phase = str(event.get("phase", ""))
        if phase == "error":
            self.error = str(event.get("message", ""))
            return
        if phase not in PHASES:
            return
        if PHASES.index(phase) >= PHASES.index(self.phase):
            self.phase = phase
        if "layer" in event:
            done = int(str(event["layer"])) + 1
            self.layer_done[phase] = max(self.layer_done.get(phase, 0), done)
        if "gpu_gb" in event:
            self.gpu_gb = max(self.gpu_gb, float(event["gpu_gb"]))  # type: ignore[arg-type]
        if phase == "done" and "seconds" in event:
            self.seconds = float(event["seconds"])  # type: ignore[arg-type]

    @property
    def layer(self) -> int:
        """Layers finished in the current phase (k of N)."""
        return min(self.layer_done.get(self.phase, 0), self.layers)

    @property
    def fraction(self) -> float:
        if self.phase == "done":
            return 1.0
        weights = WEIGHTS_DATA_FREE if self.data_free else WEIGHTS_CALIBRATED
        total = 0.0
        for phase in PHASES[1:-1]:
            if phase == self.phase:
                share = self.layer / self.layers if self.layers and phase in ("calibrate", "smooth", "quantize") else 0
                return min(1.0, total + weights[phase] * share)
            total += weights[phase]
        return 0.0


def read_events(path: Path | str) -> list[dict[str, object]]:
    """The worker's JSON-lines file; a half-written last line is skipped, a missing file is no events."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def progress_from(layers: int, data_free: bool, events: list[dict[str, object]]) -> AwqProgress:
    progress = AwqProgress(layers=layers, data_free=data_free)
    for event in events:
        progress.apply(event)
    return progress


def progress_from_log(layers: int, data_free: bool, lines: list[str]) -> AwqProgress:
    """Fallback for a plain LMDeploy run: the same progress, read from what it printed."""
    return progress_from(layers, data_free, [e for e in (parse_line(line) for line in lines) if e])
