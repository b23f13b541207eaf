"""End to end through the inbox against the Ryng sandbox: a file of leads with several
numbers is ingested (the report naming each number left out), every usable number is
dialed in turn until the lead is answered or its numbers are used up, and the results
file names the attempts per number."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import asyncpg

from dialer.clock import SystemClock
from dialer.intake import dnc
from dialer.providers.ryng.sandbox import SandboxConfig
from tests.conftest import await_for
from tests.stack import running_stack

TARGET = {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
          "calling_hours": "00:00-24:00", "calls_per_agent": 2, "chunk_size": 10, "max_dispose_s": 0}
FILE = """number,number2,phone3,external_id
+14155550101,+14155550102,+14155550103,a
+14155550111,12345,,b
+14155550121,+14155550199,,c
+14155550131,,,d
"""


async def test_a_multi_number_file_through_the_inbox(pool: asyncpg.Pool, make_settings: Any) -> None:
    sandbox = SandboxConfig(time_scale=0.001, seed=3, ring_s=(1, 2), talk_s=(5, 10), answer_rate=0,
                            no_answer_rate=1, busy_rate=0, unreachable_rate=0)
    async with running_stack(pool, make_settings, sandbox_config=sandbox, settle_s=0,
                             targets={"sales": TARGET}) as st:
        await dnc.add_numbers(pool, ["+14155550199"], source="api", now=SystemClock().now(),
                              targets=st.settings.targets)
        inbox = st.rt.inbox
        inbox.ensure_dirs()
        (inbox.root / "leads.csv.part").write_text(FILE)
        (inbox.root / "leads.csv.part").rename(inbox.root / "leads.csv")

        async def done() -> list[Path]:
            await inbox.scan_once()
            await st.dispatcher.tick()
            await st.completion.check()
            return list((inbox.root / "processed").rglob("leads.csv.results.csv"))

        results = (await await_for(done, 60, "the batch done with its results file"))[0]
        report = json.loads(results.with_name("leads.csv.report.json").read_text())
        assert report["counts"] == {"rows": 4, "accepted": 4, "invalid": 0, "duplicate": 0, "dnc": 0}
        assert [(r["line"], r["field"], r["outcome"], r["lead"]) for r in report["rejected"]] == [
            (3, "number2", "invalid", "accepted"), (4, "number2", "dnc", "accepted")]
        assert report["rejected"][0]["reason"] == "number2: not a valid phone number for region US"
        rows = {r["external_id"]: r for r in csv.DictReader(results.open())}
        assert rows["a"]["attempts_per_number"] == "+14155550101:1;+14155550102:1;+14155550103:1"
        assert (rows["a"]["attempts"], rows["b"]["attempts"]) == ("3", "1")  # dials, all numbers
        assert (rows["a"]["state"], rows["a"]["number"], rows["a"]["number_reached"]) == (
            "no_answer", "+14155550103", "")
        assert rows["b"]["attempts_per_number"] == "+14155550111:1"
        assert rows["c"]["attempts_per_number"] == "+14155550121:1"
        dials = st.sandbox.submissions_by_ref("customField10")
        assert len(dials) == 6 and set(dials.values()) == {1}  # every usable number once, none twice
        assert "+14155550199" not in str(st.sandbox.dials_by_number())
