"""The lifecycle core under every supervised child (servers, quantization jobs, and what comes next).

Each manager keeps its own commands, rows and snapshots; this module keeps what they share:
- a record's process handle (None until a child was really spawned, so a failed spawn is never signalled),
- `observe_process`: the facts of a child at one moment (alive, exit code),
- `spawn_safely`: a spawn that returns the reason instead of raising, so the row can be marked FAILED,
- `Monitor`: one daemon loop that checks each record in its own `try` (one bad record never stops the others)
  and logs a repeating failure once a minute with its traceback instead of flooding the events table,
- `wait_for_state`: a wait on snapshots for scripts, benchmarks and tests (never used by a UI handler).

The state changes themselves are pure `decide()` functions next to each manager's states.
"""

from __future__ import annotations

import errno as errno_names
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from webui.services.processes import ProcessHandle, ProcessSupervisor
from webui.services.store import Store

log = logging.getLogger(__name__)

R = TypeVar("R")
S = TypeVar("S")

ERROR_REPEAT_S = 60.0


def handle_of(pid: int | None, create_time: float | None, log_path: str) -> ProcessHandle | None:
    """The stored identity of a child, or None when no child was ever spawned for the row."""
    if pid is None or pid <= 0:
        return None
    return ProcessHandle(pid, create_time or 0.0, log_path)


@dataclass(frozen=True)
class ProcessFacts:
    """What could be read of one child at one moment."""

    alive: bool
    exit_code: int | None = None


def observe_process(supervisor: ProcessSupervisor, handle: ProcessHandle | None) -> ProcessFacts:
    """Alive or not; for a dead child of this console, its exit code (reading it reaps the zombie)."""
    if supervisor.is_alive(handle):
        return ProcessFacts(alive=True)
    return ProcessFacts(alive=False, exit_code=supervisor.exit_code(handle))


@dataclass(frozen=True)
class SpawnFailure:
    """Why a child could not be started: the OS's words, its errno name and the program that was tried."""

    reason: str
    errno: str
    program: str


def spawn_safely(
    supervisor: ProcessSupervisor,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> ProcessHandle | SpawnFailure:
    """Spawn, or say why not (missing interpreter, argument list too long, unwritable log…) without raising.

    The reason is also appended to the child's log, so the log panel tells the same story as the state.
    """
    program = argv[0] if argv else ""
    try:
        return supervisor.spawn(argv, log_path, env=env)
    except (OSError, ValueError) as exc:
        code = errno_names.errorcode.get(getattr(exc, "errno", None) or 0, "")
        text = getattr(exc, "strerror", None) or str(exc)
        failure = SpawnFailure(reason=str(text)[:500], errno=code, program=program[:500])
        try:
            with open(log_path, "a", encoding="utf-8") as out:
                out.write(f"could not start {failure.program}: {failure.reason} ({failure.errno or 'no errno'})\n")
        except OSError:
            pass
        return failure


class ErrorLimiter:
    """Logs a background failure with its traceback once per key and interval, and counts the repeats.

    A record that fails on every tick (10 per second) would otherwise write thousands of identical events.
    """

    def __init__(self, store: Store, source: str, interval_s: float = ERROR_REPEAT_S) -> None:
        self._store = store
        self._source = source
        self._interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def report(self, key: str, exc: BaseException) -> None:
        now = time.monotonic()
        last_at, repeats = self._last.get(key, (-self._interval_s, 0))
        if now - last_at < self._interval_s:
            self._last[key] = (last_at, repeats + 1)
            return
        self._last[key] = (now, 0)
        suffix = f" (and {repeats} more like it)" if repeats else ""
        log.error("%s: %s failed%s", self._source, key, suffix, exc_info=exc)
        try:
            self._store.add_event(key, f"{self._source}_error", f"{type(exc).__name__}: {exc}"[:300] + suffix)
        except Exception:  # the database itself may be what fails; the log line above already tells
            log.exception("%s: could not record the error event", self._source)


class Monitor(Generic[R]):
    """A daemon loop: every interval (or at once when woken) it checks each record in its own `try`, then
    runs the optional `after` step (e.g. starting queued jobs), also isolated."""

    def __init__(
        self,
        name: str,
        records: Callable[[], Iterable[R]],
        check: Callable[[R], None],
        key: Callable[[R], str],
        interval_s: float,
        store: Store,
        after: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._records = records
        self._check = check
        self._key = key
        self._after = after
        self._interval_s = interval_s
        self._errors = ErrorLimiter(store, name)
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def tick(self) -> None:
        """One pass over every record; a failure is reported against that record only."""
        try:
            records = list(self._records())
        except Exception as exc:
            self._errors.report("console", exc)
            return
        for record in records:
            try:
                self._check(record)
            except Exception as exc:
                self._errors.report(self._key(record), exc)
        if self._after is not None:
            try:
                self._after()
            except Exception as exc:
                self._errors.report("console", exc)

    def _run(self) -> None:
        while not self._closing.is_set():
            self.tick()
            self._wake.wait(self._interval_s)
            self._wake.clear()


def wait_for_state(get: Callable[[], S], states: Iterable[Any], timeout_s: float, poll_s: float = 0.02) -> S:
    """Poll get() until its snapshot's state is one of `states` or the time is up; return the last snapshot.

    For scripts, benchmarks and tests: UI handlers never wait on a process.
    """
    wanted = {str(getattr(s, "value", s)) for s in states}
    deadline = time.monotonic() + timeout_s
    while True:
        snap: Any = get()
        if str(getattr(snap.state, "value", snap.state)) in wanted or time.monotonic() > deadline:
            return snap
        time.sleep(poll_s)
