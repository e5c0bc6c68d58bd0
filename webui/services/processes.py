"""Spawn long-running children in their own session with a log file; stop whole trees; re-attach safely.

A child is identified by (pid, create_time), never by pid alone, so a pid that the OS has handed to an
unrelated process after a console restart is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
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

    def find(self, handle: ProcessHandle) -> psutil.Process | None:
        """The live process behind handle, or None if it is gone or the pid now belongs to another process."""
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

    def is_alive(self, handle: ProcessHandle) -> bool:
        return self.find(handle) is not None

    def exit_code(self, handle: ProcessHandle) -> int | None:
        """Exit status when this console spawned the child and it has ended; None otherwise."""
        proc = self._popen.get(handle.pid)
        if proc is None:
            return None
        return proc.poll()

    def tree(self, handle: ProcessHandle) -> list[psutil.Process]:
        """The child and all its descendants (for memory attribution and complete stops)."""
        root = self.find(handle)
        if root is None:
            return []
        try:
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [root]

    def stop(self, handle: ProcessHandle, grace_s: float = 10.0) -> StopReport:
        """SIGTERM the child's group and every descendant, wait up to grace_s, then SIGKILL what is left."""
        started = time.monotonic()
        procs = self.tree(handle)
        pids = tuple(p.pid for p in procs)
        if not procs:
            self._reap(handle.pid)
            return StopReport(seconds=0.0, killed=False, pids=())
        self._signal_all(handle.pid, procs, signal.SIGTERM)
        alive = self._wait_gone(handle.pid, procs, grace_s)
        killed = False
        if alive:
            killed = True
            self._signal_all(handle.pid, alive, signal.SIGKILL)
            self._wait_gone(handle.pid, alive, 5.0)
        return StopReport(seconds=time.monotonic() - started, killed=killed, pids=pids)

    def _signal_all(self, leader: int, procs: list[psutil.Process], sig: signal.Signals) -> None:
        try:
            os.killpg(leader, sig)
        except (ProcessLookupError, PermissionError):
            pass
        # Descendants that left the group (setsid) still belong to the server: signal them one by one.
        for proc in procs:
            try:
                proc.send_signal(sig)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
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
