"""Owned callbacks at dispatch: a due callback goes to the agent who promised it.

Runs in the fill transaction (under the target's dispatch lock) before the ordinary
candidates. Each ready owner's due callbacks are screened like any call (DNC, calling
hours, holidays, caps: ``outbox.screen``) and recorded in a chunk of their own that names
that agent (``agents = [owner]``, mapping ``global``). A callback whose owner is not
ready within ``callback_owner_grace_min`` after its due time is released, with an event,
and the ordinary dispatch gives it to anyone (its candidates skip owned callbacks until
then).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from dialer.config import Settings
from dialer.dispatch import compliance, outbox
from dialer.dispatch.pacing import Pace
from dialer.lifecycle.observe import Ended
from dialer.store.queries import Q


async def release_unclaimed(conn: asyncpg.Connection, name: str, now: datetime) -> int:
    """Owned callbacks whose owner's grace passed: anyone's now, each with an event."""
    rows = await conn.fetch(Q.callbacks_grace_passed, name, now)
    if rows:
        await conn.execute(Q.events_each, [r["call_id"] for r in rows], now, "callback_owner_grace_passed",
                           None, [r["state"] for r in rows],
                           [{"rule": "callback_owner_grace_min", "owner": r["owner"],
                             "due": r["due_at"].isoformat(), "grace_until": r["grace_until"].isoformat(),
                             "reason": "the owner was not ready in time: any agent may take it"}
                            for r in rows])
    return len(rows)


async def record_owned(
    conn: asyncpg.Connection,
    settings: Settings,
    secret: bytes,
    name: str,
    pace: Pace,
    now: datetime,
    rules: compliance.Rules,
    ended: list[Ended],
    chunk_size: int,
) -> int:
    """Record chunks of due callbacks for their ready owners; returns calls claimed (and
    counts them in ``pace``, so the ordinary fill after this one sees them in flight)."""
    await release_unclaimed(conn, name, now)
    ready = [a for a in pace.agents if a != "*"]
    if pace.free <= 0 or not ready:
        return 0
    t = settings.targets[name]
    cands = await conn.fetch(Q.callback_owned_candidates, name, now, ready, pace.free + 20)
    by_owner: dict[str, list[asyncpg.Record]] = {}
    for c in cands:
        by_owner.setdefault(c["owner"], []).append(c)
    claimed = 0
    for owner, rows in sorted(by_owner.items()):
        if pace.free <= 0:
            break
        screened = await outbox.screen(conn, rules, name, t, rows, min(pace.free, chunk_size), now)
        ended.extend(await outbox.apply_screening(conn, screened, now))
        if not screened.take:
            continue
        n = await outbox.record(conn, settings, secret, name, t, pace, screened.take, now, owner=owner)
        claimed += n
        pace.in_flight += n  # the ordinary fill after this one sees them out
        if pace.room is not None:
            pace.room = max(0, pace.room - n)
    return claimed
