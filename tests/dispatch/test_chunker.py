"""Request bodies, field by field, against the vendor pages."""

from __future__ import annotations

import csv
import io

import asyncpg
import pytest

from dialer.config import Target
from dialer.dispatch import chunker
from dialer.dispatch.chunker import Row

ROWS = [
    Row(11, "+14155550100", 5, ["alice"], {"first_name": "Ann", "company": "Acme"}),
    Row(12, "+14155550101", 1, None, {"company": "Globex"}),
]


def test_queue_append_maps_every_parameter() -> None:
    t = Target(kind="queue", queue_id="42", agent_mapping="global", agents=["alice", "bob"],
               leg_direction="customer-first", max_retries=2, retry_interval_min=30, max_dispose_s=45,
               campaign_id="77", ref_field=10)
    slots = {"first_name": 1, "company": 2}
    b = chunker.build("sales", t, ROWS, slots, "https://d/cb/connect/x", "https://d/cb/terminal/x", 9)
    assert b.kind == "queue"
    assert b.body == {
        "agentMapping": "global",
        "agents": ["alice", "bob"],
        "legDirection": "customer-first",
        "maxRetries": 2,
        "retryInterval": 30,
        "maxDispose": 45,
        "customerData": {
            "connectCallbackUrl": "https://d/cb/connect/x",
            "terminalCallbackUrl": "https://d/cb/terminal/x",
            "campaignID": 77,
            "jsonData": [
                {"number": "+14155550100", "priority": 5, "customField1": "Ann", "customField2": "Acme",
                 "customField10": "dl11"},
                {"number": "+14155550101", "priority": 1, "customField2": "Globex", "customField10": "dl12"},
            ],
        },
    }


def test_inline_mapping_sends_agents_assigned_per_row() -> None:
    t = Target(kind="queue", queue_id="1", agent_mapping="inline", agents=["alice"])
    b = chunker.build("s", t, ROWS, {}, "c", "t", 1)
    rows = b.body["customerData"]["jsonData"]
    assert rows[0]["agentsAssigned"] == ["alice"]
    assert rows[1]["agentsAssigned"] == ["alice"]  # a lead naming none: the target's agents
    assert "agents" not in b.body and b.body["agentMapping"] == "inline"


def test_all_agents_mapping_omits_agents_and_optional_fields() -> None:
    t = Target(kind="queue", queue_id="1")
    b = chunker.build("s", t, ROWS[:1], {}, "c", "t", 1)
    assert set(b.body) == {"agentMapping", "customerData"}
    assert b.body["agentMapping"] == "all-agents"


def test_campaign_json_has_name_and_custom_field_names() -> None:
    t = Target(kind="campaign", agent_mapping="global", agents=["alice", "bob"], campaign_name="spring")
    b = chunker.build("sales", t, ROWS, {"first_name": 1, "company": 2}, "c", "t", 33)
    assert b.kind == "campaign"
    assert b.body["name"] == "spring-33"
    assert b.body["customFieldNames"] == {"customField1Name": "first_name", "customField2Name": "company",
                                          "customField10Name": "dialer_ref"}
    assert b.body["agents"] == ["alice", "bob"]
    assert b.body["customerData"]["jsonData"][0]["customField10"] == "dl11"


def test_named_agent_for_a_single_lead_campaign() -> None:
    t = Target(kind="campaign", agent_mapping="all-agents", agents=["alice", "bob"])
    b = chunker.build("sales", t, ROWS[:1], {}, "c", "t", 1, named_agent="bob")
    assert b.body["agents"] == ["bob"] and b.body["agentMapping"] == "global"


def test_campaign_sheet_is_form_data_with_a_csv() -> None:
    t = Target(kind="campaign", upload="sheet", agent_mapping="global", agents=["alice"])
    b = chunker.build("sales", t, ROWS, {"first_name": 1, "company": 2}, "c", "t", 5)
    assert b.kind == "campaign_sheet" and b.sheet is not None
    assert b.body["campaign-name"] == "sales-5" and b.body["agents"] == "alice"
    rows = list(csv.DictReader(io.StringIO(b.sheet.decode())))
    assert rows[0] == {"number": "+14155550100", "priority": "5", "customField1": "Ann",
                       "customField2": "Acme", "customField10": "dl11"}
    assert rows[1]["customField1"] == ""


def test_slots_are_stable_and_skip_the_ref_field() -> None:
    first = chunker.assign_slots({}, ["a", "b"], ref_field=2)
    assert first == {"a": 1, "b": 3}
    more = chunker.assign_slots(first, ["c", "a"], ref_field=2)
    assert more == {"c": 4}


def test_refs_round_trip() -> None:
    assert chunker.parse_ref(chunker.call_ref(123)) == 123
    assert chunker.parse_ref("dlx") is None and chunker.parse_ref(5) is None


def test_inline_chunks_with_and_without_lead_agents_pass_the_sandbox_validator() -> None:
    """Ryng (and the sandbox, which follows its page) refuses an inline row without
    agentsAssigned: a chunk mixing leads with and without agents must still be taken."""
    from dialer.providers.ryng.sandbox_requests import Defaults, parse_json

    t = Target(kind="queue", queue_id="1", agent_mapping="inline", agents=["alice", "bob"])
    d = Defaults(leg_direction="agent-first", max_dispose_s=0, max_retries=0, retry_interval_min=0, max_calls=100)
    for rows in (ROWS, ROWS[1:]):  # mixed, and no lead naming an agent
        b = chunker.build("s", t, rows, {}, "https://d/c", "https://d/t", 1)
        sub = parse_json(b.body, "queue", ["alice", "bob"], d)
        assert all(r.agents_assigned for r in sub.rows)


async def test_fields_past_the_last_slot_are_said_once_not_dropped_silently(
        pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from dialer.dispatch import outbox

    t = Target(kind="queue", queue_id="1")
    names = {f"f{i:02d}" for i in range(60)}
    with caplog.at_level(logging.WARNING, logger="dialer.dispatch.outbox"):
        async with pool.acquire() as conn:
            slots = await outbox.slots_for(conn, "sales", t, names)
            again = await outbox.slots_for(conn, "sales", t, names)
    assert len(slots) == chunker.MAX_SLOTS - 1 and again == slots  # every slot but the reference's
    warned = [r for r in caplog.records if "customField slots are all taken" in r.getMessage()]
    assert len(warned) == 1 and len(warned[0].__dict__["fields"]) == 60 - len(slots)


def test_an_in_file_sheet_lists_each_rows_agents_comma_separated() -> None:
    """The campaign page: agentsAssigned is a "Comma separated list" (the csv module quotes
    the cell, so the commas stay inside it)."""
    t = Target(kind="campaign", upload="sheet", agent_mapping="inline", agents=["alice", "bob", "carol"])
    rows = [Row(11, "+14155550100", 5, ["alice", "bob"], {}), Row(12, "+14155550101", 1, None, {})]
    b = chunker.build("sales", t, rows, {}, "c", "t", 5)
    assert b.sheet is not None and b.body["agents"] == "in-file"
    got = list(csv.DictReader(io.StringIO(b.sheet.decode())))
    assert [r["agentsAssigned"] for r in got] == ["alice,bob", "alice,bob,carol"]
    assert '"alice,bob"' in b.sheet.decode()
