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


# A leader that, on SIGTERM, tells its worker to stop and waits for its answer (as a multi-GPU engine does with its
# rank workers); the worker, signalled directly, dies without answering and the leader then waits forever.
LEADER_STOPS_ITS_WORKER = (
    "import signal, subprocess, sys, time\n"
    "worker = subprocess.Popen([sys.executable, '-c', "
    "'import sys; sys.stdin.readline(); print(\"worker stopped by its leader\", flush=True)'], "
    "stdin=subprocess.PIPE, text=True)\n"
    "def stop(*_):\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late second SIGTERM must not re-enter the write below\n"
    "    try:\n"
    "        worker.stdin.write('stop\\n'); worker.stdin.flush()\n"
    "    except OSError:\n"
    "        pass  # already dead\n"
    "    while worker.poll() != 0:  # a worker killed from outside never answers: wait (until SIGKILL)\n"
    "        time.sleep(0.01)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('ready', worker.pid, flush=True)\n"
    "time.sleep(600)\n"
)


def test_leader_first_lets_an_engine_stop_its_workers_itself(tmp_path: Path) -> None:
    sup = ProcessSupervisor()
    both = []
    for leader_first in (0.0, 2.0):
        log = tmp_path / f"leader-{leader_first}.log"
        handle = sup.spawn([sys.executable, "-c", LEADER_STOPS_ITS_WORKER], log)
        wait_for_line(log, "ready")
        report = sup.request_stop(handle, grace_s=4.0, leader_first_s=leader_first).wait(10)
        assert report is not None and not sup.is_alive(handle)
        both.append((report, "worker stopped by its leader" in log.read_text()))
    (together, clean_together), (first, clean_first) = both
    # signalled together, the worker dies unheard and the leader waits for it until SIGKILL at the grace time
    assert together.killed and together.seconds >= 3.9 and not clean_together
    # the leader alone first: it stops its worker and exits well inside the grace time, nothing killed
    assert not first.killed and first.seconds < 3.9 and clean_first, first  # stopped by its leader, not the grace


def test_leader_first_still_ends_a_leader_that_ignores_sigterm(tmp_path: Path) -> None:
    sup = ProcessSupervisor()
    log = tmp_path / "deaf.log"
    handle = sup.spawn([sys.executable, "-c", IGNORES_SIGTERM], log)
    wait_for_line(log, "ready")
    report = sup.request_stop(handle, grace_s=1.5, leader_first_s=0.5).wait(10)
    assert report is not None and report.killed and 1.4 <= report.seconds < 4.0
    assert not sup.is_alive(handle)


def test_a_stop_signals_the_group_once_and_only_a_setsid_descendant_one_by_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn reads a second SIGTERM as "exit now": killpg reaches the group, and only a descendant that left it
    (setsid) is signalled by itself."""
    sup = ProcessSupervisor()
    log = tmp_path / "group.log"
    script = ("import subprocess, sys, time\n"
              "inside = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
              "outside = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
              "start_new_session=True)\n"
              "print('ready', inside.pid, outside.pid, flush=True)\n"
              "time.sleep(600)\n")
    handle = sup.spawn([sys.executable, "-c", script], log)
    _, inside, outside = wait_for_line(log, "ready").split()[:3]
    one_by_one: list[int] = []
    send = psutil.Process.send_signal

    def recorded(proc: psutil.Process, sig: int) -> None:
        one_by_one.append(proc.pid)
        send(proc, sig)

    monkeypatch.setattr(psutil.Process, "send_signal", recorded)
    report = sup.request_stop(handle, grace_s=4.0).wait(10)
    assert report is not None and not report.killed and len(report.pids) == 3
    assert one_by_one == [int(outside)], (one_by_one, inside, outside)
