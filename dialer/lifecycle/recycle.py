"""Re-dial by rule: after a terminal no_answer / busy / unreachable / abandoned, a target's
recycle rule puts the lead back as a new attempt after ``after_min``, up to ``max`` times
(an abandoned lead waits at least the target's ``abandon_redial_min``).

The new attempt waits as ``retry_wait``; dispatch re-checks the DNC list and calling
hours when it comes due, like any other call.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from dialer.config import Target
from dialer.dispatch import windows
from dialer.lifecycle import moves, next_number
from dialer.lifecycle.states import State
from dialer.store.queries import Q

RECYCLABLE = frozenset({State.NO_ANSWER, State.BUSY, State.UNREACHABLE, State.ABANDONED})


async def maybe_recycle(
    conn: asyncpg.Connection,
    call_id: int,
    lead_id: int,
    ended_as: State,
    target: Target,
    now: datetime,
    row: asyncpg.Record | None = None,
) -> int | None:
    """Create the next attempt if the rule allows; returns its id. Caller's transaction.
    ``row`` (``call_ended_row``) brings the lead's numbers and expiry."""
    if ended_as not in RECYCLABLE:
        return None
    if ended_as is State.ABANDONED and ended_as.value not in target.recycle:
        return None  # an abandoned lead (any of its numbers) is re-dialed only by its own rule
    if row is not None and row["numbers"] is not None:
        return await next_number.next_attempt(conn, row, ended_as, target, now)
    rule = target.recycle.get(ended_as.value)  # type: ignore[call-overload]
    if rule is None or rule.max <= 0:
        return None
    done = await conn.fetchval(Q.recycle_count, lead_id, ended_as.value)
    if done >= rule.max:
        return None
    after_min = rule.after_min
    if ended_as is State.ABANDONED:  # the abandon guard: not re-dialed within abandon_redial_min
        after_min = max(after_min, target.abandon_redial_min)
    due = now + timedelta(minutes=after_min)
    exp = windows.expiry_of(row["expires_at"], target, row["batch_created_at"]) if row is not None else None
    if exp is not None and due >= exp.at:  # never a re-dial after the lead expired
        await conn.execute(Q.event_insert, call_id, now, "recycle_skipped", ended_as.value, None, True,
                           {"rule": exp.rule, "expires_at": exp.at.isoformat(), "until": due.isoformat(),
                            "reason": "the lead expires before the re-dial would be due"})
        return None
    row = await moves.new_attempt(conn, call_id, ended_as, due, now)
    if row is None:
        return None  # the batch was cancelled
    payload = {"rule": f"recycle.{ended_as.value}", "after_min": after_min,
               "recycle": done + 1, "max": rule.max, "until": due.isoformat(),
               "from_call": call_id}
    await conn.execute(Q.event_insert, row["id"], now, "recycled", None, State.RETRY_WAIT.value, True,
                       payload)
    await conn.execute(Q.event_insert, call_id, now, "recycle_scheduled", ended_as.value, None, True,
                       {**payload, "next_call": row["id"]})
    return int(row["id"])
