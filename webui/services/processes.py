"""Spawn long-running children in their own session with a log file; stop whole trees; re-attach safely.

A child is identified by (pid, create_time), never by pid alone, so a pid that the OS has handed to an
unrelated process after a console restart is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

CREATE_TIME_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class ProcessHandle:
    """What is stored to find a child again: its pid, its start time and its log file."""

    pid: int
    create_time: float
    log_path: str


@dataclass(frozen=True)
class StopReport:
    """How a stop went: which signal ended it and how long it took."""

    seconds: float
    killed: bool
    pids: tuple[int, ...]


class StopTicket:
    """A stop under way: SIGTERM has been sent; a daemon thread escalates to SIGKILL after the grace time.

    The caller returns at once (no handler waits on a process); whoever needs the outcome calls wait().
    """

    def __init__(self, pids: tuple[int, ...]) -> None:
        self.pids = pids
        self._done = threading.Event()
        self._report: StopReport | None = None

    def _finish(self, report: StopReport) -> None:
        self._report = report
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def report(self) -> StopReport | None:
        return self._report

    def wait(self, timeout_s: float | None = None) -> StopReport | None:
        self._done.wait(timeout_s)
        return self._report


class ProcessSupervisor:
    """Owns the mechanics of child processes; app-scoped, stateless apart from the Popen objects it made."""

    def __init__(self) -> None:
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ProcessHandle:
        """Start argv in a new session (its own process group) with stdout and stderr in log_path."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a non-empty list of strings")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(log_path, "ab", buffering=0) as log:
            # NOTE: start_new_session so the server's engine workers share one group we can signal at once.
            proc = subprocess.Popen(  # noqa: S603 - argv list from a typed spec, never a shell
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=str(cwd) if cwd else None,
                start_new_session=True,
                close_fds=True,
            )
        self._popen[proc.pid] = proc
        create_time = psutil.Process(proc.pid).create_time()
        return ProcessHandle(pid=proc.pid, create_time=create_time, log_path=str(log_path))

    def find(self, handle: ProcessHandle | None) -> psutil.Process | None:
        """The live process behind handle, or None if it is gone or the pid now belongs to another process."""
        if handle is None or handle.pid <= 0:
            return None
        try:
            proc = psutil.Process(handle.pid)
            if abs(proc.create_time() - handle.create_time) > CREATE_TIME_TOLERANCE_S:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                self._reap(handle.pid)
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._reap(handle.pid)
            return None

    def is_alive(self, handle: ProcessHandle | None) -> bool:
        return self.find(handle) is not None

    def exit_code(self, handle: ProcessHandle | None) -> int | None:
        """Exit status when this console spawned the child and it has ended (reaping it); None otherwise."""
        proc = self._popen.get(handle.pid) if handle is not None else None
        if proc is None:
            return None
        code = proc.poll()
        if code is None and self.find(handle) is None:
            # NOTE: poll() answers None while another thread (a stop's escalation) holds Popen's waitpid lock;
            # the child has ended, so wait() returns as soon as that thread lets go.
            try:
                code = proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                code = None
        return code

    def forget(self, handle: ProcessHandle | None) -> None:
        """Drop the Popen of a child whose end has been recorded (reaped first, so no zombie is left)."""
        if handle is not None and (proc := self._popen.get(handle.pid)) is not None and proc.poll() is not None:
            self._popen.pop(handle.pid, None)

    def tree(self, handle: ProcessHandle | None) -> list[psutil.Process]:
        """The child and all its descendants (for memory attribution and complete stops)."""
        root = self.find(handle)
        if root is None:
            return []
        try:
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [root]

    def stop(self, handle: ProcessHandle | None, grace_s: float = 10.0) -> StopReport:
        """SIGTERM the child's group and every descendant, wait up to grace_s, then SIGKILL what is left."""
        report = self.request_stop(handle, grace_s).wait()
        assert report is not None  # wait() without a timeout returns the report
        return report

    def request_stop(self, handle: ProcessHandle | None, grace_s: float = 10.0,
                     leader_first_s: float = 0.0) -> StopTicket:
        """SIGTERM the whole tree now and return; a daemon thread SIGKILLs what is left after grace_s.

        leader_first_s > 0: SIGTERM the leader alone first and give it that long to shut its own children down
        (a multi-GPU engine's leader tells its rank workers to stop and waits for them: signalled at the same
        time, the workers die first and the leader waits for answers that never come, until SIGKILL); then the
        rest of the tree gets SIGTERM, and SIGKILL at grace_s as always."""
        started = time.monotonic()
        procs = self.tree(handle)
        ticket = StopTicket(tuple(p.pid for p in procs))
        if handle is None or not procs:
            if handle is not None:
                self._reap(handle.pid)
            ticket._finish(StopReport(seconds=0.0, killed=False, pids=()))
            return ticket
        first = min(max(leader_first_s, 0.0), grace_s)
        if first:
            self._signal_all(handle.pid, procs[:1], signal.SIGTERM, group=False)
        else:
            self._signal_all(handle.pid, procs, signal.SIGTERM)

        def escalate() -> None:
            if first:
                left = self._wait_gone(handle.pid, procs, first)
                if left:
                    self._signal_all(handle.pid, left, signal.SIGTERM)
            alive = self._wait_gone(handle.pid, procs, grace_s - (time.monotonic() - started))
            if alive:
                self._signal_all(handle.pid, alive, signal.SIGKILL)
                self._wait_gone(handle.pid, alive, 5.0)
            ticket._finish(StopReport(time.monotonic() - started, bool(alive), ticket.pids))

        threading.Thread(target=escalate, name=f"stop-{handle.pid}", daemon=True).start()
        return ticket

    def _signal_all(self, leader: int, procs: list[psutil.Process], sig: signal.Signals, group: bool = True) -> None:
        signalled_group = False
        if group:
            try:
                os.killpg(leader, sig)
                signalled_group = True
            except (ProcessLookupError, PermissionError):
                pass
        # Descendants that left the group (setsid) still belong to the server: signal them one by one. Members of
        # the group are not signalled twice: a second SIGTERM means "exit now" to uvicorn and to many engines.
        for proc in procs:
            try:
                if signalled_group and os.getpgid(proc.pid) == leader:
                    continue
                proc.send_signal(sig)
            except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
                pass

    def _wait_gone(self, leader: int, procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
        """Wait until every process has exited; a zombie counts as gone (its parent may be a dead console)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._reap(leader)
            alive = [p for p in procs if _running(p)]
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.02)

    def _reap(self, pid: int) -> None:
        proc = self._popen.get(pid)
        if proc is not None:
            proc.poll()


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
