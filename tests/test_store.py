"""The SQLite store on a real file."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from webui.services.store import ServerRecord, Store


def record(server_id: str, created_at: float) -> ServerRecord:
    return ServerRecord(id=server_id, owned=True, spec_json='{"model_path": "/m", "api_keys": ["k"]}',
                        state="STARTING", base_url="http://127.0.0.1:23333", created_at=created_at)


def test_servers_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "console.sqlite3"
    store = Store(path)
    store.insert_server(record("a", 1.0))
    store.insert_server(record("b", 2.0))
    store.update_server("a", state="READY", pid=123, create_time=4.5, ready_at=3.0)
    store.add_event("a", "ready", "1.0 s", at=3.0)
    store.set_pref("serve.active_server", "a")
    store.close()

    again = Store(path)
    assert [r.id for r in again.list_servers()] == ["b", "a"]  # newest first
    a = again.get_server("a")
    assert a is not None and a.state == "READY" and a.pid == 123 and a.owned is True
    assert a.spec == {"model_path": "/m", "api_keys": ["k"]}
    assert [(e.source, e.kind, e.detail) for e in again.events("a")] == [("a", "ready", "1.0 s")]
    assert again.get_pref("serve.active_server") == "a"
    assert again.get_pref("missing", "dflt") == "dflt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds API keys
    again.close()


def test_bad_updates_change_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    store.insert_server(record("a", 1.0))
    with pytest.raises(KeyError):
        store.update_server("a", no_such_column=1)
    with pytest.raises(KeyError):
        store.update_server("missing", state="READY")
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_server(record("a", 5.0))  # duplicate id: the stored row stays as it was
    assert store.get_server("a").created_at == 1.0
    store.delete_server("a")
    assert store.get_server("a") is None


def test_concurrent_writers_do_not_lose_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")

    def write(n: int) -> None:
        for i in range(50):
            store.add_event(f"w{n}", "tick", str(i))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.events()) == 200
