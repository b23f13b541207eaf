"""The next attempt of a lead with several numbers (SPEC §6 "Leads with several numbers").

After a re-dialable end (no answer, busy, unreachable) the lead goes on to its next
usable number in turn (number1 → number2 → number3 → number1 …), skipping numbers now
on the do-not-call list, numbers whose attempts are used up, and numbers another lead
of the target holds (a live call, or one ended within ``dedupe_window_h``: each number is
deduplicated on its own, and a spare number is only checked against other leads' calls
when it is about to become one). A number not tried yet
is dialed at once (it is another phone, not a re-dial of the same one); a number tried
before waits for the target's recycle rule for that end (``after_min``), and its
``max`` counts re-dials per number: each number gets up to ``1 + max`` attempts (one
with no rule). The lead ends when a number is answered (nothing follows an answer) or
every number is used up. Calling hours, holidays, the DNC list and the per-number caps
are checked at dispatch as for any call.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import anyio
import asyncpg

from dialer.config import Target
from dialer.dispatch import windows
from dialer.intake import number_checks
from dialer.lifecycle import moves
from dialer.lifecycle.states import State
from dialer.store.queries import Q


async def hold_for_dnc(conn: asyncpg.Connection, targets: Mapping[str, Target]) -> None:
    """Before a DNC cancel: every target's dedupe lock, shared. The cancel leaves the calls of
    a batch still receiving rows to its finalise (``dnc_cancel_numbers``); with this lock that
    finalise either committed before the cancel or waits until our list entries commit. Taken
    before the cancel locks any row, and before ``next_attempt`` asks for it again. The
    targets of batches still receiving are held too: a reload may have removed a target while
    one of its files was still ingesting."""
    receiving = {r["target"] for r in await conn.fetch(Q.batches_receiving_targets)}
    await conn.execute(Q.dedupe_share_targets, sorted(set(targets) | receiving))


async def lock_numbers(conn: asyncpg.Connection, numbers: Iterable[str], attempts: int = 5,
                       limit_s: float | None = None) -> None:
    """The per-number locks, in order. A dispatch fill takes its cap locks in more than one
    run, so it can still close a cycle with us; the deadlock detector then aborts one side.
    Here only this statement is lost (a savepoint releases what it took) and it runs again,
    so a DNC import is not undone by it. ``limit_s``: the statement's (see ``_go_on``)."""
    ordered = sorted(set(numbers))
    if not ordered:
        return
    for attempt in range(1, attempts + 1):
        try:
            async with conn.transaction():  # a savepoint
                await conn.execute(Q.number_locks, ordered, timeout=limit_s)
            return
        except asyncpg.DeadlockDetectedError:
            if attempt == attempts:
                raise
            await anyio.sleep(random.uniform(0.005, 0.05) * attempt)  # noqa: S311 - jitter


async def after_dnc(conn: asyncpg.Connection, numbers: list[str], targets: Mapping[str, Target],
                    now: datetime) -> list[int]:
    """Numbers just put on the DNC list cancelled some waiting attempts: a lead with several
    numbers goes on to its next usable one (the others are another phone, not on the list).
    Returns the new attempts. Caller's transaction, right after the cancel (``hold_for_dnc``
    before it)."""
    cancelled = await conn.fetch(Q.numbers_cancelled_for_dnc, numbers, now)
    return await _go_on(conn, [r["id"] for r in cancelled], targets, now)


async def after_dnc_import(conn: asyncpg.Connection, targets: Mapping[str, Target],
                           now: datetime, limit_s: float | None = None) -> list[int]:
    """``after_dnc`` for a DNC import: the numbers are in its temporary table. ``limit_s``:
    the import's ``bulk_limits``, for the statements that grow with the file."""
    cancelled = await conn.fetch(Q.dnc_import_cancelled, now, True, timeout=limit_s)
    return await _go_on(conn, [r["id"] for r in cancelled], targets, now, limit_s)


async def after_dnc_at_send(conn: asyncpg.Connection, ids: list[int], targets: Mapping[str, Target],
                            now: datetime) -> list[int]:
    """Attempts the send-time re-check took out of their chunk (their number went on the
    list after they were recorded, so the DNC cancel left them to it): several-number leads
    go on as with ``after_dnc``, and every one's result webhook follows."""
    return await _go_on(conn, ids, targets, now)


