"""Secrets (servers' API keys, later hub tokens) kept in one owner-only file beside the database, never in it.

The database is read by exports, snapshots and whoever copies the state folder for a bug report; a key
written there in plain text leaks with all of them. This file is 0600, written atomically, and only ever
read to pass a secret on to the process or client that needs it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class SecretStore:
    """App-scoped store of named secrets (JSON values) in one 0600 file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path.exists():
            os.chmod(path, 0o600)
        self._data = self._load()  # this store is the file's only writer, so reads come from memory

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}  # a damaged file loses its secrets, never the console
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(temp, self.path)

    def get(self, name: str, default: Any = None) -> Any:
        with self._lock:
            return self._data.get(name, default)

    def set(self, name: str, value: Any) -> None:
        with self._lock:
            if self._data.get(name) != value:
                self._write({**self._data, name: value})
                self._data = {**self._data, name: value}

    def delete(self, name: str) -> None:
        with self._lock:
            if name in self._data:
                data = {k: v for k, v in self._data.items() if k != name}
                self._write(data)
                self._data = data
