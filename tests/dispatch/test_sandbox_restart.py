"""A restart of the process hosting the Ryng sandbox (in sandbox mode: the daemon itself)
leaves no ghost: the calls it was dialing end with their terminal callback afterwards, as
with a real Ryng that dials on meanwhile, so they free their pacing slot and the target's
next lead goes out."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from starlette.types import Receive, Scope, Send

from dialer.clock import SystemClock
from dialer.lifecycle.states import TERMINAL
from tests.conftest import DaemonProcess, await_for, free_port, wait_for
from tests.stack import RyngSandbox, SandboxConfig, Stack, serve

TARGETS = {
    # one agent, one call at a time: the pacing limit is 1
    "sales": {"queue_id": "42", "agent_mapping": "global", "agents": ["alice"], "calling_hours": "00:00-24:00",
              "calls_per_agent": 1, "chunk_size": 1, "max_dispose_s": 0},
}
LEADS = ["+14155550301", "+14155550302"]


class Swap:
    """The ASGI app on the Ryng port: whichever sandbox is up now."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def _ended(st: Stack) -> bool:
    await st.dispatcher.tick()
    states = await st.states()
    return sum(n for s, n in states.items() if s in TERMINAL) == len(LEADS)


async def test_a_graceful_restart_of_the_sandbox_ends_its_calls_and_the_next_lead_goes_out(
        pool: asyncpg.Pool, make_settings: Any, tmp_path: Path) -> None:
    config = {"agents": ["alice"], "time_scale": 0.01, "seed": 7, "ring_s": (1.0, 1.0), "talk_s": (100.0, 100.0),
              "answer_rate": 1, "no_answer_rate": 0, "busy_rate": 0, "unreachable_rate": 0,
              "state_file": str(tmp_path / "ryng_sandbox.json")}
    app_port, ryng_port = free_port(), free_port()
    settings = make_settings(public_url=f"http://127.0.0.1:{app_port}", ryng_timeout_s=5, targets=TARGETS)
    first = RyngSandbox(SandboxConfig(**config))
    st = Stack(pool, settings, first, f"http://127.0.0.1:{ryng_port}", SystemClock())
    swap = Swap(first.app)
    second: RyngSandbox | None = None
    try:
        async with serve(st.rt.app, app_port), serve(swap, ryng_port):
            await first.start()
            await st.post(LEADS)
            await st.dispatcher.tick()
            await await_for(lambda: first.stats()["calls"]["connected"] == 1, 30, "the first lead on a call")
            await first.stop()  # as the daemon's does on SIGTERM
            await st.dispatcher.tick()
            assert st.dispatcher.paces["sales"].in_flight == 1  # held: the slot is the call's
            second = RyngSandbox(SandboxConfig(**config))  # the restarted process's
            swap.app = second.app
            await second.start()
            await await_for(lambda: _ended(st), 60, "both leads ended")
    finally:
        st.dispatcher.running = False
        await first.stop()
        if second is not None:
            await second.stop()
        await st.close()
    assert await st.states() == {"answered": 2}
    # each number dialed once: the first by the stopped sandbox, the second after the restart
    assert first.dials_by_number() == {LEADS[0]: 1}
    assert second.dials_by_number() == {LEADS[1]: 1}
    ended = [a.call_id for a in st.applied if a.terminal and a.result == "applied"]
    assert len(ended) == len(set(ended)) == 2  # each call ended once


CONFIG = """
[targets.sales]
queue_id = "42"
agent_mapping = "global"
agents = ["alice"]
calling_hours = "00:00-24:00"
max_dispose_s = 0
calls_per_agent = 1

[sandbox]
time_scale = 0.05
answer_rate = 1
no_answer_rate = 0
busy_rate = 0
unreachable_rate = 0
"""


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_a_dialer_run_restarted_in_sandbox_mode_dials_its_file_to_the_end(
        daemon: DaemonProcess, tmp_path: Path, how: str) -> None:
    """A real ``dialer run`` in sandbox mode, stopped while its sandbox is on a call (SIGTERM,
    or kill -9: nothing written at stop, the state file kept while running is enough)."""
    config = tmp_path / "dialer.toml"
    config.write_text(CONFIG)
    daemon.env["DIALER_CONFIG"] = str(config)
    daemon.start()
    state_dir = Path(daemon.env["DIALER_STATE_DIR"])
    state = state_dir / "ryng_sandbox.json"
    (state_dir / "inbox" / "leads.csv").write_text("number,external_id\n" + "".join(
        f"{n},lead-{i}\n" for i, n in enumerate(LEADS)))

    def on_call_in_file() -> bool:
        calls = orjson.loads(state.read_bytes())["calls"] if state.exists() else []
        return [c["number"] for c in calls if c["state"] == "connected"] == LEADS[:1]

    # talks last 1-6 s at this scale: the first lead is still on when the daemon goes
    wait_for(on_call_in_file, 60, "the first lead on a call, in the sandbox's state file")
    if how == "sigterm":
        assert daemon.stop() == 0
    else:
        daemon.kill9()
    daemon.start()
    day = datetime.now().astimezone().date().isoformat()
    results = state_dir / "inbox" / "processed" / day / "leads.csv.results.csv"
    wait_for(results.exists, 60, "the results file (both leads ended)")
    with results.open() as f:
        assert sorted(r["state"] for r in csv.DictReader(f)) == ["answered", "answered"]
    stats = httpx.get(daemon.url + "/_sandbox/ryng/_sandbox/stats", timeout=10).json()
    # the first lead ended by the restarted sandbox, not dialed again; the second dialed once
    assert stats["calls"]["reloaded"] == 1 and stats["dial_attempts"] == 1
    assert daemon.stop() == 0
