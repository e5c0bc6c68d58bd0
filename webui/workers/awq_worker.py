"""Child process of one AWQ job: runs LMDeploy's own auto_awq and writes structured progress as it goes.

Usage: python -m webui.workers.awq_worker JOB_FILE

JOB_FILE (JSON) names the model, the output, the calibration and the progress file. The quantized model is
written to `<output>.partial` and renamed into place only when complete, so a cancelled or failed job never
leaves a folder that looks like a finished model. Local calibration text replaces
`lmdeploy.lite.apis.calibrate.get_calib_loaders`, since LMDeploy's CLI only takes hub dataset names.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from webui.services.awq_progress import parse_line
from webui.services.quantize_spec import AwqSpec, read_calibration_text, sample_corpus
from webui.workers.term_guard import TermGuard


class ProgressWriter:
    """Appends one JSON object a line, flushed at once, so the console can follow it live."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the job
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def emit(self, **event: Any) -> None:
        event.setdefault("t", round(time.monotonic() - self._start, 3))
        event.setdefault("at", round(time.time(), 3))  # wall clock: the Memory chart marks phases with it
        with self._lock:
            self._file.write(json.dumps(event) + "\n")
            self._file.flush()


class LineTee(io.TextIOBase):
    """Passes writes through to the real stream and turns complete lines into progress events."""

    def __init__(self, stream: TextIO, progress: ProgressWriter) -> None:
        self._stream = stream
        self._progress = progress
        self._pending = ""

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._pending += text
        *lines, self._pending = self._pending.replace("\r", "\n").split("\n")
        for line in lines:
            event = parse_line(line)
            if event:
                self._progress.emit(**event)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")


def local_calib_loader(text: str):
    """A stand-in for LMDeploy's get_calib_loaders that cuts evenly spaced windows from local text."""

    def get_calib_loaders(name: str, tokenizer: Any, nsamples: int = 128, seed: int = 0, seqlen: int = 2048):
        ids = tokenizer(text, return_tensors="pt").input_ids
        total = int(ids.shape[1])
        if total < seqlen:
            raise ValueError(f"calibration text has {total} tokens, fewer than one sample of {seqlen}")
        if nsamples <= 1:
            starts = [0]
        else:
            step = (total - seqlen) / (nsamples - 1)
            starts = [int(i * step) for i in range(nsamples)]
        return [ids[:, s : s + seqlen] for s in starts]

    return get_calib_loaders


def run(job: dict[str, Any], progress: ProgressWriter, guard: TermGuard) -> None:
    spec = AwqSpec.from_json_dict(job["spec"])
    output = Path(job["output_dir"])
    partial = Path(job["partial_dir"])
    if partial.exists():
        shutil.rmtree(partial)
    progress.emit(phase="load")

    from lmdeploy.lite.apis import auto_awq as awq_api
    from lmdeploy.lite.apis import calibrate as calibrate_api

    if not spec.data_free and spec.calib_source in ("files", "sample"):
        text = sample_corpus() if spec.calib_source == "sample" else read_calibration_text(
            job["calib_files"], spec.text_field)
        calibrate_api.get_calib_loaders = local_calib_loader(text)
        dataset = "wikitext2"  # a name LMDeploy accepts; the loader above ignores it
    else:
        dataset = spec.calib_dataset

    real_quant_weights = awq_api.quant_weights

    def quant_weights(*args: Any, **kwargs: Any) -> Any:
        progress.emit(phase="quantize")
        result = real_quant_weights(*args, **kwargs)
        progress.emit(phase="save")
        return result

    awq_api.quant_weights = quant_weights
    started = time.monotonic()
    awq_api.auto_awq(
        str(job["model_dir"]),
        work_dir=str(partial),
        calib_dataset=dataset,
        calib_samples=0 if spec.data_free else spec.calib_samples,
        batch_size=spec.batch_size,
        calib_seqlen=spec.calib_seqlen,
        w_bits=spec.w_bits,
        w_sym=spec.w_sym,
        w_group_size=spec.w_group_size,
        search_scale=spec.search_scale,
        device=spec.device,
        dtype=spec.dtype,
        trust_remote_code=spec.trust_remote_code,
    )
    publish(partial, output, progress, seconds=time.monotonic() - started, guard=guard)


def publish(partial: Path, output: Path, progress: ProgressWriter, seconds: float, guard: TermGuard) -> None:
    """Rename the finished model into place and write "done" as one step: a cancel (SIGTERM) that arrives
    meanwhile waits until both are on disk, so a job never ends with only one of them."""
    with guard.publishing():
        if output.exists():
            output.rmdir()  # pre-flight allowed only an empty folder here
        os.replace(partial, output)
        progress.emit(phase="done", seconds=round(seconds, 3))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    progress = ProgressWriter(Path(job["progress_path"]))
    guard = TermGuard()
    guard.install()
    sys.stdout = LineTee(sys.stdout, progress)
    sys.stderr = LineTee(sys.stderr, progress)
    try:
        run(job, progress, guard)
    except BaseException as exc:
        progress.emit(phase="error", message=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
