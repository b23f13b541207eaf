"""Agent-scheduled callbacks ("call me back at 3 pm", SPEC §6).

A terminal callback whose disposition maps to ``callback`` and carries a time
(``callbackAt``/``callback_at``, ISO 8601; or ``callbackInMin``), a CRM's
``POST /v1/calls/{id}/schedule`` and the console's form all come here: the lead gets a new
attempt (reason ``callback``) waiting as ``retry_wait`` until it is due, owned by the agent
— only that agent may take it until ``callback_owner_grace_min`` after the due time
(``dispatch/callbacks_owned.py``), then anyone.

Rules, checked when it is asked for and again when it is dialed like any call: the DNC
list (refused now, cancelled later), calling hours and holidays (a time outside them moves
to the next allowed minute, with an event), caps (at dispatch). A callback is not a
re-dial: a recycle rule's ``max`` does not count it. A callback attempt that misses (the
customer not reached) follows the target's ``callback_missed`` rule, then the lead ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from dialer.config import Settings, Target
from dialer.dispatch import compliance, hours
from dialer.lifecycle import moves
from dialer.lifecycle.states import INTAKE, State
from dialer.store.queries import Q

# A callback attempt that ends in one of these missed the customer.
MISSED = frozenset({State.NO_ANSWER, State.BUSY, State.UNREACHABLE})
# How far ahead a callback may be asked for.
HORIZON = timedelta(days=366)


class Refused(ValueError):
    """A callback that may not be scheduled: ``code`` says why (the API's error code)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True, slots=True)
class Scheduled:
    call_id: int
    lead_id: int
    owner: str | None
    asked_at: datetime
    due_at: datetime
    moved: dict[str, Any] | None  # the rule that moved it, when it did


def _key(k: str) -> str:
    return k.replace("_", "").replace("-", "").lower()


def asked_in_body(body: dict[str, Any]) -> tuple[str | None, float | None]:
    """(callbackAt text, callbackInMin) from a provider callback body, read leniently."""
    keyed = {_key(str(k)): v for k, v in body.items()}
    at = keyed.get("callbackat") or keyed.get("callbacktime")
    in_min: float | None = None
    raw = keyed.get("callbackinmin")
    if raw not in (None, ""):
        try:
            in_min = float(str(raw))
        except ValueError:
            in_min = math.nan
    return (str(at).strip() if at not in (None, "") else None), in_min


def parse_time(text: str, zone: Any) -> datetime:
    """ISO 8601 with or without offset; without, it is the lead's local time (``zone``).
    Raises ValueError with what is wrong."""
    s = text.strip()
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time like 2026-12-01T15:00 or "
                         "2026-12-01T15:00-06:00") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+23:59 is before year 1 in UTC
        raise ValueError(f"{text!r} is out of range") from None


def lead_zone(e164: str | None, tz: str | None) -> Any:
    """The lead's local zone: its ``timezone``, else its number's (the first of several)."""
    return hours.zones_for(e164 or "", tz)[0]


def due_from(at: str | None, in_min: float | None, e164: str | None, tz: str | None,
             now: datetime) -> datetime:
    """The asked time, from ``at`` or ``in_min``; ValueError naming the problem."""
    if at is not None:
        return parse_time(at, lead_zone(e164, tz))
    if in_min is None or not math.isfinite(in_min) or in_min < 0 or in_min > HORIZON.total_seconds() / 60:
        raise ValueError(f"callbackInMin: {in_min!r} is not a number of minutes from 0 to "
                         f"{int(HORIZON.total_seconds() // 60)}")
    return now + timedelta(minutes=in_min)


def into_hours(rules: compliance.Rules, target: str, t: Target, e164: str, tz: str | None,
               fields: dict[str, Any] | None, due: datetime) -> tuple[datetime, dict[str, Any] | None]:
    """The due time moved to the next allowed minute when calling hours or a holiday forbid
    it; with the rule that moved it."""
    hold = rules.check(target, t, e164, tz, fields, due)
    if hold is None:
        return due, None
    return hold.until, {"rule": hold.rule, **hold.detail, "asked": due.isoformat(),
                        "until": hold.until.isoformat()}


