"""Launch options: safe defaults, and refusals with a clear message and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from webui.cli import OptionError, build_parser, settings_from_args


def run_console(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.run([sys.executable, "-m", "webui", "--state-dir", str(tmp_path / "state"), *args],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--host", "0.0.0.0"], "--auth"),
        (["--host", "192.168.1.5"], "--auth"),
        (["--demo-port", "99999"], "--demo-port"),
        (["--auth", "nopassword"], "USER:PASS"),
        (["--port", "0"], "--port"),
        (["--model-root", "/no/such/folder"], "--model-root"),
        (["--auth-file", "/no/such/file"], "--auth-file"),
    ],
)
def test_unsafe_or_bad_options_exit_non_zero(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_console(*args, tmp_path=tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr
    assert not (tmp_path / "state" / "console.sqlite3").exists()  # refused before anything was created


def test_defaults_are_loopback_and_per_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("LMDEPLOY_CONSOLE_STATE_DIR", raising=False)
    settings = settings_from_args(build_parser().parse_args([]))
    assert settings.host == "127.0.0.1" and settings.port == 7860
    assert settings.state_dir == (tmp_path / "xdg" / "lmdeploy-console").resolve()
    assert settings.model_roots == (settings.state_dir,)
    assert settings.exposure_problem() is None
    # --share is the guest app's: the console stays on loopback and needs no login for it
    shared = settings_from_args(build_parser().parse_args(["--share"]))
    assert shared.share and shared.host == "127.0.0.1" and shared.exposure_problem() is None


def test_open_host_is_accepted_with_auth(tmp_path: Path) -> None:
    auth_file = tmp_path / "users"
    auth_file.write_text("# team\nalice:s3cret\nbob:pa:ss\n")
    args = build_parser().parse_args(["--host", "0.0.0.0", "--share", "--auth-file", str(auth_file),
                                      "--model-root", str(tmp_path)])
    settings = settings_from_args(args)
    assert settings.auth == (("alice", "s3cret"), ("bob", "pa:ss"))
    assert settings.model_roots == (tmp_path.resolve(),)


def test_an_ipv6_demo_host_given_as_a_url_writes_it_is_bound_as_an_address(tmp_path: Path) -> None:
    settings = settings_from_args(build_parser().parse_args(["--demo-host", "[::1]", "--state-dir", str(tmp_path)]))
    assert settings.demo_host == "::1" and settings.guest_url == "http://[::1]:7861"


def test_option_error_messages_name_the_option() -> None:
    with pytest.raises(OptionError, match="--host 10.0.0.1"):
        settings_from_args(build_parser().parse_args(["--host", "10.0.0.1"]))


def test_help_answers_without_building_anything(tmp_path: Path) -> None:
    result = run_console("--help", tmp_path=tmp_path)
    assert result.returncode == 0
    for option in ("--host", "--port", "--auth", "--auth-file", "--share", "--state-dir", "--model-root",
                   "--lmdeploy-python", "--keep-servers"):
        assert option in result.stdout


def wait_for_page(proc: subprocess.Popen, port: int) -> None:
    """Until the launched console serves its page (killed, and the test failed, after 60 s)."""
    import http.client
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the console never served its page")


def test_sigterm_twice_still_shuts_down_cleanly(tmp_path: Path) -> None:
    import signal
    import time

    from webui.services.serve_spec import suggest_port

    port = suggest_port(19860)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "webui", "--state-dir", str(tmp_path / "state"), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_page(proc, port)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)  # an impatient second stop (a supervisor, a double Ctrl-C)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_background_failures_reach_the_console_log_with_their_traceback(tmp_path: Path) -> None:
    """A row the monitor cannot handle (a state written by a newer version) is logged once, traceback included,
    in <state dir>/console.log; the console keeps serving."""
    import http.client
    import signal
    import time

    from webui.services.serve_spec import suggest_port
    from webui.services.store import ServerRecord, Store

    state = tmp_path / "state"
    store = Store(state / "console.sqlite3")
    store.insert_server(ServerRecord(id="future01", owned=True, spec_json="{}", state="HIBERNATING",
                                     base_url="http://127.0.0.1:9", created_at=time.time()))
    store.close()
    port = suggest_port(19960)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "webui", "--state-dir", str(state), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = state / "console.log"
    try:
        wait_for_page(proc, port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Traceback" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.2)
        text = log.read_text()
        assert "server_monitor: future01 failed" in text and "Traceback" in text
        assert "'HIBERNATING' is not a valid ServerState" in text
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        time.sleep(1.0)
        assert log.read_text().count("Traceback") == 1  # once a minute, not once a tick
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
