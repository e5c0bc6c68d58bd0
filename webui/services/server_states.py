"""A server's states and the pure rule that moves it between them, from what was observed.

`decide_server` has no side effects, so every state × observation is tested as a table
(tests/test_lifecycle_decide.py); the ServerManager only gathers the facts and applies the result.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ServerState(str, enum.Enum):
    """Where a server is in its life; ATTACHED servers (not started here) are only READY or UNREACHABLE."""

    STARTING = "STARTING"
    READY = "READY"
    SLEEPING = "SLEEPING"  # READY with its KV cache freed (LMDeploy's POST /sleep) until POST /wakeup
    UNREACHABLE = "UNREACHABLE"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    LOST = "LOST"


LIVE_STATES = frozenset({ServerState.STARTING, ServerState.READY, ServerState.SLEEPING, ServerState.UNREACHABLE,
                         ServerState.STOPPING})
AWAKE_OR_ASLEEP = frozenset({ServerState.READY, ServerState.SLEEPING})  # a sleeping engine's /health is 200 too
_LIVE_VALUES = frozenset(s.value for s in LIVE_STATES)


def is_live(state: str) -> bool:
    """Whether a stored state is a live one; a state this version does not know is not."""
    return state in _LIVE_VALUES


@dataclass(frozen=True)
class ServerFacts:
    """One observation of a server.

    alive: its process is running (always True for an attached server, which has no process here);
    health: the status of GET /health, None when nothing answered or it was not asked;
    watched: False on the first look after a console restart (a death nobody saw is LOST, not FAILED).
    """

    alive: bool
    health: int | None = None
    watched: bool = True


@dataclass(frozen=True)
class ServerTransition:
    """The state to move to and the event kind to record for it."""

    to: ServerState
    event: str


def decide_server(state: ServerState, owned: bool, facts: ServerFacts) -> ServerTransition | None:
    """The next state, or None to stay. Pure: the caller reads the facts and applies the result."""
    if state not in LIVE_STATES:
        return None
    if not owned:
        if state == ServerState.STOPPING:
            return ServerTransition(ServerState.STOPPED, "detached")
        if facts.health == 200:
            return None if state in AWAKE_OR_ASLEEP else ServerTransition(ServerState.READY, "reachable")
        return None if state == ServerState.UNREACHABLE else ServerTransition(ServerState.UNREACHABLE, "unreachable")
    if not facts.alive:
        if state == ServerState.STOPPING:
            return ServerTransition(ServerState.STOPPED, "stopped")
        if not facts.watched:
            return ServerTransition(ServerState.LOST, "lost")
        return ServerTransition(ServerState.FAILED, "failed")
    if state == ServerState.STOPPING:
        return None
    if facts.health == 200 and state not in AWAKE_OR_ASLEEP:
        return ServerTransition(ServerState.READY, "ready")
    if not facts.watched and state == ServerState.UNREACHABLE:
        return ServerTransition(ServerState.STARTING, "reattached")
    return None