# Refusals that depend on the lead's state, not on the request: 409 over HTTP.
CONFLICTS = frozenset({"unknown_target", "not_dialable", "dnc", "batch_cancelled", "lead_live"})


def check_source(settings: Settings, row: asyncpg.Record) -> Target:
    """The lead may have a callback: dialable, not on the DNC list, its batch not cancelled,
    no attempt live. Returns its target; raises Refused."""
    call = row["id"]
    t = settings.targets.get(row["target"])
    state = State(row["state"])
    if t is None:
        raise Refused("unknown_target", f"call {call}: target {row['target']!r} is no longer configured")
    if state in INTAKE:
        raise Refused("not_dialable", f"call {call} was never dialable (intake outcome {state.value})",
                      {"state": state.value})
    if row["on_dnc"]:
        raise Refused("dnc", f"call {call}: {row['e164']} is on the do-not-call list",
                      {"number": row["e164"]})
    if row["batch_state"] == "cancelled":
        raise Refused("batch_cancelled", f"call {call}: its batch was cancelled")
    if row["live_call"] is not None:
        raise Refused("lead_live", f"call {call}: the lead has a live attempt, call {row['live_call']}",
                      {"live_call": row["live_call"]})
    return t


async def request(pool: asyncpg.Pool, settings: Settings, call_id: int, at: str, agent: str | None,
                  source: str, now: datetime) -> Scheduled:
    """A CRM's or the console's callback for a call's lead: ``at`` is ISO 8601 (without an
    offset, the lead's local time); the owner defaults to the call's agent. Raises Refused."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(Q.callback_source_row, call_id, now)
        if row is None:
            raise Refused("not_found", f"no call {call_id}")
        check_source(settings, row)
        try:
            asked = parse_time(at, lead_zone(row["e164"], row["timezone"]))
        except ValueError as e:
            raise Refused("invalid_time", f"at: {e}") from None
        return await schedule(conn, settings, call_id, asked, agent or row["agent"], source, now)


async def schedule(
    conn: asyncpg.Connection,
    settings: Settings,
    from_call: int,
    asked: datetime,
    owner: str | None,
    source: str,
    now: datetime,
    missed: int = 0,
    rules: compliance.Rules | None = None,
    from_provider: bool = False,
) -> Scheduled:
    """The callback's attempt, in the caller's transaction; raises Refused. ``from_provider``:
    the provider's word is taken — a time already past is dialed as soon as the rules allow
    (its callback reached us late, or was replayed from the spool), and its agent is the
    owner even if our config does not list it (then anyone takes it after the grace)."""
    row = await conn.fetchrow(Q.callback_source_row, from_call, now)
    if row is None:
        raise Refused("not_found", f"no call {from_call}")
    await conn.execute(Q.callback_lead_lock, row["lead"])
    row = await conn.fetchrow(Q.callback_source_row, from_call, now)  # as of the lock
    t = check_source(settings, row)
    if asked < now - timedelta(minutes=1) and not from_provider:
        raise Refused("time_in_past", f"{asked.isoformat()} is in the past (now {now.isoformat()})",
                      {"at": asked.isoformat(), "now": now.isoformat()})
    if asked > now + HORIZON:
        raise Refused("time_too_far", f"{asked.isoformat()} is more than {HORIZON.days} days ahead")
    if owner is not None and t.agents and owner not in t.agents and not from_provider:
        raise Refused("unknown_agent", f"agent {owner!r} is not one of target {row['target']}'s agents",
                      {"agents": list(t.agents)})
    earliest, held = max(asked, now), None
    if row["abandoned_at"] is not None:  # the abandon guard (SPEC §10), as for re-dials
        floor = row["abandoned_at"] + timedelta(minutes=t.abandon_redial_min)
        if earliest < floor:
            earliest = floor
            held = {"rule": "abandon_redial_min", "abandon_redial_min": t.abandon_redial_min,
                    "abandoned_at": row["abandoned_at"].isoformat(), "asked": asked.isoformat()}
    due, moved = into_hours(rules or compliance.Rules(settings), row["target"], t, row["e164"],
                            row["timezone"], row["fields"], earliest)
    if held is not None:  # one account of why: the guard's, with the hours' move on top if any
        moved = {**held, "until": due.isoformat()} if moved is None else \
            {**moved, "asked": asked.isoformat(), "abandon_redial": held}
    grace = timedelta(minutes=t.callback_owner_grace_min)
    new = await moves.new_callback(conn, from_call, due, now)
    if new is None:
        raise Refused("batch_cancelled", f"call {from_call}: its batch was cancelled")
    await conn.execute(Q.callback_record, new["id"], row["lead"], row["target"], owner, asked, due,
                       due + grace, source, from_call, missed, now)
    payload: dict[str, Any] = {"rule": "callback", "source": source, "owner": owner,
                               "asked": asked.isoformat(), "until": due.isoformat(), "from_call": from_call,
                               "owner_grace_until": (due + grace).isoformat() if owner else None}
    if missed:
        payload["missed"] = missed
    await conn.execute(Q.event_insert, new["id"], now, "callback_scheduled", None, State.RETRY_WAIT.value,
                       True, payload)
    await conn.execute(Q.event_insert, from_call, now, "callback_requested", row["state"], None, True,
                       {**payload, "next_call": new["id"]})
    if moved is not None:
        await conn.execute(Q.event_insert, new["id"], now, "callback_moved", None, None, True, moved)
    return Scheduled(int(new["id"]), int(row["lead"]), owner, asked, due, moved)


async def after_disposition(conn: asyncpg.Connection, settings: Settings, call_id: int,
                            agent: str | None, body: dict[str, Any], now: datetime) -> int | None:
    """A terminal callback whose disposition asks for a callback: schedule it, owned by the
    callback's agent. A time that cannot be read or is refused is an event, not an error:
    the provider's callback is acknowledged either way. Returns the new attempt's id."""
    at, in_min = asked_in_body(body)
    row = await conn.fetchrow(Q.callback_source_row, call_id, now)
    if row is None:
        return None
    try:
        if at is None and in_min is None:
            raise Refused("no_time", "the CALLBACK disposition carries no callbackAt or callbackInMin")
        try:
            asked = due_from(at, in_min, row["e164"], row["timezone"], now)
        except ValueError as e:
            raise Refused("invalid_time", str(e)) from None
        done = await schedule(conn, settings, call_id, asked, agent or row["agent"], "disposition", now,
                              from_provider=True)
    except Refused as e:
        await conn.execute(Q.event_insert, call_id, now, "callback_refused", row["state"], None, True,
                           {"rule": "callback", "code": e.code, "reason": e.message,
                            "callbackAt": at, "callbackInMin": in_min})
        return None
    return done.call_id


async def after_missed(conn: asyncpg.Connection, settings: Settings, call_id: int, state: State,
                       now: datetime) -> tuple[bool, int | None]:
    """A callback attempt that ended: (was it a callback attempt, the next one's id). One that
    missed the customer follows the target's ``callback_missed`` rule, then the lead ends."""
    cb = await conn.fetchrow(Q.callback_of_call, call_id)
    if cb is None:
        return False, None
    if state not in MISSED:
        return True, None
    t = settings.targets.get(cb["target"])
    rule = t.callback_missed if t is not None else None
    detail: dict[str, Any] = {"rule": "callback_missed", "ended_as": state.value, "owner": cb["owner"],
                              "retry": cb["missed"] + 1, "max": rule.max if rule else 0}
    if rule is None or cb["missed"] >= rule.max:
        await conn.execute(Q.event_insert, call_id, now, "callback_missed", state.value, None, True,
                           {**detail, "reason": "no retry left: the lead ends"})
        return True, None
    try:
        done = await schedule(conn, settings, call_id, now + timedelta(minutes=rule.retry_after_min),
                              cb["owner"], "missed", now, missed=cb["missed"] + 1, from_provider=True)
    except Refused as e:
        await conn.execute(Q.event_insert, call_id, now, "callback_missed", state.value, None, True,
                           {**detail, "reason": e.message, "code": e.code})
        return True, None
    await conn.execute(Q.event_insert, call_id, now, "callback_missed", state.value, None, True,
                       {**detail, "retry_after_min": rule.retry_after_min, "next_call": done.call_id})
    return True, done.call_id
