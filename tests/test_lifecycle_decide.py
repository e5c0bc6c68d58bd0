"""The state rules as tables: every state × every observation, for owned servers, attached servers and jobs.

These are pure functions, so the whole table runs in milliseconds; the real-process tests elsewhere only
prove the mechanics (spawning, signalling, reading logs) that feed them.
"""

from __future__ import annotations

import pytest

from webui.services.job_states import JobFacts, JobState, JobTransition, decide_job
from webui.services.server_states import ServerFacts, ServerState, ServerTransition, decide_server

S = ServerState
DEAD = ServerFacts(alive=False)
DEAD_UNWATCHED = ServerFacts(alive=False, watched=False)
HEALTHY = ServerFacts(alive=True, health=200)
INITIALIZING = ServerFacts(alive=True, health=503)
SILENT = ServerFacts(alive=True, health=None)
SILENT_UNWATCHED = ServerFacts(alive=True, health=None, watched=False)
HEALTHY_UNWATCHED = ServerFacts(alive=True, health=200, watched=False)

OWNED = {
    # columns: dead, dead unwatched, healthy, initializing, silent, silent unwatched, healthy unwatched
    S.STARTING:    ((S.FAILED, "failed"), (S.LOST, "lost"), (S.READY, "ready"), None, None, None, (S.READY, "ready")),
    S.READY:       ((S.FAILED, "failed"), (S.LOST, "lost"), None, None, None, None, None),
    S.SLEEPING:    ((S.FAILED, "failed"), (S.LOST, "lost"), None, None, None, None, None),
    S.UNREACHABLE: ((S.FAILED, "failed"), (S.LOST, "lost"), (S.READY, "ready"), None, None,
                    (S.STARTING, "reattached"), (S.READY, "ready")),
    S.STOPPING:    ((S.STOPPED, "stopped"), (S.STOPPED, "stopped"), None, None, None, None, None),
    S.STOPPED:     (None,) * 7,
    S.FAILED:      (None,) * 7,
    S.LOST:        (None,) * 7,
}
OBSERVATIONS = (DEAD, DEAD_UNWATCHED, HEALTHY, INITIALIZING, SILENT, SILENT_UNWATCHED, HEALTHY_UNWATCHED)


def test_the_owned_table_covers_every_state() -> None:
    assert set(OWNED) == set(ServerState)


@pytest.mark.parametrize("state", list(OWNED))
@pytest.mark.parametrize("column", range(len(OBSERVATIONS)))
def test_owned_server(state: ServerState, column: int) -> None:
    expected = OWNED[state][column]
    got = decide_server(state, owned=True, facts=OBSERVATIONS[column])
    assert got == (ServerTransition(*expected) if expected else None)


ATTACHED = {
    # state:        healthy,                    initializing,                    nothing answers
    S.READY:       (None, (S.UNREACHABLE, "unreachable"), (S.UNREACHABLE, "unreachable")),
    S.SLEEPING:    (None, (S.UNREACHABLE, "unreachable"), (S.UNREACHABLE, "unreachable")),
    S.UNREACHABLE: ((S.READY, "reachable"), None, None),
    S.STOPPING:    ((S.STOPPED, "detached"),) * 3,
    S.STARTING:    ((S.READY, "reachable"), (S.UNREACHABLE, "unreachable"), (S.UNREACHABLE, "unreachable")),
    S.STOPPED:     (None,) * 3,
    S.FAILED:      (None,) * 3,
    S.LOST:        (None,) * 3,
}


@pytest.mark.parametrize("state", list(ATTACHED))
@pytest.mark.parametrize("column", range(3))
def test_attached_server_follows_health_only(state: ServerState, column: int) -> None:
    """An attached server has no process here: `alive` is always true and only /health matters."""
    facts = (HEALTHY, INITIALIZING, SILENT)[column]
    expected = ATTACHED[state][column]
    assert decide_server(state, owned=False, facts=facts) == (ServerTransition(*expected) if expected else None)


J = JobState
JOB_OBSERVATIONS = {
    "alive": JobFacts(alive=True),
    "alive, done already": JobFacts(alive=True, finished=True),
    "finished": JobFacts(alive=False, finished=True),
    "error": JobFacts(alive=False, error="RuntimeError: boom"),
    "exited silently": JobFacts(alive=False),
    "died unwatched": JobFacts(alive=False, watched=False),
    "error unwatched": JobFacts(alive=False, error="killed", watched=False),
    "finished unwatched": JobFacts(alive=False, finished=True, watched=False),
}
KEEP = (J.SUCCEEDED, False)
DROP_FAILED = (J.FAILED, True)
JOBS = {
    J.RUNNING: {"alive": None, "alive, done already": None, "finished": KEEP, "error": DROP_FAILED,
                "exited silently": DROP_FAILED, "died unwatched": (J.LOST, True), "error unwatched": DROP_FAILED,
                "finished unwatched": KEEP},
    J.CANCELLING: {"alive": None, "alive, done already": None, "finished": KEEP, "error": (J.CANCELLED, True),
                   "exited silently": (J.CANCELLED, True), "died unwatched": (J.CANCELLED, True),
                   "error unwatched": (J.CANCELLED, True), "finished unwatched": KEEP},
    **{state: dict.fromkeys(JOB_OBSERVATIONS) for state in (J.QUEUED, J.SUCCEEDED, J.FAILED, J.CANCELLED, J.LOST)},
}


def test_the_job_table_covers_every_state() -> None:
    assert set(JOBS) == set(JobState)


@pytest.mark.parametrize("state", list(JOBS))
@pytest.mark.parametrize("observation", list(JOB_OBSERVATIONS))
def test_job(state: JobState, observation: str) -> None:
    expected = JOBS[state][observation]
    got = decide_job(state, JOB_OBSERVATIONS[observation])
    assert got == (JobTransition(*expected) if expected else None)


@pytest.mark.parametrize("state", list(JOBS))
@pytest.mark.parametrize("observation", list(JOB_OBSERVATIONS))
def test_a_job_never_ends_with_both_an_output_and_a_failure(state: JobState, observation: str) -> None:
    got = decide_job(state, JOB_OBSERVATIONS[observation])
    if got is not None:
        assert (got.to == JobState.SUCCEEDED) == (not got.remove_output)
