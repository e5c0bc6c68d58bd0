"""One SQLite file in the state folder: servers, their events, and small console preferences."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS servers (
    id TEXT PRIMARY KEY,
    owned INTEGER NOT NULL,
    spec_json TEXT NOT NULL,
    state TEXT NOT NULL,
    phase TEXT NOT NULL DEFAULT '',
    base_url TEXT NOT NULL,
    model_id TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    create_time REAL,
    log_path TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    ready_at REAL,
    ended_at REAL,
    exit_code INTEGER,
    hint TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    keep_running INTEGER NOT NULL DEFAULT 0,
    gpu_blocks INTEGER
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    state TEXT NOT NULL,
    resource TEXT NOT NULL,
    output_dir TEXT NOT NULL DEFAULT '',
    job_file TEXT NOT NULL DEFAULT '',
    log_path TEXT NOT NULL DEFAULT '',
    progress_path TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    create_time REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    exit_code INTEGER,
    error TEXT NOT NULL DEFAULT '',
    result_json TEXT NOT NULL DEFAULT '',
    peak_ram_bytes INTEGER NOT NULL DEFAULT 0,
    peak_gpu_bytes INTEGER NOT NULL DEFAULT 0,
    layers INTEGER NOT NULL DEFAULT 0,
    command TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS demos (
    id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    spec_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS demo_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    demo_id TEXT NOT NULL,
    at REAL NOT NULL,
    guest TEXT NOT NULL,
    outcome TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    ttft_ms REAL,
    text TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS demo_requests_by_demo ON demo_requests (demo_id, at);
CREATE TABLE IF NOT EXISTS prefs (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class ServerRecord:
    """One row of `servers`: an api_server the console started (owned) or attached to (observed)."""

    id: str
    owned: bool
    spec_json: str
    state: str
    base_url: str
    created_at: float
    phase: str = ""
    model_id: str = ""
    pid: int | None = None
    create_time: float | None = None
    log_path: str = ""
    started_at: float | None = None
    ready_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    hint: str = ""
    detail: str = ""
    keep_running: bool = False
    gpu_blocks: int | None = None

    @property
    def spec(self) -> dict[str, Any]:
        return json_object(self.spec_json)


@dataclass(frozen=True)
class JobRecord:
    """One row of `jobs`: a quantization job, from queued to its result."""

    id: str
    kind: str
    spec_json: str
    state: str
    resource: str
    created_at: float
    output_dir: str = ""
    job_file: str = ""
    log_path: str = ""
    progress_path: str = ""
    pid: int | None = None
    create_time: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    error: str = ""
    result_json: str = ""
    peak_ram_bytes: int = 0
    peak_gpu_bytes: int = 0
    layers: int = 0
    command: str = ""

    @property
    def spec(self) -> dict[str, Any]:
        return json_object(self.spec_json)

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.result_json) if self.result_json else {}


_COLUMNS = MappingProxyType({"servers": tuple(f.name for f in fields(ServerRecord)),
                             "jobs": tuple(f.name for f in fields(JobRecord))})


@dataclass(frozen=True)
class EventRecord:
    """Something worth a marker on a timeline: a server started, became ready, stopped, failed."""

    id: int
    at: float
    source: str
    kind: str
    detail: str


class Store:
    """Thread-safe access to the console's SQLite file; app-scoped, shared by all services."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # WAL with NORMAL never corrupts the file; it skips an fsync per commit (a stop or a progress update
            # waited on the disk), at the price of the last commits before a power cut.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA secure_delete=ON")  # rewritten rows leave no old text in free pages
            self._conn.executescript(SCHEMA)
        try:
            path.chmod(0o600)  # it holds API keys of the servers it started
        except OSError:
            pass

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database file and empty it (after rewriting something secret)."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # rows --------------------------------------------------------------------------------------
    def _insert(self, table: str, record: ServerRecord | JobRecord) -> None:
        row = asdict(record)
        columns = _COLUMNS[table]
        marks = ", ".join("?" for _ in columns)
        with self._tx() as conn:
            conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", [row[c] for c in columns])

    def _update(self, table: str, row_id: str, changes: dict[str, Any]) -> None:
        unknown = set(changes) - set(_COLUMNS[table]) - {"id"}
        if unknown:
            raise KeyError(f"unknown {table} columns: {sorted(unknown)}")
        assignments = ", ".join(f"{k} = ?" for k in changes) or "id = id"
        with self._tx() as conn:
            cursor = conn.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", [*changes.values(), row_id])
            if cursor.rowcount == 0:
                raise KeyError(row_id)

    def _rows(self, table: str, where: str = "", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(f"SELECT * FROM {table} {where} ORDER BY created_at DESC", args).fetchall()
        return [dict(r) for r in rows]

    # servers -------------------------------------------------------------------------------------
    def insert_server(self, record: ServerRecord) -> None:
        self._insert("servers", record)

    def update_server(self, server_id: str, **changes: Any) -> ServerRecord:
        self._update("servers", server_id, changes)
        record = self.get_server(server_id)
        if record is None:
            raise KeyError(server_id)
        return record

    def get_server(self, server_id: str) -> ServerRecord | None:
        rows = self._rows("servers", "WHERE id = ?", (server_id,))
        return _server(rows[0]) if rows else None

    def list_servers(self) -> list[ServerRecord]:
        return [_server(r) for r in self._rows("servers")]

    def delete_server(self, server_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM servers WHERE id = ?", (server_id,))

    # jobs ----------------------------------------------------------------------------------------
    def insert_job(self, record: JobRecord) -> None:
        self._insert("jobs", record)

    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        self._update("jobs", job_id, changes)
        record = self.get_job(job_id)
        if record is None:
            raise KeyError(job_id)
        return record

    def get_job(self, job_id: str, kind: str | None = None) -> JobRecord | None:
        rows = self._rows("jobs", "WHERE id = ?", (job_id,))
        return JobRecord(**rows[0]) if rows and kind in (None, rows[0]["kind"]) else None

    def list_jobs(self, kind: str | None = None) -> list[JobRecord]:
        """All jobs, or those of one kind ("awq", "download"): each manager reads only its own."""
        if kind is None:
            return [JobRecord(**r) for r in self._rows("jobs")]
        return [JobRecord(**r) for r in self._rows("jobs", "WHERE kind = ?", (kind,))]

    # events --------------------------------------------------------------------------------------
    def add_event(self, source: str, kind: str, detail: str = "", at: float | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO events (at, source, kind, detail) VALUES (?, ?, ?, ?)",
                (time.time() if at is None else at, source, kind, detail),
            )

    def events(self, source: str | None = None, since: float = 0.0) -> list[EventRecord]:
        query = "SELECT * FROM events WHERE at >= ?"
        args: list[Any] = [since]
        if source is not None:
            query += " AND source = ?"
            args.append(source)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY at, id", args).fetchall()
        return [EventRecord(**dict(r)) for r in rows]

    # demos ---------------------------------------------------------------------------------------
    def insert_demo(self, row: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO demos (id, server_id, token_hash, spec_json, created_at, expires_at, "
                         "revoked_at) VALUES (:id, :server_id, :token_hash, :spec_json, :created_at, :expires_at, "
                         ":revoked_at)", row)

    def revoke_demo(self, demo_id: str, at: float) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE demos SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, demo_id))

    def get_demo(self, demo_id: str = "", token_hash: str = "") -> dict[str, Any] | None:
        where, value = ("id", demo_id) if demo_id else ("token_hash", token_hash)
        with self._lock:
            row = self._conn.execute(f"SELECT * FROM demos WHERE {where} = ?", (value,)).fetchone()
        return dict(row) if row else None

    def list_demos(self) -> list[dict[str, Any]]:
        return self._rows("demos")

    def add_demo_request(self, demo_id: str, at: float, guest: str, outcome: str, prompt_tokens: int = 0,
                         completion_tokens: int = 0, ttft_ms: float | None = None, text: str = "") -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO demo_requests (demo_id, at, guest, outcome, prompt_tokens, completion_tokens, "
                         "ttft_ms, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (demo_id, at, guest, outcome, prompt_tokens, completion_tokens, ttft_ms, text))

    def demo_requests(self, demo_id: str, limit: int = 200) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM demo_requests WHERE demo_id = ? ORDER BY at DESC, id DESC "
                                      "LIMIT ?", (demo_id, limit)).fetchall()
        return [dict(r) for r in rows]

    def demo_totals(self, demo_id: str) -> dict[str, Any]:
        """Requests and tokens by outcome, for the owner's usage panel."""
        with self._lock:
            rows = self._conn.execute("SELECT outcome, COUNT(*) AS n, SUM(completion_tokens) AS tokens, "
                                      "COUNT(DISTINCT guest) AS guests FROM demo_requests WHERE demo_id = ? "
                                      "GROUP BY outcome", (demo_id,)).fetchall()
            guests = self._conn.execute("SELECT COUNT(DISTINCT guest) FROM demo_requests WHERE demo_id = ?",
                                        (demo_id,)).fetchone()[0]
        return {"by_outcome": {r["outcome"]: {"requests": r["n"], "tokens": r["tokens"] or 0} for r in rows},
                "guests": guests}

    # prefs ---------------------------------------------------------------------------------------
    def get_pref(self, key: str, default: str = "") -> str:
        with self._lock:
            row = self._conn.execute("SELECT value FROM prefs WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    def delete_pref(self, key: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM prefs WHERE key = ?", (key,))

    def set_pref(self, key: str, value: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO prefs (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


def json_object(text: str) -> dict[str, Any]:
    """A stored JSON object; a damaged one reads as empty, so one bad row never breaks a listing."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _server(data: dict[str, Any]) -> ServerRecord:
    data["owned"] = bool(data["owned"])
    data["keep_running"] = bool(data["keep_running"])
    return ServerRecord(**data)
