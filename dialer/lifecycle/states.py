"""The one table of call states and the moves allowed between them.

Every other module asks this one; nothing else decides a transition.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    SUBMITTING = "submitting"
    UNCERTAIN = "uncertain"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    CONNECTED = "connected"
    RETRY_WAIT = "retry_wait"
    # terminal
    ANSWERED = "answered"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    UNREACHABLE = "unreachable"
    FAILED = "failed"
    REJECTED_BY_PROVIDER = "rejected_by_provider"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    CAPPED = "capped"
    ABANDONED = "abandoned"  # customer-first: picked up, no agent came (migration 0011)
    # intake outcomes: the row was never a dialable call
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    DNC = "dnc"


INTAKE: frozenset[State] = frozenset({State.INVALID, State.DUPLICATE, State.DNC})
INTAKE_OUTCOMES = tuple(sorted(s.value for s in INTAKE))

TERMINAL: frozenset[State] = frozenset(
    {
        State.ANSWERED,
        State.NO_ANSWER,
        State.BUSY,
        State.UNREACHABLE,
        State.FAILED,
        State.REJECTED_BY_PROVIDER,
        State.CANCELLED,
        State.EXPIRED,
        State.CAPPED,
        State.ABANDONED,
    }
)
LIVE: frozenset[State] = frozenset(State) - TERMINAL - INTAKE
# Not yet handed to a provider: a cancel ends these at once.
WAITING: frozenset[State] = frozenset({State.PENDING, State.SCHEDULED, State.RETRY_WAIT})

# Forward order of the live path; a state may only move to a later rank or to a terminal state.
_RANK = {
    State.PENDING: 0,
    State.SCHEDULED: 1,
    State.RETRY_WAIT: 1,
    State.SUBMITTING: 2,
    State.UNCERTAIN: 3,
    State.QUEUED: 4,
    State.ASSIGNED: 5,
    State.CONNECTED: 6,
}

_EXTRA: set[tuple[State, State]] = {
    # calling hours and caps move a waiting call between pending and scheduled
    (State.SCHEDULED, State.PENDING),
    (State.RETRY_WAIT, State.PENDING),
    (State.SCHEDULED, State.RETRY_WAIT),
    (State.RETRY_WAIT, State.SCHEDULED),  # a re-dial or callback a rule holds when it comes due
    # an uncertain chunk's calls are re-queued once after uncertain_after_min
    (State.UNCERTAIN, State.PENDING),
    # a send that failed before the provider took it goes back to waiting; so does a row the
    # re-check at send time takes out (calling hours, holiday, cap: scheduled until then)
    (State.SUBMITTING, State.PENDING),
    (State.SUBMITTING, State.SCHEDULED),
}


def can_move(src: State | str, dst: State | str) -> bool:
    s, d = State(src), State(dst)
    if s in TERMINAL or s in INTAKE or d in INTAKE:
        return False
    if (s, d) in _EXTRA:
        return True
    if d in TERMINAL:
        return True
    return _RANK[d] > _RANK[s]


# Intake classifies rows it has just written (a duplicate, a number on the DNC list)
# before the batch is open to dispatch.
INTAKE_MOVES: frozenset[tuple[State, State]] = frozenset(
    {(State.PENDING, State.DUPLICATE), (State.PENDING, State.DNC)})


def allowed_moves() -> list[tuple[str, str]]:
    """Every (from, to) the database accepts for ``calls.state`` (migration 0005's table)."""
    pairs = {(a.value, b.value) for a in State for b in State if a != b and can_move(a, b)}
    pairs |= {(a.value, b.value) for a, b in INTAKE_MOVES}
    return sorted(pairs)


def sql_list(states: frozenset[State]) -> list[str]:
    """For ``= ANY($n)`` parameters."""
    return sorted(s.value for s in states)
