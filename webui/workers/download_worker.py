"""Child process of one download: fetches a repo's files at one commit, checks each against the size and
hash the hub gave, and keeps a JSON progress file that the console reads.

Usage: python -m webui.workers.download_worker JOB_FILE

JOB_FILE (JSON) names the repo, the commit, the endpoint, the files and where they go. A hub token, when
there is one, comes only in the environment (`HF_TOKEN`, read by `huggingface_hub`'s own header builder),
never in the job file or on the command line.

The bytes are fetched here, not by `hf_hub_download`: since huggingface_hub 1.x every attempt writes a new,
uniquely named temporary file and deletes it when the attempt fails, so a broken connection, a cancel or a
console restart starts each file again from zero. Here each file grows in a `.part` file that a later run
continues with a `Range` request, so no byte is fetched twice beyond the piece in flight. The client still
gives the URLs, the headers (user agent, token) and its typed errors (gated, not found).

Into a models folder, files land in `.<name>.partial` beside it (a hidden name, so the pickers never list a
broken download) and the folder is renamed into place when every file is verified. Into the Hugging Face
cache, files land as the cache's own blobs and snapshot links, so `lmdeploy` and `hf` find them there.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from webui.workers.term_guard import TermGuard

PIECE_BYTES = 256 << 10  # written (and counted) as it arrives: a kill loses at most this much of a file
HASH_BLOCK = 1 << 20
PROGRESS_EVERY_S = 0.25
RATE_WINDOW_S = 5.0
FILE_ATTEMPTS = 6  # tries without progress; any byte received resets the count
TIMEOUT_S = 30.0  # to connect, and between two reads
MAX_THREADS = 8
# Transport failures worth another try from where the file stands.
TRANSIENT = frozenset({"ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "RemoteProtocolError",
                       "ReadError", "WriteError", "NetworkError", "TransportError", "ConnectionError",
                       "ConnectionResetError", "IncompleteRead", "ShortBody", "ServerBusy"})
MANIFEST = ".download.json"  # in a partial folder: the commit and the hash of every file it is collecting


class HashMismatch(Exception):
    """The bytes on disk are not the file the hub described."""

    def __init__(self, path: str, got: str, expected: str) -> None:
        super().__init__(f"{path}: got {got}, the hub lists {expected}")
        self.params = {"file": path, "got": got, "expected": expected}


class Progress:
    """Per-file byte counts shared by the download threads, written as one JSON file a few times a second."""

    def __init__(self, path: Path, files: list[dict[str, Any]]) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._done = {f["path"]: 0 for f in files}
        self._verified: list[str] = []
        self._window: deque[tuple[float, int]] = deque()
        self._fetched = 0  # bytes received in this process (not counting what a resume found on disk)
        self.state: dict[str, Any] = {"phase": "downloading", "started_at": round(time.time(), 3)}

    def set_done(self, path: str, value: int) -> None:
        with self._lock:
            self._done[path] = value

    def add(self, path: str, n: int) -> None:
        with self._lock:
            self._done[path] = self._done.get(path, 0) + n
            if n > 0:
                self._fetched += n

    def verified(self, path: str) -> None:
        with self._lock:
            self._verified.append(path)

    def write(self, **changes: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self.state.update(changes)
            self._window.append((now, self._fetched))
            while len(self._window) > 2 and now - self._window[0][0] > RATE_WINDOW_S:
                self._window.popleft()
            first_t, first_bytes = self._window[0]
            rate = (self._fetched - first_bytes) / (now - first_t) if now - first_t > 0.2 else 0.0
            data = {**self.state, "files": dict(self._done), "verified": list(self._verified),
                    "bytes_done": sum(self._done.values()), "fetched_bytes": self._fetched,
                    "rate_bps": round(rate, 1), "at": round(time.time(), 3)}
            temp = self._path.with_name(self._path.name + ".tmp")
            temp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(temp, self._path)


class ShortBody(Exception):
    """The connection ended before the file did (or the answer did not continue it): worth another try."""


class ServerBusy(Exception):
    """429 or 5xx from the hub or its CDN: worth another try after a pause."""


def expected_hash(spec: dict[str, Any]) -> tuple[str, Any]:
    """The hash the hub lists for a file and a fresh hasher for it: sha256 for LFS files, else the git blob id."""
    if spec.get("sha256"):
        return spec["sha256"], hashlib.sha256()
    blob = hashlib.sha1(f"blob {int(spec['size'])}\0".encode(), usedforsecurity=False)
    return spec.get("blob_id", ""), blob


def hash_existing(part: Path, hasher: Any) -> int:
    """Feed what a previous run left in the `.part` file to the hasher; returns its size."""
    size = 0
    with open(part, "rb") as source:
        while block := source.read(HASH_BLOCK):
            hasher.update(block)
            size += len(block)
    return size


def targets(job: dict[str, Any], spec: dict[str, Any]) -> tuple[Path, Path]:
    """(the `.part` file the bytes grow in, the place the verified file goes)."""
    from webui.services.hub import safe_repo_path

    if not safe_repo_path(spec["path"]):  # the listing was checked; a job file is not trusted either
        raise ValueError(f"refusing to write {spec['path']!r} outside the download folder")
    if job["mode"] == "folder":
        final = Path(job["partial_dir"]) / spec["path"]
        return final.with_name(final.name + ".part"), final
    etag = spec.get("sha256") or spec["blob_id"]
    blob = Path(job["cache_dir"]) / f"models--{job['repo_id'].replace('/', '--')}" / "blobs" / etag
    return blob.with_name(blob.name + ".incomplete"), blob


def transfer(job: dict[str, Any], spec: dict[str, Any], part: Path, hasher: Any, progress: Progress) -> None:
    """Append the rest of the file to `part` (a `Range` request from its size), feeding the hasher."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    size = int(spec["size"])
    have = part.stat().st_size if part.exists() else 0
    if have >= size:
        return
    url = hf_hub_url(job["repo_id"], spec["path"], revision=job["sha"], endpoint=job["endpoint"])
    headers = build_hf_headers()  # the token from HF_TOKEN (or the user's own login), as lmdeploy would send it
    if have:
        headers["Range"] = f"bytes={have}-"
    # A plain number: the client is httpx2 in huggingface_hub 2.x and httpx before; both take one.
    with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=TIMEOUT_S) as response:
        status = response.status_code
        if status == 429 or status >= 500:
            raise ServerBusy(f"the server answered {status}")
        if status == 416 or (have and status == 206 and not str(response.headers.get("Content-Range", ""))
                             .startswith(f"bytes {have}-")):
            part.unlink(missing_ok=True)  # the part does not fit what the server has: the file starts again
            raise ShortBody(f"the server answered {status} to a range from byte {have}")
        if status >= 400:
            response.read()
            hf_raise_for_status(response)
        if have and status != 206:  # the server ignored the range: the caller starts it again
            part.unlink(missing_ok=True)
            raise ShortBody("the server answered a range request with the whole file")
        with open(part, "ab") as out:
            for piece in response.iter_bytes(PIECE_BYTES):
                out.write(piece)
                out.flush()
                hasher.update(piece)
                progress.add(spec["path"], len(piece))
    if part.stat().st_size < size:
        raise ShortBody(f"{spec['path']}: the connection ended at {part.stat().st_size} of {size} bytes")


