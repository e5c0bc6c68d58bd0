"""What every kind of job run by a child process shares (AWQ jobs, downloads): its row in the jobs table, its
handle, re-attaching after a console restart, settling, a cancel that signals and returns, and waiting.

Each kind adds its own checks, scheduling and reading of its worker's progress; the rows are told apart by
`kind`, so one manager never reads (or settles) another's jobs.
"""

from __future__ import annotations

import json
import time
from typing import Any, Generic, TypeVar

from webui.services.job_states import JobState, holds_device
from webui.services.lifecycle import handle_of, wait_for_state
from webui.services.processes import ProcessHandle, ProcessSupervisor
from webui.services.store import JobRecord, Store

S = TypeVar("S")


class ChildJobs(Generic[S]):
    """The shared mechanics of one kind of child-process job; subclasses give `get` and `_check`."""

    def __init__(self, store: Store, supervisor: ProcessSupervisor, kind: str, cancel_grace_s: float) -> None:
        self._store = store
        self._supervisor = supervisor
        self._kind = kind
        self._cancel_grace_s = cancel_grace_s

    def get(self, job_id: str) -> S | None:
        raise NotImplementedError

    def _check(self, record: JobRecord, watched: bool = True) -> None:
        raise NotImplementedError

    def wait_for(self, job_id: str, states: set[str], timeout_s: float) -> S:
        """Block until the job reaches one of `states` (for scripts, benchmarks and tests, never the UI)."""
        def current() -> S:
            snap = self.get(job_id)
            if snap is None:
                raise KeyError(job_id)
            return snap

        return wait_for_state(current, states, timeout_s, poll_s=0.05)

    def _handle(self, record: JobRecord) -> ProcessHandle | None:
        return handle_of(record.pid, record.create_time, record.log_path)

    def _running(self) -> list[JobRecord]:
        """This kind's jobs whose process holds their device (running, or being cancelled)."""
        return [r for r in self._store.list_jobs(self._kind) if holds_device(r.state)]

    def _reattach(self) -> None:
        """On console start: running jobs are watched again; one that died unwatched is settled (LOST)."""
        for record in self._running():
            if self._supervisor.is_alive(self._handle(record)):
                self._store.add_event(record.id, "reattached", f"pid {record.pid}")
                if record.state == JobState.CANCELLING:  # the last console did not see its cancel through
                    self._supervisor.request_stop(self._handle(record), grace_s=self._cancel_grace_s)
            else:
                self._check(record, watched=False)

    def _begin_cancel(self, record: JobRecord) -> None:
        """Signal a running job's tree and mark it CANCELLING; the monitor settles it when it is gone."""
        self._store.update_job(record.id, state=JobState.CANCELLING)
        self._store.add_event(record.id, "cancelling")
        self._supervisor.request_stop(self._handle(record), grace_s=self._cancel_grace_s)

    def _finish(self, record: JobRecord, state: JobState, error: str, exit_code: int | None = None,
                result: dict[str, Any] | None = None) -> None:
        changes: dict[str, Any] = {"state": state, "ended_at": time.time(), "error": error[-4000:],
                                   "exit_code": exit_code}
        if result is not None:
            changes["result_json"] = json.dumps(result)
        self._store.update_job(record.id, **changes)
        self._store.add_event(record.id, state.value.lower(), error[:300])
