"""The process supervisor against real child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from webui.services.processes import ProcessHandle, ProcessSupervisor

SPAWNS_GRANDCHILD = (
    "import subprocess, sys, time\n"
    "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print('grandchild', w.pid, flush=True)\n"
    "time.sleep(600)\n"
)
IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def wait_for_line(log: Path, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                if needle in line:
                    return line
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} never appeared in {log}")


def test_spawn_writes_log_and_stop_kills_grandchild(tmp_path: Path) -> None:
    sup = ProcessSupervisor()
    log = tmp_path / "logs" / "child.log"
    handle = sup.spawn([sys.executable, "-c", SPAWNS_GRANDCHILD], log)
    grandchild_pid = int(wait_for_line(log, "grandchild").split()[1])
    assert psutil.pid_exists(grandchild_pid)
    assert {p.pid for p in sup.tree(handle)} >= {handle.pid, grandchild_pid}
    assert os.getpgid(handle.pid) == handle.pid  # leader of its own process group

    report = sup.stop(handle, grace_s=5)

    assert not report.killed
    assert report.seconds < 5
    assert not sup.is_alive(handle)
    gc = psutil.Process(grandchild_pid) if psutil.pid_exists(grandchild_pid) else None
    assert gc is None or gc.status() == psutil.STATUS_ZOMBIE
    assert sup.exit_code(handle) == -15


def test_child_that_ignores_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    sup = ProcessSupervisor()
    log = tmp_path / "stubborn.log"
    handle = sup.spawn([sys.executable, "-c", IGNORES_SIGTERM], log)
    wait_for_line(log, "ready")
    report = sup.stop(handle, grace_s=0.5)
    assert report.killed
    assert 0.5 <= report.seconds < 5
    assert not sup.is_alive(handle)
    assert sup.exit_code(handle) == -9


def test_argv_is_never_a_shell_line(tmp_path: Path) -> None:
    sup = ProcessSupervisor()
    weird = "a b; touch pwned && echo $HOME 'q\" `x`"
    log = tmp_path / "argv.log"
    handle = sup.spawn([sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", weird], log)
    deadline = time.monotonic() + 10
    while sup.is_alive(handle) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert json.loads(log.read_text().strip()) == [weird]
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError):
        sup.spawn([], log)


def test_reattach_from_a_new_supervisor_after_console_restart(tmp_path: Path) -> None:
    """A process started by a console that has since exited is found again by (pid, create_time) and stopped."""
    log = tmp_path / "orphan.log"
    launcher = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from webui.services.processes import ProcessSupervisor\n"
        f"h = ProcessSupervisor().spawn([sys.executable, '-c', {SPAWNS_GRANDCHILD!r}], Path({str(log)!r}))\n"
        "print(json.dumps([h.pid, h.create_time, h.log_path]))\n"
    )
    out = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, check=True, timeout=30)
    pid, create_time, log_path = json.loads(out.stdout)
    handle = ProcessHandle(pid, create_time, log_path)
    wait_for_line(log, "grandchild")

    sup = ProcessSupervisor()  # the "new console": it never spawned this process
    assert sup.is_alive(handle)
    assert sup.exit_code(handle) is None  # not ours: unknown, not invented
    report = sup.stop(handle, grace_s=5)
    assert len(report.pids) == 2
    assert not sup.is_alive(handle)


def test_pid_reuse_is_refused(tmp_path: Path) -> None:
    """A handle whose start time does not match is treated as gone, and the process it names is left alone."""
    sup = ProcessSupervisor()
    log = tmp_path / "victim.log"
    victim = sup.spawn([sys.executable, "-c", IGNORES_SIGTERM.replace("SIG_IGN", "SIG_DFL")], log)
    wait_for_line(log, "ready")
    stale = ProcessHandle(victim.pid, victim.create_time - 1000.0, str(log))

    assert sup.find(stale) is None
    report = sup.stop(stale, grace_s=0.5)
    assert report.pids == ()
    assert sup.is_alive(victim), "a stale handle must never signal the process that now has its pid"
    sup.stop(victim, grace_s=5)