def fetch(job: dict[str, Any], spec: dict[str, Any], progress: Progress) -> None:
    """One file: continue its `.part`, retry transport failures from where it stands, verify, move into place.

    The part is locked while it grows: two downloads that need the same cache blob (two revisions sharing a
    file) take turns instead of appending to one file at once."""
    part, final = targets(job, spec)
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part.with_name(part.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fetch_locked(job, spec, part, final, progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    part.with_name(part.name + ".lock").unlink(missing_ok=True)
    size = int(spec["size"])
    progress.set_done(spec["path"], size)
    progress.verified(spec["path"])
    print(f"verified {spec['path']}", flush=True)


def fetch_locked(job: dict[str, Any], spec: dict[str, Any], part: Path, final: Path, progress: Progress) -> None:
    size = int(spec["size"])
    if not final.exists():
        part.parent.mkdir(parents=True, exist_ok=True)
        expected, hasher = expected_hash(spec)
        have = hash_existing(part, hasher) if part.exists() else 0
        if have > size:  # not ours to continue
            part.unlink()
            expected, hasher = expected_hash(spec)
            have = 0
        progress.set_done(spec["path"], have)
        print(f"fetching {spec['path']} ({size} bytes" + (f", {have} already here)" if have else ")"), flush=True)
        misses = 0
        while True:
            before = part.stat().st_size if part.exists() else 0
            try:
                transfer(job, spec, part, hasher, progress)
                break
            except Exception as exc:
                names = {c.__name__ for c in type(exc).__mro__}
                if not names & TRANSIENT:
                    raise
                now = part.stat().st_size if part.exists() else 0
                if now < before:  # the part was dropped: the file starts again from zero
                    expected, hasher = expected_hash(spec)
                    progress.set_done(spec["path"], 0)
                misses = 0 if now > before else misses + 1
                if misses >= FILE_ATTEMPTS:
                    raise
                print(f"retrying {spec['path']} from byte {now} after {type(exc).__name__}: {str(exc)[:200]}",
                      flush=True)
                time.sleep(min(2 ** misses, 16) if misses else 0.2)
        actual = hasher.hexdigest()
        got = part.stat().st_size
        if got != size or (expected and actual != expected):
            part.unlink(missing_ok=True)  # a retry fetches it again rather than trusting these bytes
            if got != size:
                raise HashMismatch(spec["path"], f"{got} bytes", f"{size} bytes")
            raise HashMismatch(spec["path"], f"{actual[:16]}…", f"{expected[:16]}…")
        os.replace(part, final)


def link_snapshot(job: dict[str, Any], spec: dict[str, Any], blob: Path) -> None:
    """`snapshots/<sha>/<path>` → `../../blobs/<etag>`, the Hugging Face cache's own layout."""
    link = blob.parent.parent / "snapshots" / job["sha"] / spec["path"]
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(blob, link.parent))


def error_of(exc: BaseException, job: dict[str, Any]) -> dict[str, Any]:
    """The error as the console shows it: a catalog key (see services/hub.py) and the English words."""
    from webui.services.hub import problem_of

    if isinstance(exc, HashMismatch):
        return {"key": "hub.err.hash_mismatch", "params": exc.params, "message": str(exc)}
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return {"key": "hub.err.disk_full_now", "params": {"path": str(exc.filename or job["output_dir"])},
                "message": f"{type(exc).__name__}: {exc}"[:500]}
    if isinstance(exc, OSError) and exc.errno is not None and getattr(exc, "filename", None):
        return {"key": "hub.err.local", "params": {"error": f"{exc.strerror} ({exc.filename})"[:300]},
                "message": f"{type(exc).__name__}: {exc}"[:500]}
    problem = problem_of(exc, job["repo_id"], job["endpoint"])
    return {"key": problem.key, "params": problem.params, "message": f"{type(exc).__name__}: {str(exc)[:500]}"}


def publish(job: dict[str, Any], progress: Progress, guard: TermGuard) -> str:
    """Put the verified files where the pickers look, and say so, as one step."""
    with guard.publishing():
        if job["mode"] == "folder":
            output = Path(job["output_dir"])
            if output.is_dir() and not any(output.iterdir()):
                output.rmdir()
            (Path(job["partial_dir"]) / MANIFEST).unlink(missing_ok=True)
            os.replace(job["partial_dir"], output)
        else:
            for spec in job["files"]:  # the snapshot appears only once every blob is verified
                link_snapshot(job, spec, targets(job, spec)[1])
            repo_dir = Path(job["cache_dir"]) / f"models--{job['repo_id'].replace('/', '--')}"
            ref = repo_dir / "refs" / (job.get("revision") or "main")
            if job.get("revision") != job["sha"]:
                ref.parent.mkdir(parents=True, exist_ok=True)
                ref.write_text(job["sha"], encoding="utf-8")
            output = repo_dir / "snapshots" / job["sha"]
        progress.write(phase="done", path=str(output), commit=job["sha"])
    return str(output)


def reconcile(job: dict[str, Any]) -> None:
    """A partial folder may hold files of another commit (a branch moved between two runs): keep a file, or its
    `.part`, only where the hash this commit lists is the one it was fetched for; drop everything else."""
    if job["mode"] != "folder":
        return  # cache blobs are named by their hash: another commit's blob is another file
    partial = Path(job["partial_dir"])
    want = {f["path"]: f.get("sha256") or f["blob_id"] for f in job["files"]}
    try:
        had = json.loads((partial / MANIFEST).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        had = {}
    if partial.is_dir():
        for path in sorted(partial.rglob("*"), reverse=True):
            rel = path.relative_to(partial).as_posix()
            name = rel[:-5] if rel.endswith(".part") else rel
            if path.is_dir() or rel == MANIFEST or rel.startswith(".cache/"):
                continue
            if want.get(name) is None or had.get(name) != want[name]:
                print(f"dropping {rel}: not part of commit {job['sha'][:12]} as listed", flush=True)
                path.unlink(missing_ok=True)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / MANIFEST).write_text(json.dumps({"commit": job["sha"], "files": want}), encoding="utf-8")


def run(job: dict[str, Any], progress: Progress, guard: TermGuard) -> None:
    reconcile(job)
    files = sorted(job["files"], key=lambda f: (int(f["size"]), f["path"]))  # config.json and friends first
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            progress.write()

    reporter = threading.Thread(target=report, name="progress", daemon=True)
    reporter.start()
    pool = ThreadPoolExecutor(max_workers=max(1, min(MAX_THREADS, len(files))))
    try:
        futures = [pool.submit(fetch, job, spec, progress) for spec in files]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if failed is not None:  # the others are not waited for: the process ends and a resume picks them up
            pool.shutdown(wait=False, cancel_futures=True)
            exc = failed.exception()
            assert exc is not None
            raise exc
        pool.shutdown()
    finally:
        stop.set()
    progress.write(phase="verified")
    print(f"all {len(files)} files verified; published at {publish(job, progress, guard)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    progress = Progress(Path(job["progress_path"]), job["files"])
    guard = TermGuard()
    guard.install()
    progress.write()
    try:
        run(job, progress, guard)
    except BaseException as exc:  # noqa: BLE001 - every ending is reported, then the process exits
        error = error_of(exc, job)
        print(f"download failed: {error['message']}", flush=True)
        progress.write(phase="error", error=error)
        os._exit(1)  # threads still fetching other files stop here; their `.incomplete` files stay for a resume
    return 0


if __name__ == "__main__":
    sys.exit(main())
