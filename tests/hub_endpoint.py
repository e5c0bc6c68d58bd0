"""A local stand-in for the Hugging Face Hub: enough of its HTTP protocol for the real `huggingface_hub` client.

Download code is tested against the real client talking to this endpoint (over `endpoint=` or `HF_ENDPOINT`),
so what the client asks and how it reacts to errors, dropped connections and slow links is the client's own
behaviour, not a mock's. It serves folders from disk (nothing is held in memory), answers with the headers and
error codes the real hub uses (the client maps `X-Error-Code` to its exception classes), and can misbehave on
purpose: corrupt a file, cut a transfer short, throttle. Standard library only, so a benchmark can run it as a
child process (`python -m tests.hub_endpoint --repo ORG/NAME=FOLDER`) outside the measured client's GIL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".model", ".gguf"})
LFS_MIN_SIZE = 1 << 20  # larger than this is LFS whatever the name (the hub's rule of thumb: big files are LFS)
POINTER_SIZE = 134  # size of a git-lfs pointer file for a sha256 oid, as the hub reports it
LAST_MODIFIED = "2024-01-01T00:00:00.000Z"
READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class RepoFile:
    """A file as the hub advertises it: git blob sha1 always, sha256 only for LFS files."""

    path: str
    size: int
    blob_id: str
    sha256: str | None


@dataclass(frozen=True)
class Request:
    """One request as answered (recorded when the answer is finished; the token itself is never kept)."""

    method: str
    path: str  # URL path, percent-decoded, without the query
    range: str | None  # the Range header as sent
    has_authorization: bool  # whether an Authorization header came
    status: int
    query: str = ""  # raw query string
    repo_id: str | None = None  # the registered repo the request addressed, if any
    file: str | None = None  # the repo file of a resolve request
    body_bytes: int = 0  # body bytes actually sent


@dataclass
class _Repo:
    repo_id: str
    folder: Path
    sha: str
    gated: bool
    tokens: frozenset[str]
    files: dict[str, RepoFile]
    corrupt: set[str] = field(default_factory=set)
    drops: dict[str, list[int]] = field(default_factory=dict)  # path -> [nbytes, times left, reset]
    listed_sizes: dict[str, int] = field(default_factory=dict)  # path -> size the listings claim instead
    listed_names: dict[str, str] = field(default_factory=dict)  # path -> name the model info lists instead
    failures: dict[str, list[int]] = field(default_factory=dict)  # path -> [status, GETs left to fail]
    no_range: set[str] = field(default_factory=set)  # paths whose GETs ignore Range (a 200 with the whole file)


def is_lfs(path: str, size: int) -> bool:
    """The LFS rule this endpoint applies (weights by suffix, anything over 1 MiB by size)."""
    return Path(path).suffix in LFS_SUFFIXES or size > LFS_MIN_SIZE


def hash_file(file: Path, rel: str) -> RepoFile:
    """Git blob sha1 (`sha1(b"blob SIZE\\0" + data)`) and, for LFS files, sha256, streamed from disk."""
    size = file.stat().st_size
    blob = hashlib.sha1(b"blob %d\0" % size)  # noqa: S324 - git's object id, not a security use
    lfs = is_lfs(rel, size)
    sha256 = hashlib.sha256() if lfs else None
    with file.open("rb") as fh:
        while block := fh.read(READ_BLOCK):
            blob.update(block)
            if sha256 is not None:
                sha256.update(block)
    return RepoFile(rel, size, blob.hexdigest(), sha256.hexdigest() if sha256 is not None else None)


def _dir_oid(prefix: str, files: Iterable[RepoFile]) -> str:
    """A stable id for a folder (the real hub gives the git tree sha; only stability matters to clients)."""
    h = hashlib.sha1(prefix.encode())  # noqa: S324
    for f in sorted(files, key=lambda f: f.path):
        if f.path.startswith(prefix + "/"):
            h.update(f"{f.path}\0{f.blob_id}\n".encode())
    return h.hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: HubEndpoint

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up is normal (cancelled downloads); anything else is still reported."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            return
        super().handle_error(request, client_address)


class _Dropped(Exception):
    """The endpoint cut the connection on purpose (drop_after)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server_version = "hub-endpoint"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass

    def setup(self) -> None:
        super().setup()
        self.server.hub._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.hub._track(self.connection, False)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, _Dropped):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_POST(self) -> None:  # noqa: N802
        self._drain()
        self._serve(body=True)

    def _drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def _serve(self, body: bool) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        self._status = 0
        self._sent = 0
        self._repo_id: str | None = None
        self._file: str | None = None
        auth = self.headers.get("Authorization")
        token = auth[7:].strip() if auth and auth[:7].lower() == "bearer " else None
        if token:
            hub._saw_token(token)
        try:
            hub._route(self, self.command, split.path, parse_qs(split.query), token, body)
        finally:
            hub._record(Request(self.command, unquote(split.path), self.headers.get("Range"), auth is not None,
                                self._status, split.query, self._repo_id, self._file, self._sent))

    # -- answers --------------------------------------------------------------------------------------------

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self._status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def send_json(self, status: int, payload: Any, body: bool, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._head(status, {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(data)),
                            **(extra or {})})
        if body:
            self.wfile.write(data)

    def send_error_code(self, status: int, code: str | None, message: str, body: bool,
                        extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self.send_json(status, {"error": message}, body, headers)


class HubEndpoint:
    """A local hub: `with HubEndpoint() as hub: hub.add_repo("org/name", folder)`, then `endpoint=hub.url`."""

    def __init__(self, throttle_bps: int = 0, chunk: int = 64 * 1024, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.url = ""
        self.requests: list[Request] = []
        self._throttle = throttle_bps
        self._chunk = max(1, chunk)
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._served: dict[tuple[str, str], int] = {}
        self._tokens: set[str] = set()
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------------------

    def start(self) -> HubEndpoint:
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _Handler)
        server.hub = self
        self._server = server
        self.url = f"http://{self._host}:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hub-endpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops accepting and cuts open connections (a throttled transfer does not hold stop up)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> HubEndpoint:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- repos ----------------------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, folder: Path, *, gated: bool = False, tokens: frozenset[str] = frozenset(),
                 sha: str | None = None) -> str:
        """Serves every file under `folder` (hidden `.cache`/`.git` folders excepted); returns the commit sha."""
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(folder)
        files: dict[str, RepoFile] = {}
        for file in sorted(folder.rglob("*")):
            rel = file.relative_to(folder).as_posix()
            if not file.is_file() or rel.split("/", 1)[0] in (".git", ".cache"):
                continue
            files[rel] = hash_file(file, rel)
        if sha is None:
            h = hashlib.sha1()  # noqa: S324
            for f in files.values():
                h.update(f"{f.path}\0{f.blob_id}\0{f.sha256 or ''}\n".encode())
            sha = h.hexdigest()
        elif len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"sha must be 40 lowercase hex digits: {sha!r}")
        with self._lock:
            self._repos[repo_id] = _Repo(repo_id, folder, sha, gated, frozenset(tokens), files)
        return sha

    def files(self, repo_id: str) -> list[RepoFile]:
        return list(self._repos[repo_id].files.values())

    def sha(self, repo_id: str) -> str:
        return self._repos[repo_id].sha

    def corrupt(self, repo_id: str, path: str) -> None:
        """Serve that file with one byte flipped (same size, same advertised hashes): only a checksum notices."""
        repo = self._repos[repo_id]
        if repo.files[path].size == 0:
            raise ValueError(f"{path} is empty: nothing to corrupt")
        with self._lock:
            repo.corrupt.add(path)

    def drop_after(self, repo_id: str, path: str, nbytes: int, times: int = 1, *, reset: bool = False) -> None:
        """Cut the next `times` GETs of that file after `nbytes` body bytes. By default the socket is closed
        (FIN: the client sees a short body); `reset=True` sends a TCP RST instead (the client sees a read error)."""
        repo = self._repos[repo_id]
        if path not in repo.files:
            raise KeyError(path)
        with self._lock:
            repo.drops[path] = [nbytes, times, int(reset)]

    def advertise_size(self, repo_id: str, path: str, size: int) -> None:
        """Make the model info list that file at `size` (a repo too big for the disk) without serving it."""
        repo = self._repos[repo_id]
        with self._lock:
            repo.listed_sizes[path] = size

    def list_as(self, repo_id: str, path: str, name: str) -> None:
        """Make the model info list that file under another name (a hostile hub: `../../x`, `/etc/x`)."""
        repo = self._repos[repo_id]
        with self._lock:
            repo.listed_names[path] = name

    def fail_next(self, repo_id: str, path: str, status: int, times: int = 1) -> None:
        """Answer the next `times` GETs of that file with `status` (a 503 or 429 from a busy CDN)."""
        repo = self._repos[repo_id]
        with self._lock:
            repo.failures[path] = [status, times]

    def ignore_range(self, repo_id: str, path: str) -> None:
        """Answer that file's ranged GETs with 200 and the whole file, as some proxies do."""
        repo = self._repos[repo_id]
        with self._lock:
            repo.no_range.add(path)

    def set_throttle(self, bps: int) -> None:
        """Bytes per second per response (0: unlimited); responses already under way keep their rate."""
        self._throttle = max(0, bps)

    def served_bytes(self, repo_id: str, path: str) -> int:
        with self._lock:
            return self._served.get((repo_id, path), 0)

    def bearer_tokens_seen(self) -> set[str]:
        with self._lock:
            return set(self._tokens)

    # -- internals (called from handler threads) ------------------------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _saw_token(self, token: str) -> None:
        with self._lock:
            self._tokens.add(token)

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _find_repo(self, segments: list[str]) -> tuple[_Repo | None, str, list[str]]:
        """Longest registered repo id at the start of `segments` (ids have one or two parts)."""
        for n in (2, 1):
            if len(segments) >= n:
                repo_id = "/".join(segments[:n])
                repo = self._repos.get(repo_id)
                if repo is not None:
                    return repo, repo_id, segments[n:]
        n = 2 if len(segments) >= 2 else len(segments)
        return None, "/".join(segments[:n]), segments[n:]

    def _route(self, h: _Handler, method: str, raw_path: str, query: dict[str, list[str]], token: str | None,
               body: bool) -> None:
        segments = [unquote(s) for s in raw_path.strip("/").split("/")] if raw_path.strip("/") else []
        if method == "GET" and len(segments) >= 3 and segments[:2] == ["api", "models"]:
            return self._api(h, segments[2:], query, body)
        if method in ("GET", "HEAD") and "resolve" in segments[1:3]:
            split = segments.index("resolve", 1)
            repo = self._repos.get("/".join(segments[:split]))
            rest = segments[split + 1:]
            if repo is None:
                return h.send_error_code(401, "RepoNotFound", "Repository Not Found", body)
            if len(rest) < 2:
                return h.send_error_code(404, None, "Not Found", body)
            return self._resolve(h, repo, rest[0], "/".join(rest[1:]), token, body)
        h.send_error_code(404, None, "Not Found", body)

    def _revision(self, h: _Handler, repo: _Repo, revision: str, body: bool) -> bool:
        if revision in ("main", repo.sha):
            return True
        h.send_error_code(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
        return False

    def _api(self, h: _Handler, segments: list[str], query: dict[str, list[str]], body: bool) -> None:
        repo, repo_id, rest = self._find_repo(segments)
        if repo is None:
            return h.send_error_code(401, "RepoNotFound", "Repository Not Found", body)
        h._repo_id = repo.repo_id
        if not rest:
            return h.send_json(200, self._model_info(repo, query), body)
        if rest[0] == "revision" and len(rest) == 2:
            if self._revision(h, repo, rest[1], body):
                h.send_json(200, self._model_info(repo, query), body)
            return None
        if rest[0] == "tree" and len(rest) >= 2:
            if not self._revision(h, repo, rest[1], body):
                return None
            prefix = "/".join(rest[2:]).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = self._tree(repo, prefix, recursive)
            if entries is None:
                return h.send_error_code(404, "EntryNotFound", f"{prefix} does not exist on \"{rest[1]}\"", body,
                                         {"X-Repo-Commit": repo.sha})
            return h.send_json(200, entries, body)
        h.send_error_code(404, None, "Not Found", body)

    def _model_info(self, repo: _Repo, query: dict[str, list[str]]) -> dict[str, Any]:
        """Like the hub: siblings carry sizes and hashes only when asked (`?blobs=true`, files_metadata)."""
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings: list[dict[str, Any]] = []
        for f in repo.files.values():
            sibling: dict[str, Any] = {"rfilename": repo.listed_names.get(f.path, f.path)}
            size = repo.listed_sizes.get(f.path, f.size)
            if blobs:
                sibling.update(size=size, blobId=f.blob_id)
                if f.sha256 is not None:
                    sibling["lfs"] = {"sha256": f.sha256, "size": size, "pointerSize": POINTER_SIZE}
            siblings.append(sibling)
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        return {
            "_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id, "author": author, "sha": repo.sha,
            "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "library_name": None,
            "lastModified": LAST_MODIFIED, "createdAt": LAST_MODIFIED,
            "usedStorage": sum(f.size for f in repo.files.values()), "siblings": siblings,
        }

    def _tree(self, repo: _Repo, prefix: str, recursive: bool) -> list[dict[str, Any]] | None:
        files = list(repo.files.values())
        base = prefix + "/" if prefix else ""
        under = [f for f in files if f.path.startswith(base)]
        if prefix and not under:
            return None
        dirs: set[str] = set()
        entries: list[dict[str, Any]] = []
        for f in under:
            parts = f.path[len(base):].split("/")
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                dirs.add(base + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
                if f.sha256 is not None:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": POINTER_SIZE}
                entries.append(entry)
        folders = [{"type": "directory", "oid": _dir_oid(d, files), "size": 0, "path": d} for d in sorted(dirs)]
        return folders + sorted(entries, key=lambda e: e["path"])

    def _resolve(self, h: _Handler, repo: _Repo, revision: str, path: str, token: str | None, body: bool) -> None:
        h._repo_id = repo.repo_id
        if repo.gated and token not in repo.tokens:
            if token is None:
                message = (f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                           "authenticated to access it. Please log in.")
                return h.send_error_code(401, "GatedRepo", message, body)
            message = (f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                       f"Visit https://huggingface.co/{repo.repo_id} to ask for access.")
            return h.send_error_code(403, "GatedRepo", message, body)
        if not self._revision(h, repo, revision, body):
            return None
        f = repo.files.get(path)
        if f is None:
            return h.send_error_code(404, "EntryNotFound", "Entry not found", body, {"X-Repo-Commit": repo.sha})
        h._file = path
        with self._lock:
            failing = repo.failures.get(path) if body else None
            if failing and failing[1] > 0:
                failing[1] -= 1
                status_code = failing[0]
            else:
                status_code = 0
        if status_code:
            return h.send_error_code(status_code, None, "Service Unavailable", body, {"Retry-After": "0"})
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "X-Repo-Commit": repo.sha,
                   "ETag": f'"{f.sha256 or f.blob_id}"', "Content-Disposition": f'inline; filename="{Path(path).name}"'}
        if f.sha256 is not None:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
        start, end = 0, f.size - 1
        status = 200
        rng = h.headers.get("Range")
        if rng and path not in repo.no_range:
            parsed = _parse_range(rng, f.size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{f.size}"
                return h.send_error_code(416, None, "Range Not Satisfiable", body, headers)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        h._head(status, headers)
        if body and length:
            self._send_body(h, repo, f, start, length)

    def _send_body(self, h: _Handler, repo: _Repo, f: RepoFile, start: int, length: int) -> None:
        bps, chunk = self._throttle, self._chunk
        with self._lock:
            corrupt = f.path in repo.corrupt
            drop = repo.drops.get(f.path)
            cut: int | None = None
            reset = False
            if drop is not None and drop[1] > 0:
                cut, reset = drop[0], bool(drop[2])
                drop[1] -= 1
        flip = f.size // 2 if corrupt else -1
        began = time.monotonic()
        sent = 0
        with (repo.folder / f.path).open("rb") as fh:
            fh.seek(start)
            while sent < length:
                n = min(chunk, length - sent)
                if cut is not None:
                    n = min(n, cut - sent)
                    if n <= 0:
                        self._cut(h, reset)
                data = fh.read(n)
                if not data:  # the file shrank on disk: nothing sensible to send
                    self._cut(h, True)
                if start + sent <= flip < start + sent + len(data):
                    buf = bytearray(data)
                    buf[flip - start - sent] ^= 0xFF
                    data = bytes(buf)
                if bps:
                    delay = began + (sent + len(data)) / bps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                h.wfile.write(data)
                sent += len(data)
                h._sent = sent
                with self._lock:
                    key = (repo.repo_id, f.path)
                    self._served[key] = self._served.get(key, 0) + len(data)

    @staticmethod
    def _cut(h: _Handler, reset: bool) -> None:
        h.close_connection = True
        conn = h.connection
        try:
            if reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                conn.close()
            else:
                conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Dropped


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """`bytes=N-`, `bytes=N-M`, `bytes=-N` (the last N) → inclusive (start, end); None if unsatisfiable."""
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return None
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def main(argv: list[str] | None = None) -> int:
    """Serve folders as hub repos until SIGTERM/SIGINT; prints `URL http://127.0.0.1:PORT` once listening."""
    parser = argparse.ArgumentParser(prog="python -m tests.hub_endpoint", description=main.__doc__)
    parser.add_argument("--repo", action="append", default=[], metavar="ORG/NAME=FOLDER")
    parser.add_argument("--gated", action="append", default=[], metavar="ORG/NAME=FOLDER",
                        help="a gated repo: its files need one of --token")
    parser.add_argument("--token", action="append", default=[], help="a token that opens the gated repos")
    parser.add_argument("--throttle-bps", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=64 * 1024)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.repo and not args.gated:
        parser.error("give at least one --repo ORG/NAME=FOLDER")
    hub = HubEndpoint(args.throttle_bps, args.chunk, host=args.host, port=args.port)
    for spec, gated in [(s, False) for s in args.repo] + [(s, True) for s in args.gated]:
        repo_id, sep, folder = spec.partition("=")
        if not sep or not repo_id or not folder:
            parser.error(f"expected ORG/NAME=FOLDER, got {spec!r}")
        hub.add_repo(repo_id, Path(folder), gated=gated, tokens=frozenset(args.token))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with hub:
        print(f"URL {hub.url}", flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
