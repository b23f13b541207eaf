"""Finalise for leads with several numbers: each number deduplicated and DNC-checked on
its own (SPEC §6 "Leads with several numbers").

Runs before the set-based finalise of ``intake/batches.py`` and only over the batch's
several-number leads (a partial index finds them: a batch of one-number leads pays one
index probe). A number that repeats another lead of the batch, has a live or recent call
for the target, or is on the do-not-call list is left out of its lead and noted for the
report; the lead keeps its other numbers, in order, and is rejected (``duplicate`` or
``dnc``, the reason naming every number) only when none is left. Within the batch a
one-number lead keeps a number a several-number lead repeats, and among several-number
leads the one of highest priority keeps it (the earlier line on a tie).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from dialer.lifecycle import moves
from dialer.store.queries import Q


async def check(conn: asyncpg.Connection, batch_id: uuid.UUID, target: str, window_start: datetime,
                now: datetime, limit_s: float | None = None) -> tuple[int, int]:
    """Returns the leads rejected (duplicates, dnc). Caller's transaction, target locked;
    ``limit_s``: each statement's (the finalise's ``batch_limits``)."""
    leads = await conn.fetch(Q.numbers_leads, batch_id, timeout=limit_s)
    if not leads:
        return 0, 0
    every = sorted({n for r in leads for n in (r["numbers"] or [r["e164"]])})
    listed = {r["e164"] for r in await conn.fetch(Q.numbers_on_dnc, every, now, timeout=limit_s)}
    seen = {r["e164"]: r for r in await conn.fetch(Q.numbers_seen_by_target, every, target, batch_id,
                                                   window_start, None, timeout=limit_s)}
    single = {r["e164"]: r["line"] for r in await conn.fetch(Q.numbers_in_batch, batch_id, every,
                                                             timeout=limit_s)}
    taken: dict[str, int] = {}  # numbers kept by several-number leads of higher priority
    kept: list[tuple[int, str, str, str | None, dict[str, Any]]] = []
    rejected: list[tuple[int, str, str, dict[str, Any]]] = []
    dup = dnc = 0
    for r in leads:
        nums: list[str] = list(r["numbers"] or [r["e164"]])
        notes: dict[str, Any] = dict(r["number_notes"] or {})
        fields: list[str] = list(notes.get("fields") or [f"number{i + 1}" if i else "number"
                                                         for i in range(len(nums))])
        out: list[dict[str, Any]] = list(notes.get("rejected") or [])
        left: list[tuple[str, str]] = []
        for n, col in zip(nums, fields, strict=False):
            why = _why_not(n, r["line"], listed, seen, single, taken)
            if why is None:
                left.append((n, col))
            else:
                out.append({"field": col, "number": n, "outcome": why[0], "reason": f"{col}: {why[1]}"})
        if len(left) == len(nums):
            for n, _ in left:
                taken.setdefault(n, r["line"])
            continue
        new_notes = {"fields": [c for _, c in left], "rejected": out}
        if not left:
            outcome = "dnc" if any(o["outcome"] == "dnc" for o in out[-len(nums):]) else "duplicate"
            rejected.append((r["id"], outcome, "; ".join(o["reason"] for o in out), new_notes))
            if outcome == "dnc":
                dnc += 1
            else:
                dup += 1
            continue
        for n, _ in left:
            taken.setdefault(n, r["line"])
        literal = "{" + ",".join(n for n, _ in left) + "}" if len(left) > 1 else None
        kept.append((r["id"], left[0][0], left[0][0], literal, new_notes))
    await moves.settle_numbers(conn, kept, rejected, limit_s)
    return dup, dnc


def held_by(call: asyncpg.Record) -> str:
    """Why another lead's call (a ``numbers_seen_by_target`` row) holds its number, in the
    words of ``finalise_dedupe_target``."""
    if call["ended_at"] is None:
        return f"number already has a live call (call {call['id']})"
    if call["submitted_at"] is None:  # cancelled, expired or capped before it was sent
        return f"number had a call that ended undialed within the dedupe window (call {call['id']})"
    return f"number was called within the dedupe window (call {call['id']})"


def _why_not(n: str, line: int, listed: set[str], seen: dict[str, asyncpg.Record],
             single: dict[str, int], taken: dict[str, int]) -> tuple[str, str] | None:
    if n in listed:
        return "dnc", "number is on the do-not-call list"
    s = seen.get(n)
    if s is not None:
        return "duplicate", held_by(s)
    other = single.get(n, taken.get(n))
    if other is not None and other != line:
        return "duplicate", f"duplicate of line {other} in this batch"
    return None
