"""End to end through the inbox: a real ``dialer run`` whose Ryng sandbox ends some answered
calls CALLBACK with a callbackAt; each becomes a callback dialed by the agent who took it,
and the batch still completes with its results file."""

from __future__ import annotations

import asyncio
import csv
from datetime import datetime
from pathlib import Path

import asyncpg

from tests.conftest import DaemonProcess, wait_for

CONFIG = """
[targets.sales]
queue_id = "42"
agent_mapping = "global"
agents = ["alice", "bob", "carol"]
calling_hours = "00:00-24:00"
max_dispose_s = 0
calls_per_agent = 2

[sandbox]
time_scale = 0.01
answer_rate = 1
no_answer_rate = 0
busy_rate = 0
unreachable_rate = 0
callback_rate = 0.5
callback_after_s = 30
"""


def _fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_sandbox_callbacks_through_the_inbox_are_dialed_by_their_agent(
        daemon: DaemonProcess, daemon_env: dict[str, str], tmp_path: Path, db_url: str) -> None:
    config = tmp_path / "dialer.toml"
    config.write_text(CONFIG)
    daemon.env["DIALER_CONFIG"] = str(config)
    daemon.start()
    inbox = Path(daemon.env["DIALER_STATE_DIR"]) / "inbox"
    rows = "\n".join(f"+1415555{i:04d},lead-{i}" for i in range(12))
    (inbox / "leads.csv").write_text("number,external_id\n" + rows + "\n")
    day = datetime.now().astimezone().date().isoformat()
    results = inbox / "processed" / day / "leads.csv.results.csv"
    wait_for(results.exists, 60, "the results file (every call ended, callbacks included)")
    with results.open() as f:
        out = list(csv.DictReader(f))
    assert len(out) == 12 and {r["state"] for r in out} == {"answered"}
    callbacks = _fetch(db_url, "SELECT k.owner, k.source, c.agent, c.state, c.reason, "
                               "(SELECT request->'body'->'agents' FROM chunks WHERE id = c.chunk_id) AS sent_to "
                               "FROM callbacks k JOIN calls c ON c.id = k.call_id")
    assert callbacks, "the sandbox asked for no callback (rate 0.5 over 12 answered calls)"
    for cb in callbacks:
        assert cb["source"] == "disposition" and cb["reason"] == "callback" and cb["state"] == "answered"
        assert cb["owner"] in ("alice", "bob", "carol")
        assert cb["sent_to"] == f'["{cb["owner"]}"]' and cb["agent"] == cb["owner"]
    assert daemon.stop() == 0
