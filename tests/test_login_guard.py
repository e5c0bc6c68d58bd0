"""Login throttling: a username locks after repeated failures, every login locks under password spraying, and
the launched console answers its /login through the guard and warns on its page when it is exposed."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from webui.services.container import Services
from webui.services.login_guard import LoginGuard
from webui.settings import Settings

USERS = (("admin", "secret"), ("viewer", "other"))


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(guard: LoginGuard, username: str, times: int) -> None:
    for _ in range(times):
        assert not guard.check(username, "wrong")


def test_right_and_wrong_passwords() -> None:
    guard = LoginGuard(USERS, clock=FakeClock())
    assert guard.check("admin", "secret")
    assert guard.check("viewer", "other")
    assert not guard.check("admin", "other")  # another user's password
    assert not guard.check("admin", "")
    assert not guard.check("Admin", "secret")


def test_unknown_users_are_refused_and_counted() -> None:
    clock = FakeClock()
    guard = LoginGuard(USERS, clock=clock)
    assert not guard.check("nobody", "secret")
    assert not guard.check("nobody", "\x00" * 32)  # not even the internal stand-in password
    fail(guard, "nobody", 3)
    assert guard.check("admin", "secret")  # other names are not affected


def test_lockout_after_five_failures_refuses_the_right_password(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    guard = LoginGuard(USERS, clock=clock)
    with caplog.at_level(logging.WARNING, logger="webui.services.login_guard"):
        fail(guard, "admin", 4)
        assert guard.check("admin", "secret")  # four failures are not enough; success resets the count
        fail(guard, "admin", 5)
        assert not guard.check("admin", "secret")
        fail(guard, "admin", 10)  # attempts while locked neither extend nor re-log the lockout
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "admin" in warnings[0].getMessage() and "wrong" not in warnings[0].getMessage()
    assert guard.check("viewer", "other")  # the lockout is per user
    clock.now += 299
    assert not guard.check("admin", "secret")
    clock.now += 1
    assert guard.check("admin", "secret")


def test_failures_outside_the_window_do_not_count() -> None:
    clock = FakeClock()
    guard = LoginGuard(USERS, clock=clock)
    fail(guard, "admin", 4)
    clock.now += 601
    fail(guard, "admin", 4)  # 8 failures, never 5 within 10 minutes
    assert guard.check("admin", "secret")


def test_failures_within_the_window_add_up() -> None:
    clock = FakeClock()
    guard = LoginGuard(USERS, clock=clock)
    for _ in range(5):
        fail(guard, "admin", 1)
        clock.now += 100
    assert not guard.check("admin", "secret")


def test_global_ceiling_locks_every_login(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    guard = LoginGuard(USERS, clock=clock)
    with caplog.at_level(logging.WARNING, logger="webui.services.login_guard"):
        for i in range(30):  # spraying: one guess per name, no name reaches its own limit
            assert not guard.check(f"user{i}", "password1")
    assert not guard.check("admin", "secret")
    assert not guard.check("viewer", "other")
    assert sum("all logins" in r.getMessage() for r in caplog.records) == 1
    clock.now += 60
    assert guard.check("admin", "secret")


def test_global_ceiling_counts_only_the_last_minute() -> None:
    clock = FakeClock()
    guard = LoginGuard(USERS, clock=clock)
    for i in range(29):
        assert not guard.check(f"user{i}", "x")
    clock.now += 61
    for i in range(29):
        assert not guard.check(f"other{i}", "x")
    assert guard.check("admin", "secret")


def test_launched_console_locks_logins_and_shows_the_exposure_banner(tmp_path: Path) -> None:
    from webui.app import build_app  # gradio is imported by the tests that launch, not by every test

    models = tmp_path / "models"
    models.mkdir()
    settings = Settings(state_dir=tmp_path / "state", host="0.0.0.0", auth=USERS, model_roots=(models,),
                        hf_cache_dir=tmp_path / "hf")
    services = Services.build(settings)
    try:
        demo, launch_kwargs = build_app(services)
        assert any(getattr(block, "elem_id", None) == "app-exposed" for block in demo.blocks.values())
        demo.queue()
        _, local_url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True,
                                      auth=LoginGuard(settings.auth).check, **launch_kwargs)
        try:
            with httpx.Client(base_url=local_url.rstrip("/"), timeout=30) as client:
                for _ in range(5):
                    answer = client.post("/login", data={"username": "admin", "password": "wrong"})
                    assert answer.status_code in (400, 401)
                locked = client.post("/login", data={"username": "admin", "password": "secret"})
                assert locked.status_code in (400, 401)
                assert client.get("/config").status_code in (401, 403)  # no session was opened
                ok = client.post("/login", data={"username": "viewer", "password": "other"})
                assert ok.status_code == 200
                config = client.get("/config")
                assert config.status_code == 200
                text = config.text
            assert "app-exposed" in text and "app.exposed" in text
            translations = config.json()["i18n_translations"]
            assert "reachable from other machines" in translations["en"]["app.exposed"]
        finally:
            demo.close()
    finally:
        services.close()


def test_loopback_console_has_no_exposure_banner(tmp_path: Path) -> None:
    from webui.app import build_app

    settings = Settings(state_dir=tmp_path / "state", model_roots=(tmp_path,), hf_cache_dir=tmp_path / "hf")
    services = Services.build(settings)
    try:
        demo, _ = build_app(services)
        assert not any(getattr(block, "elem_id", None) == "app-exposed" for block in demo.blocks.values())
    finally:
        services.close()
