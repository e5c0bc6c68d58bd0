"""Login throttling for the console's own auth: Gradio's auth has no rate limit and no lockout, and this
console starts and stops processes, so guessing passwords must cost an attacker real time."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

_log = logging.getLogger(__name__)

# A password no configured user can have; unknown names are compared against it so timing is the same.
_DUMMY_PASSWORD = b"\x00" * 32


class LoginGuard:
    """Checks logins in constant time and locks a username after repeated failures, plus every login when
    failures pile up across names (password spraying). App-scoped: one instance per launched console."""

    def __init__(
        self,
        users: tuple[tuple[str, str], ...],
        max_failures: int = 5,
        window_s: float = 600.0,
        lockout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        global_max_failures: int = 30,
        global_window_s: float = 60.0,
        global_lockout_s: float = 60.0,
    ) -> None:
        self._users = {user: password.encode("utf-8") for user, password in users}
        self._max_failures = max_failures
        self._window_s = window_s
        self._lockout_s = lockout_s
        self._clock = clock
        self._global_max = global_max_failures
        self._global_window_s = global_window_s
        self._global_lockout_s = global_lockout_s
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._global_failures: deque[float] = deque()
        self._global_locked_until = float("-inf")

    def check(self, username: str, password: str) -> bool:
        """Gradio's auth callable: True only for a right password on a login that is not locked."""
        # Compare first, whatever the lock state, so a locked name answers as fast as any other.
        expected = self._users.get(username)
        matches = hmac.compare_digest(password.encode("utf-8"), expected if expected is not None else _DUMMY_PASSWORD)
        right = matches and expected is not None
        with self._lock:
            now = self._clock()
            if now < self._global_locked_until or now < self._locked_until.get(username, float("-inf")):
                return False  # a lockout refuses even the right password, or it would confirm a guess
            if right:
                self._failures.pop(username, None)
                return True
            self._record_failure(username, now)
            return False

    def _record_failure(self, username: str, now: float) -> None:
        """Counts one failure (lock held) and starts the per-user or global lockout when a ceiling is hit."""
        failures = self._failures.setdefault(username, deque())
        _prune(failures, now - self._window_s)
        failures.append(now)
        if len(failures) >= self._max_failures:
            self._locked_until[username] = now + self._lockout_s
            del self._failures[username]
            _log.warning("login %r locked for %.0f s after %d failed attempts within %.0f s",
                         username, self._lockout_s, self._max_failures, self._window_s)
        _prune(self._global_failures, now - self._global_window_s)
        self._global_failures.append(now)
        if len(self._global_failures) >= self._global_max:
            self._global_locked_until = now + self._global_lockout_s
            self._global_failures.clear()
            _log.warning("all logins locked for %.0f s after %d failed attempts within %.0f s (last user %r)",
                         self._global_lockout_s, self._global_max, self._global_window_s, username)
        # Stale entries are dropped so that guessed names do not grow the dicts forever.
        for name in [n for n, until in self._locked_until.items() if until <= now]:
            del self._locked_until[name]
        for name in [n for n, times in self._failures.items() if times[-1] <= now - self._window_s]:
            del self._failures[name]


def _prune(times: deque[float], before: float) -> None:
    """Drops the failures older than the window's start."""
    while times and times[0] <= before:
        times.popleft()