async def _go_on(conn: asyncpg.Connection, ids: list[int], targets: Mapping[str, Target],
                 now: datetime, limit_s: float | None = None) -> list[int]:
    """``limit_s``: for the statements over all of ``ids`` (each lead's own are small)."""
    if not ids:
        return []
    rows = [row for i in ids if (row := await conn.fetchrow(Q.call_ended_row, i)) is not None]
    await moves.post_results(conn, [row for row in rows if row["numbers"] is None], now, limit_s=limit_s)
    several = [row for row in rows if row["numbers"] is not None]
    # every number these leads may move onto, locked at once in order (next_attempt's own
    # locks are then already held): two such transactions cannot deadlock
    await lock_numbers(conn, {n for row in several for n in row["numbers"]}, limit_s=limit_s)
    out: list[int] = []
    for row in several:
        if new := await next_attempt(conn, row, State.CANCELLED, targets.get(row["target"]), now):
            out.append(new)
        # its result webhook, now that it says whether a next number follows
        await moves.post_results(conn, [row], now)
    return out


async def next_attempt(conn: asyncpg.Connection, row: asyncpg.Record, ended_as: State, target: Target | None,
                       now: datetime) -> int | None:
    """Create the lead's next attempt, on its next usable number; returns its id, or None
    when every number is used up. Caller's transaction. ``row`` is ``call_ended_row``."""
    numbers: list[str] = list(row["numbers"])
    # Two calls must never go live on one number: wait for the target's finalise (which
    # takes this lock exclusively) and for other leads moving onto these numbers, so the
    # check below sees their calls, and they see ours.
    await conn.execute(Q.dedupe_share_targets, [row["target"]])
    await lock_numbers(conn, set(numbers))
    rule = target.recycle.get(ended_as.value) if target is not None else None  # type: ignore[call-overload]
    per_number = 1 + (rule.max if rule is not None else 0)
    tried = {r["e164"]: r["n"] for r in await conn.fetch(Q.lead_number_attempts, row["lead"])}
    listed = {r["e164"] for r in await conn.fetch(Q.numbers_on_dnc, numbers, now)}
    # a target no longer configured: only live calls count
    since = now - timedelta(hours=target.dedupe_window_h) if target is not None else None
    taken = {r["e164"]: r for r in await conn.fetch(Q.numbers_seen_by_target, numbers, row["target"], None,
                                                     since, row["lead"])}
    at = numbers.index(row["e164"]) if row["e164"] in numbers else len(numbers) - 1
    skipped: list[dict[str, Any]] = []
    chosen = None
    for n in numbers[at + 1:] + numbers[:at + 1]:
        if n in listed:
            skipped.append({"number": n, "reason": "on the do-not-call list"})
        elif (other := taken.get(n)) is not None:
            skipped.append({"number": n, "reason": number_checks.held_by(other)})
        elif tried.get(n, 0) >= per_number:
            skipped.append({"number": n, "reason": f"used up ({tried.get(n, 0)} of {per_number} attempts)"})
        else:
            chosen = n
            break
    base = {"from_call": row["id"], "from_number": row["e164"], "skipped": skipped,
            "attempts_per_number": tried}
    if chosen is None:
        why = ("every number of the lead is used up" if all("used up" in x["reason"] for x in skipped)
               else "no number of the lead is usable: each is used up, on the do-not-call list or held "
                    "by another lead")
        await conn.execute(Q.event_insert, row["id"], now, "numbers_exhausted", ended_as.value, None, True,
                           {**base, "rule": "numbers", "reason": why})
        return None
    fresh = tried.get(chosen, 0) == 0
    due = now if fresh or rule is None else now + timedelta(minutes=rule.after_min)
    if ended_as is State.ABANDONED and target is not None:  # the abandon guard, any number of the lead
        due = max(due, now + timedelta(minutes=target.abandon_redial_min))
    exp = windows.expiry_of(row["expires_at"], target, row["batch_created_at"])
    if exp is not None and due >= exp.at:
        await conn.execute(Q.event_insert, row["id"], now, "recycle_skipped", ended_as.value, None, True,
                           {**base, "rule": exp.rule, "expires_at": exp.at.isoformat(),
                            "reason": "the lead expires before its next attempt"})
        return None
    new = await moves.new_attempt(conn, row["id"], ended_as, due, now, number=chosen)
    if new is None:
        return None  # the batch was cancelled
    payload = {**base, "rule": "numbers" if fresh or rule is None else f"recycle.{ended_as.value}",
               "number": chosen, "until": due.isoformat()}
    if not fresh and rule is not None:
        payload.update(after_min=rule.after_min, max_per_number=rule.max)
    await conn.execute(Q.event_insert, new["id"], now, "recycled", None, State.RETRY_WAIT.value, True,
                       payload)
    await conn.execute(Q.event_insert, row["id"], now, "recycle_scheduled", ended_as.value, None, True,
                       {**payload, "next_call": new["id"]})
    return int(new["id"])
