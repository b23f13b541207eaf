"""PostgreSQL failover under load: the primary dies, the synchronous standby is promoted,
and the daemon carries on by itself, losing and doubling nothing.

A primary and a synchronous standby (``tests/faults/replication.py``) on loopback ports;
one real ``python -m dialer run`` given both hosts in one DSN with
``target_session_attrs=read-write``; a lead file dialed against the Ryng sandbox, which
streams connect and terminal callbacks back. Mid-stream the primary is stopped in
``immediate`` mode, held down for a while, and the standby promoted.

What must hold: the daemon kept its pid and answered every callback (spooling them while
no primary answered); every call the sandbox ended is ended in the database, and the
sandbox gave up no callback; no number was dialed twice and no call went ``uncertain``.

Short variant (always on): 600 leads, one failover with a 2 s outage. Long variant
(``DIALER_SLOW=1``): 5,000 leads, three failovers back and forth (the old primary is
rebuilt as the new standby after each), 6 s outages, and a sandbox that throttles a
few sends (429).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from dialer.config import load_settings
from dialer.dispatch.chunker import parse_ref
from dialer.lifecycle.spool import QUARANTINE
from dialer.store import migrate
from dialer.store.database import create_pool
from tests.conftest import DaemonProcess
from tests.faults.harness import (
    SLOW,
    SandboxConfig,
    SandboxThread,
    all_ended,
    call_states,
    log_errors,
    number,
    poll,
    sql,
    sql_value,
    target_toml,
)
from tests.faults.replication import Pair
from tests.lifecycle.seeded import ended, endpoint, queued_calls, service, states

ENDED_BY_CALLBACK = ("answered", "no_answer", "busy", "unreachable")


@dataclass
class Plan:
    leads: int
    agents: int
    failovers: int
    outage_s: float  # how long no primary answers (held, not waited for)
    faults: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 60


SHORT = Plan(leads=600, agents=50, failovers=1, outage_s=2)
LONG = Plan(leads=5_000, agents=50, failovers=3, outage_s=6, timeout_s=600,
            # 429s only: a 5xx may have been taken, so its calls rightly wait as uncertain
            faults={"throttle_rate": 0.05, "retry_after_s": 1})


# asyncpg's pool logs each failed attempt to reopen its minimum connections as a warning
# with a traceback, once a second while no primary answers: expected, and not ours
POOL_FLOOR = '"level":"warning","logger":"asyncpg.pool"'


def metric(d: DaemonProcess, name: str, **labels: str) -> float:
    """The daemon's /metrics: the sum of ``name`` over the series carrying ``labels``."""
    total = 0.0
    for line in httpx.get(d.url + "/metrics", timeout=10).text.splitlines():
        head, _, value = line.rpartition(" ")
        series, _, rest = head.partition("{")
        if series == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


