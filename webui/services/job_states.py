"""A quantization job's states and the pure rule that settles a job whose process has ended.

`decide_job` has no side effects, so every state × observation is tested as a table
(tests/test_lifecycle_decide.py); the JobManager gathers the facts and applies the result.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobState(str, enum.Enum):
    """QUEUED → RUNNING → SUCCEEDED | FAILED; RUNNING → CANCELLING → CANCELLED (or SUCCEEDED when the job
    finished before the cancel reached it); LOST if it died while no console watched."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"


LIVE_JOB_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING})
_LIVE_VALUES = frozenset(s.value for s in LIVE_JOB_STATES)
_BUSY_VALUES = frozenset({JobState.RUNNING.value, JobState.CANCELLING.value})


def is_live_job(state: str) -> bool:
    """Whether a stored state is queued or running; a state this version does not know is not."""
    return state in _LIVE_VALUES


def holds_device(state: str) -> bool:
    """Whether a job in this stored state has a process that holds its device (running or being cancelled)."""
    return state in _BUSY_VALUES


@dataclass(frozen=True)
class JobFacts:
    """One observation of a job that has a process.

    alive: the worker is running; finished: it reported `done` and its output folder holds a model;
    error: the last error it reported ("" if none); watched: False on the first look after a console restart.
    """

    alive: bool
    finished: bool = False
    error: str = ""
    watched: bool = True


@dataclass(frozen=True)
class JobTransition:
    """The state to move to, and whether the job's output (finished or half-written) must be removed."""

    to: JobState
    remove_output: bool


def decide_job(state: JobState, facts: JobFacts) -> JobTransition | None:
    """The next state of a RUNNING or CANCELLING job, or None to stay.

    A job ends SUCCEEDED with its output, or CANCELLED/FAILED/LOST with none of it: never both.
    """
    if state not in (JobState.RUNNING, JobState.CANCELLING) or facts.alive:
        return None
    if facts.finished:
        return JobTransition(JobState.SUCCEEDED, remove_output=False)
    if state == JobState.CANCELLING:
        return JobTransition(JobState.CANCELLED, remove_output=True)
    if facts.error or facts.watched:
        return JobTransition(JobState.FAILED, remove_output=True)
    return JobTransition(JobState.LOST, remove_output=True)
