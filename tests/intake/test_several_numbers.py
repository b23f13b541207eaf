"""Leads with several numbers at intake: each number validated, deduplicated and
DNC-checked on its own; the report names which number of which line was left out."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from dialer.clock import FakeClock
from dialer.intake import dnc
from dialer.intake.columns import canonical
from dialer.intake.leads import COPY_COLUMNS, LeadEncoder, TargetRules
from dialer.intake.submit import Submission, submit

RULES = TargetRules(name="sales", default_region="US", agent_mapping="all-agents", agents=())
COL = {c: i for i, c in enumerate(COPY_COLUMNS)}


def lead(values: dict[str, object]) -> dict[str, Any]:
    row = LeadEncoder("b", RULES).lead(7, values, None)
    return {c: row[i] for c, i in COL.items()}


def test_aliases_for_more_numbers_and_expiry() -> None:
    for header, field in [("number2", "number2"), ("Phone 2", "number2"), ("alt_number", "number2"),
                          ("mobile2", "number2"), ("phone3", "number3"), ("Number_4", "number4"),
                          ("numbers", "numbers"), ("Expires At", "expires_at"), ("phone", "number")]:
        assert canonical(header) == field, header


def test_a_bad_number2_is_noted_and_the_lead_kept() -> None:
    row = lead({"number": "(415) 555-0100", "number2": "12345", "number3": "415 555 0102"})
    assert row["state"] == "pending" and row["e164"] == "+14155550100"
    assert row["numbers"] == "{+14155550100,+14155550102}"
    notes = orjson.loads(row["number_notes"] or "")
    assert notes["fields"] == ["number", "number3"]
    assert notes["rejected"] == [{"field": "number2", "number": "12345", "outcome": "invalid",
                                  "reason": "number2: not a valid phone number for region US"}]


def test_a_lead_with_no_usable_number_is_rejected_naming_each() -> None:
    row = lead({"number": "12", "phone2": "hello"})
    assert row["state"] == "invalid"
    assert row["reason"] == ("number: not a valid phone number for region US; "
                             "number2: not a phone number (the string supplied did not seem to be a phone number)")


def test_a_bad_first_number_leaves_the_second_to_dial() -> None:
    row = lead({"number": "12", "number2": "+14155550101"})
    assert row["state"] == "pending" and row["e164"] == "+14155550101" and row["numbers"] is None
    assert orjson.loads(row["number_notes"] or "")["fields"] == ["number2"]


def test_one_number_leads_carry_nothing_extra() -> None:
    row = lead({"number": "+14155550100"})
    assert (row["numbers"], row["number_notes"], row["expires_at"]) == (None, None, None)
    row = lead({"number": "+14155550100", "number2": ""})  # a blank number2 cell
    assert (row["numbers"], row["number_notes"]) == (None, None)


def test_expires_at_date_is_the_end_of_that_day_in_the_leads_time() -> None:
    row = lead({"number": "+13125550100", "expires_at": "2026-03-02"})  # Chicago, CST
    assert row["expires_at"] == "2026-03-03T06:00:00+00:00"
    row = lead({"number": "+13125550100", "expires_at": "2026-03-02T17:30", "timezone": "Europe/Berlin"})
    assert row["expires_at"] == "2026-03-02T16:30:00+00:00"
    row = lead({"number": "+13125550100", "expires_at": "2026-03-02T17:30:00Z"})
    assert row["expires_at"] == "2026-03-02T17:30:00+00:00"
    row = lead({"number": "+13125550100", "expires_at": "soon"})
    assert row["state"] == "invalid" and row["reason"] == "expires_at: 'soon' is not an ISO 8601 date or time"


async def test_each_number_is_deduplicated_and_dnc_checked_on_its_own(pool: asyncpg.Pool, settings: Any,
                                                                       clock: FakeClock) -> None:
    await dnc.add_numbers(pool, ["+14155550102", "+14155550201"], source="test", now=clock.now(),
                          targets=settings.targets)
    rows = [
        {"number": "+14155550100"},                                              # 0: one number
        {"number": "+14155550101", "number2": "+14155550102", "number3": "+14155550103"},  # 1: n2 DNC
        {"number": "+14155550100", "number2": "+14155550104"},                   # 2: n1 dup of 0
        {"number": "+14155550201", "numbers": ["+14155550100"]},                 # 3: all gone
        {"number": "+14155550105", "number2": "123"},                            # 4: n2 invalid
    ]
    status, out = await submit(pool, settings, clock, Submission(target="sales", rows=rows))
    assert status == 202
    assert out["accepted"] == 4 and out["dnc"] == 1 and out["duplicates"] == 0
    # whole leads that are duplicates or DNC are counted; numbers left out of a lead are named
    assert out["rejected"] == [
        {"index": 1, "field": "number2", "reason": "number2: number is on the do-not-call list"},
        {"index": 2, "field": "number", "reason": "number: duplicate of line 0 in this batch"},
        {"index": 4, "field": "number2", "reason": "number2: not a valid phone number for region US"}]
    async with pool.acquire() as conn:
        calls = {r["line"]: r for r in await conn.fetch("SELECT * FROM calls ORDER BY line")}
        from dialer.intake.batches import rejected_rows
        report = [r async for r in rejected_rows(conn, calls[0]["batch_id"])]
    assert calls[1]["numbers"] == ["+14155550101", "+14155550103"] and calls[1]["state"] == "pending"
    assert calls[2]["e164"] == "+14155550104" and calls[2]["numbers"] is None
    assert calls[3]["state"] == "dnc"
    assert calls[3]["reason"] == ("number: number is on the do-not-call list; "
                                  "number2: duplicate of line 0 in this batch")
    assert [(r["line"], r.get("field"), r["outcome"]) for r in report] == [
        (1, "number2", "dnc"), (2, "number", "duplicate"), (3, None, "dnc"), (4, "number2", "invalid")]
    assert report[1]["reason"] == "number: duplicate of line 0 in this batch"
    assert all(r.get("lead", "accepted") == "accepted" for r in report if r["line"] != 3)


async def test_a_number_two_several_number_leads_share_stays_with_the_higher_priority(
        pool: asyncpg.Pool, settings: Any, clock: FakeClock) -> None:
    """SPEC §4: within a batch duplicates collapse, highest priority kept (the earlier line
    kept it, whatever the priorities)."""
    rows = [{"number": "+14155550301", "number2": "+14155550302", "priority": 1},
            {"number": "+14155550301", "number2": "+14155550303", "priority": 9},
            {"number": "+14155550304", "number2": "+14155550305", "priority": 2},
            {"number": "+14155550304", "number2": "+14155550306", "priority": 2}]
    status, out = await submit(pool, settings, clock, Submission(target="sales", rows=rows))
    assert status == 202 and out["accepted"] == 4
    assert out["rejected"] == [
        {"index": 0, "field": "number", "reason": "number: duplicate of line 1 in this batch"},
        {"index": 3, "field": "number", "reason": "number: duplicate of line 2 in this batch"}]  # a tie
    async with pool.acquire() as conn:
        calls = {r["line"]: r for r in await conn.fetch("SELECT line, e164, numbers FROM calls")}
    assert calls[1]["numbers"] == ["+14155550301", "+14155550303"]
    assert calls[0]["e164"] == "+14155550302" and calls[0]["numbers"] is None
    assert calls[2]["numbers"] == ["+14155550304", "+14155550305"]