def run(plan: Plan, tmp_path: Path, daemon_env: dict[str, str]) -> str:
    rng = random.Random(20260118)
    agents = [f"a{i}" for i in range(plan.agents)]
    # calls last 0.6-2 s and each agent has three queued: callbacks keep arriving all
    # through an outage, while no new call is sent. 50 agents make ~80 callbacks/s, under
    # what the spool replays per second here, so the backlog of an outage drains mid-stream
    # (above it, every callback queues behind the spool until the stream slows down)
    cfg = SandboxConfig(time_scale=0.1, seed=rng.randrange(2**31), ring_s=(1, 5), talk_s=(5, 15),
                        default_max_dispose_s=0, agent_pickup_s=0, agents=agents, token="sb-token",
                        default_max_retries=0, **plan.faults)
    pair = Pair(tmp_path / "pg")
    notes: list[str] = []
    t0 = time.monotonic()

    def note(msg: str) -> None:
        notes.append(f"{time.monotonic() - t0:7.2f}s {msg}")

    try:
        pair.start()
        note(f"primary :{pair.primary.port}, synchronous standby :{pair.standby.port}")
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        with SandboxThread(cfg) as sb:
            env = {**daemon_env, "DIALER_DATABASE_URL": pair.dsn(), "DIALER_RYNG_TOKEN": "sb-token",
                   "DIALER_RYNG_BASE_URL": sb.url, "DIALER_INBOX_DIR": str(inbox), "DIALER_RYNG_TIMEOUT_S": "5",
                   "DIALER_CONFIG": str(target_toml(tmp_path / "d.toml", agents, chunk_size=50, calls_per_agent=3,
                                                    max_retries=0, mapping="inline"))}
            d = DaemonProcess(env, tmp_path)
            try:
                d.start()
                assert d.proc is not None
                pid = d.proc.pid
                rows = [f"{number(i)},{rng.randint(0, 5)},L{i},{rng.choice(agents)}" for i in range(plan.leads)]
                part = inbox / "leads.csv.part"
                part.write_text("number,priority,external_id,agents\n" + "\n".join(rows) + "\n")
                part.rename(inbox / "leads.csv")

                def db() -> str:
                    return pair.primary.uri

                def detail() -> str:
                    st = sb.stats()
                    return f"sandbox calls {st['calls']}, callbacks {st['callbacks']}, db {call_states(db())}"

                for n in range(plan.failovers):
                    at = plan.leads * (n + 1) // (plan.failovers + 2)
                    poll(lambda at=at: sb.stats()["callbacks"]["terminal"]["delivered"] >= at, plan.timeout_s,
                         f"{at} terminal callbacks delivered", every=0.1, detail=detail)
                    spooled_before = metric(d, "dialer_callbacks_total", result="spooled")
                    st = sb.stats()
                    note(f"failover {n + 1}: stopping the primary :{pair.primary.port} (immediate); sandbox "
                         f"active {st['calls']['active']}, ended {st['calls']['ended']}")
                    pair.stop_primary()
                    time.sleep(plan.outage_s)  # the outage itself
                    before_promote = time.monotonic()
                    pair.promote_standby()
                    promoted = time.monotonic()
                    note(f"failover {n + 1}: promoted :{pair.primary.port} in {promoted - before_promote:.2f} s")
                    poll(lambda before=spooled_before: metric(d, "dialer_spool_depth") == 0
                         and metric(d, "dialer_callbacks_total", result="spooled") > before,
                         plan.timeout_s, "callbacks spooled during the outage, then replayed", every=0.05)
                    spooled = metric(d, "dialer_callbacks_total", result="spooled") - spooled_before
                    note(f"failover {n + 1}: {spooled:.0f} callbacks spooled (the outage and its backlog), all replayed "
                         f"{time.monotonic() - promoted:.2f} s after the promotion")
                    if n + 1 < plan.failovers:
                        pair.rebuild_standby()
                        note(f"failover {n + 1}: old primary rebuilt as the synchronous standby "
                             f":{pair.standby.port}")

                def settled() -> bool:
                    # an uncertain call would wait uncertain_after_min (30): fail now, saying so
                    assert not sql_value(db(), "SELECT count(*) FROM calls WHERE state = 'uncertain'"), detail()
                    return all_ended(db())

                poll(settled, plan.timeout_s, "every call ended after the failover", detail=detail)
                note("every call ended")

                def sandbox_quiet() -> bool:
                    s = sb.stats()
                    t = s["callbacks"]["terminal"]
                    return (s["calls"]["queued"] + s["calls"]["active"] == 0
                            and t["delivered"] + t["given_up"] >= s["calls"]["ended"])

                poll(sandbox_quiet, 60, "sandbox callbacks settled", detail=lambda: sb.stats()["callbacks"])
                # ---- the same process throughout, reconnected by itself
                assert d.proc.poll() is None, "the daemon exited"
                assert d.proc.pid == pid
                assert httpx.get(d.url + "/readyz", timeout=10).status_code == 200
                stats = sb.stats()
                dials = sb.sandbox.dials_by_number()
                ended_calls = sb.sandbox.calls(state="ended")
                refs = sb.sandbox.submissions_by_ref("customField10")
                errors = log_errors(d, allowed=(POOL_FLOOR,))
            finally:
                if d.proc is not None and d.proc.poll() is None:
                    d.stop()
        return check(plan, db(), stats, dials, ended_calls, refs, errors, notes)
    except BaseException as e:
        raise AssertionError("\n".join(notes) + f"\n{type(e).__name__}: {e}") from e
    finally:
        pair.destroy()


