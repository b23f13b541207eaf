"""Scheduled callbacks as the API and the console list them: by target, owner and due
time, each with where it stands (upcoming, due, overdue, dialed, ended)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from dialer.lifecycle.states import TERMINAL, WAITING, State
from dialer.store.queries import Q

MAX_ROWS = 1000


@dataclass(frozen=True, slots=True)
class Filter:
    target: str | None = None
    agent: str | None = None
    start: datetime | None = None  # due at or after
    end: datetime | None = None  # due before
    include_done: bool = True
    limit: int = 500
    lead: int | None = None


def status(state: str, due_at: datetime, grace_until: datetime, now: datetime) -> str:
    """upcoming: not yet due; due: its time came, the owner's grace runs; overdue: the grace
    passed and it still waits; dialed: at the provider; ended: it has an outcome."""
    s = State(state)
    if s in TERMINAL:
        return "ended"
    if s not in WAITING:
        return "dialed"
    if due_at > now:
        return "upcoming"
    return "due" if grace_until > now else "overdue"


async def listing(conn: asyncpg.Connection, f: Filter, now: datetime) -> list[dict[str, Any]]:
    rows = await conn.fetch(Q.callbacks_list, f.target, f.agent, f.start, f.end, f.include_done,
                            min(max(f.limit, 1), MAX_ROWS), f.lead)
    return [{
        "call_id": r["call_id"], "lead_id": r["lead_id"], "from_call": r["from_call"], "target": r["target"],
        "owner": r["owner"], "number": r["e164"], "external_id": r["external_id"], "state": r["state"],
        "status": status(r["state"], r["due_at"], r["grace_until"], now),
        "asked_at": r["asked_at"], "due_at": r["due_at"], "owner_grace_until": r["grace_until"],
        "source": r["source"], "missed": r["missed"], "created_at": r["created_at"],
        "agent": r["agent"], "outcome": r["outcome"], "batch_id": r["batch_id"],
    } for r in rows]
