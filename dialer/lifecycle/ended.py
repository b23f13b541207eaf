"""What follows a call's end, in the same transaction as the terminal callback:
re-dial by rule, DNC by disposition, and the result webhook for the batch's CRM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from dialer.config import Settings
from dialer.lifecycle import callbacks_scheduled, moves, next_number, number_report, recycle
from dialer.lifecycle.dispositions import Dispositions
from dialer.lifecycle.observe import Ended
from dialer.lifecycle.states import State
from dialer.store.queries import Q


@dataclass
class EndEffects:
    recycled_to: int | None = None
    dnc_added: bool = False
    ended: list[Ended] = field(default_factory=list)  # calls it cancelled: told to observe.ended after commit
    webhook: bool = False


def webhook_body(row: asyncpg.Record, next_call: int | None,
                 attempts: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {
        "event": "call.ended",
        "batch_id": str(row["batch_id"]),
        "call_id": row["id"],
        "number": row["e164"],
        "external_id": row["external_id"],
        "state": row["state"],
        "outcome": row["outcome"],
        "attempt": row["attempt"],
        "agent": row["agent"],
        "ended_at": row["ended_at"].isoformat() if row["ended_at"] else None,
        "will_retry": next_call is not None,
        "next_call_id": next_call,
    }
    if row["numbers"] is not None:  # a lead with several numbers: which, and how often each
        body.update(number_report.reached(row, attempts))
    else:  # the same key for every lead, so a CRM reads one shape (no query: it is the row's)
        body["number_reached"] = row["e164"] if row["state"] == "answered" else None
    return orjson.dumps(body)


async def _list_number(conn: asyncpg.Connection, settings: Settings, e164: str, call_id: int,
                       disposition: str | None, now: datetime) -> list[Ended]:
    """The customer asked not to be called: list the number and stop its other calls."""
    await conn.execute(Q.dnc_add, [e164], "disposition", now, None)
    # after the list's row (as the API and imports do: one order for both locks)
    await next_number.hold_for_dnc(conn, settings.targets)
    ended = await moves.cancel_for_dnc(conn, [e164], now, {"rule": "dnc_dispositions",
                                                          "disposition": disposition, "from_call": call_id})
    await next_number.after_dnc(conn, [e164], settings.targets, now)  # other leads go on
    return ended


async def late_dnc(conn: asyncpg.Connection, settings: Settings, dispositions: Dispositions,
                   call_id: int, disposition: str | None, now: datetime) -> EndEffects | None:
    """A DNC disposition on a call that had already ended (reaped as expired, or ended by an
    earlier callback): the call stays as it is (state only moves forward) but the customer's
    word still counts. None when the disposition is no DNC one."""
    if not dispositions.is_dnc(disposition):
        return None
    e164 = await conn.fetchval(Q.call_e164, call_id)
    if e164 is None:
        return None
    cancelled = await _list_number(conn, settings, e164, call_id, disposition, now)
    return EndEffects(dnc_added=True, ended=cancelled)


async def after_end(
    conn: asyncpg.Connection,
    settings: Settings,
    dispositions: Dispositions,
    call_id: int,
    disposition: str | None,
    now: datetime,
    body: dict[str, Any] | None = None,
) -> EndEffects:
    """``body``: the terminal callback's, when a provider's callback ended the call (a
    CALLBACK disposition carries its time there)."""
    out = EndEffects()
    row = await conn.fetchrow(Q.call_ended_row, call_id)
    if row is None:
        return out
    state = State(row["state"])
    target = settings.targets.get(row["target"])
    if dispositions.is_dnc(disposition):
        out.ended = await _list_number(conn, settings, row["e164"], call_id, disposition, now)
        out.dnc_added = True
    elif dispositions.is_callback(disposition):
        out.recycled_to = await callbacks_scheduled.after_disposition(conn, settings, call_id, row["agent"],
                                                                      body or {}, now)
    elif target is not None:
        was_callback, out.recycled_to = await callbacks_scheduled.after_missed(conn, settings, call_id,
                                                                               state, now)
        if not was_callback:  # a callback attempt is never a recycle rule's re-dial
            out.recycled_to = await recycle.maybe_recycle(conn, call_id, row["lead"], state, target, now, row)
    url = await conn.fetchval(Q.batch_webhook_url, row["batch_id"])
    if url:
        attempts = await number_report.attempts(conn, row["lead"]) if row["numbers"] is not None else None
        await conn.execute(Q.webhook_enqueue, row["batch_id"], call_id, url,
                           webhook_body(row, out.recycled_to, attempts), now)
        out.webhook = True
    return out