def check(plan: Plan, dsn: str, stats: dict[str, Any], dials: dict[str, int], ended_calls: list[dict[str, Any]],
          refs: dict[str, int], errors: list[str], notes: list[str]) -> str:
    assert sql_value(dsn, "SELECT count(*) FROM calls WHERE attempt = 1") == plan.leads
    states = call_states(dsn)
    assert set(states) <= set(ENDED_BY_CALLBACK), f"calls not ended by a callback: {states}"
    # ---- no call dialed twice: once per number at the sandbox, one submission per reference
    twice = {n: k for n, k in dials.items() if k > 1}
    assert not twice, f"numbers dialed twice: {list(twice.items())[:10]}"
    assert len(dials) == plan.leads
    assert not {r: k for r, k in refs.items() if k > 1}
    assert not sql_value(dsn, "SELECT count(*) FROM call_events WHERE kind IN ('uncertain', 'requeued')")
    # ---- no acknowledged callback lost: the sandbox gave none up, and what it ended is ended here
    term = stats["callbacks"]["terminal"]
    assert term["given_up"] == 0, stats["callbacks"]
    at_sandbox = {parse_ref(c.get("customField10")): str(c["disposition"]).lower() for c in ended_calls}
    in_db = {r["id"]: r["state"] for r in sql(dsn, "SELECT id, state FROM calls")}
    assert in_db == at_sandbox, (f"ended at the sandbox, not in the DB: {sorted(set(at_sandbox) - set(in_db))[:10]}; "
                                 f"different: {[(i, s, in_db.get(i)) for i, s in at_sandbox.items() if in_db.get(i) != s][:10]}")
    # ---- the outage was a warning, never an error
    assert not errors, "\n".join(errors[:20])
    return "\n".join(notes) + (f"\n{plan.leads} calls, {states}; terminal callbacks "
                               f"{ {k: v for k, v in term.items() if k != 'statuses'} }; faults {stats['faults']}")


def test_failover_to_the_synchronous_standby_loses_nothing(daemon_env: dict[str, str], tmp_path: Path) -> None:
    print(run(SHORT, tmp_path, daemon_env))


@pytest.mark.skipif(not SLOW, reason="long variant: DIALER_SLOW=1")
@pytest.mark.timeout(1200)
def test_failover_back_and_forth_under_faults(daemon_env: dict[str, str], tmp_path: Path) -> None:
    print(run(LONG, tmp_path, daemon_env))


async def test_a_standby_that_takes_no_writes_is_away_not_a_bad_callback(tmp_path: Path) -> None:
    """A DSN that lands on the standby (no ``target_session_attrs``: a DNS name or a pooler
    still pointing there mid-failover) reaches a server that refuses writes
    (``ReadOnlySQLTransactionError``). That is the database being away: the callback is
    spooled and answered 200, replay waits instead of quarantining it, and once the standby
    is promoted the same pool applies it."""
    pair = Pair(tmp_path / "pg")
    try:
        await asyncio.to_thread(pair.start)
        settings = load_settings(None, environ={"DIALER_STATE_DIR": str(tmp_path), "DIALER_API_TOKENS": "t",
                                                "DIALER_CALLBACK_SECRET": "s3cret-s3cret"})
        primary = await create_pool(pair.primary.uri, min_size=1, max_size=2)
        async with primary.acquire() as conn:
            await migrate.migrate(conn)
        a, b = await queued_calls(primary, 2)  # committed on the standby too: it is synchronous
        await asyncio.to_thread(pair.wait_replayed)  # and applied there, so reads see the schema
        await primary.close()
        on_standby = await create_pool(pair.standby.uri, min_size=1, max_size=2)
        try:
            svc = service(on_standby, settings, tmp_path / "spool")
            async with endpoint(svc, settings) as ep:
                r = await ep.post(ended(a))
                assert r.status_code == 200, r.text
                assert ep.answered == ["spooled"]
                with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                    await svc.replay_once()  # still read-only: replay stops, keeps the item
                assert svc.spool.depth == 1
                assert not (svc.spool.dir / QUARANTINE).exists()
                await asyncio.to_thread(pair.promote_standby)
                assert await svc.replay_once() == 1
                r = await ep.post(ended(b))  # and the next one goes straight in
                assert ep.answered == ["spooled", "stored"]
            assert await states(on_standby) == {a: "answered", b: "answered"}
            svc.spool.close()
        finally:
            await on_standby.close()
    finally:
        await asyncio.to_thread(pair.destroy)
