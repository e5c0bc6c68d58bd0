"""A worker's guard around its publish step: a cancel never lands between renaming the result and saying so."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


class TermGuard:
    """SIGTERM and SIGINT end the worker at once, as by default, except inside `publishing()`: there the signal
    is remembered and honoured right after, so the model folder and "done" are written together.

    NOTE: Python runs signal handlers in the main thread whichever thread the OS delivered the signal to, so the
    threads torch and tqdm start cannot let a signal through (a per-thread signal mask would)."""

    def __init__(self) -> None:
        self._publishing = False
        self._pending: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._publishing:
            self._pending = signum
            return
        os._exit(128 + signum)

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        self._publishing = True
        try:
            yield
        finally:
            self._publishing = False
            if self._pending is not None:
                os._exit(128 + self._pending)
