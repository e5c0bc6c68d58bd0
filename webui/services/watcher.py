"""The background loop that moves servers and jobs through their states, and a wait on those states."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from webui.services.store import Store

S = TypeVar("S")


class Watcher:
    """Calls tick() every interval (or at once when woken) on a daemon thread until stopped.

    A failing tick is recorded as an event and the loop goes on: one bad row must not stop every watch.
    """

    def __init__(self, name: str, tick: Callable[[], None], interval_s: float, store: Store) -> None:
        self._tick = tick
        self._interval_s = interval_s
        self._store = store
        self._name = name
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._tick()
            except Exception as exc:
                self._store.add_event("console", f"{self._name}_error", repr(exc)[:300])
            self._wake.wait(self._interval_s)
            self._wake.clear()


def wait_for_state(get: Callable[[], S], states: set[str], timeout_s: float, poll_s: float = 0.02) -> S:
    """Poll get() until its snapshot's state is one of `states` or the time is up; return the last snapshot."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap: Any = get()
        if snap.state in states or time.monotonic() > deadline:
            return snap
        time.sleep(poll_s)
