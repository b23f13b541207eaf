"""Crash campaign: kill -9 the daemon at random moments of a run and prove nothing is
lost or doubled.

Short variant (always on): 2,000 leads, 2 kills (during ingest, and during the callback
flood while dispatch still runs). Long variants (``DIALER_SLOW=1``): 2,000 leads x 5 kills at random
moments, five runs in a row, each on a fresh database (no stall, nothing doubled, no
callback given up, run after run); and 20,000 leads, 5 kills, PostgreSQL (a dedicated
embedded server) restarted under load, and the sandbox failing ~20% of requests (5xx,
429, timeouts, accepted-then-dropped).

At the end: every input row is in exactly one final state; no number was dialed more
often than its attempts allow (``max_retries = 0``: once per call, twice only for a
call re-queued from ``uncertain`` — SPEC §5's accepted trade-off, counted and
printed); no terminal callback was given up by the sandbox, and the calls ended in
the database are exactly the calls the sandbox ended. The daemon never exits on its own
between kills, and its log holds no traceback but those of the database being away.

The moments come from ``random.Random(seed)``; the seed is printed on failure and
can be replayed with ``DIALER_FAULT_SEED``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dialer.dispatch.chunker import parse_ref
from dialer.store.embedded import EmbeddedPostgres
from tests.conftest import DaemonProcess, fresh_database
from tests.faults.harness import (
    DB_DOWN_ERRORS,
    INTAKE,
    SLOW,
    TERMINAL,
    SandboxConfig,
    SandboxThread,
    call_states,
    crash_summary,
    log_errors,
    number,
    poll,
    short,
    sql,
    sql_value,
    target_toml,
)

SEED = int(os.environ.get("DIALER_FAULT_SEED", "20260105"))
CALLBACK_STATES = ("answered", "no_answer", "busy", "unreachable")


@dataclass
class Plan:
    leads: int
    kills: list[str]  # phases, in order: ingest | dispatch | flood | random (dispatch or flood)
    pg_restart: bool = False
    faults: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 40
    # How long a call whose send outcome is unknown waits for a callback to prove it. With
    # provider faults it must outlast the sandbox's callback retries (Ryng's 2-minute window,
    # 12 s here), as production's 30 min outlasts Ryng's: else a re-queued call whose second
    # send is unknown too ends `failed` while its first send's callback is still retrying,
    # and that callback, once through, finds a call already ended.
    uncertain_after_min: float = 0.05
    runs: int = 1  # campaigns in a row, each on a fresh database


SHORT = Plan(leads=2_000, kills=["ingest", "flood"])  # the flood kill lands while dispatch still runs
REPEATED = Plan(leads=2_000, kills=["ingest", "random", "random", "random", "random"], runs=5)
LONG = Plan(leads=20_000, kills=["ingest", "dispatch", "flood", "dispatch", "flood"], pg_restart=True,
            faults={"error_rate": 0.06, "throttle_rate": 0.05, "timeout_rate": 0.04, "timeout_hang_s": 1.0,
                    "accept_then_fail_rate": 0.05, "accept_then_fail_mode": "drop", "retry_after_s": 1},
            timeout_s=900, uncertain_after_min=0.25)


def write_leads(path: Path, rng: random.Random, n: int, dnc: list[str], agents: list[str]) -> int:
    """``n`` valid distinct leads plus invalid rows, in-file duplicates and DNC numbers,
    shuffled. Returns the number of data rows."""
    # each lead names its agent (inline mapping): the sandbox starts its round-robin afresh
    # with every request, so small refill appends would otherwise all queue on the first agent
    rows = [f"{number(i)},{rng.randint(0, 5)},L{i},{rng.choice(agents)}" for i in range(n)]
    rows += [f"555-{i:02d},1,bad{i},{agents[0]}" for i in range(n // 50)]  # invalid
    rows += [f"{number(rng.randrange(n))},0,dup{i},{agents[0]}" for i in range(n // 50)]  # duplicates in the file
    rows += [f"{d},0,dnc{i},{agents[0]}" for i, d in enumerate(dnc)]
    rng.shuffle(rows)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("number,priority,external_id,agents\n" + "\n".join(rows) + "\n")
    tmp.rename(path)  # renamed in: taken at once
    return len(rows)


def alive(d: DaemonProcess, when: str) -> None:
    """The daemon must not have exited on its own (only our kills end it)."""
    assert d.proc is not None
    if d.proc.poll() is not None:
        raise AssertionError(f"the daemon exited on its own with {d.proc.returncode} {when}\n"
                             + crash_summary(d.log))


def run_campaign(plan: Plan, seed: int, tmp_path: Path, daemon_env: dict[str, str], dsn: str,
                 pg: EmbeddedPostgres | None, log: list[str]) -> dict[str, Any]:
    """One campaign; ``tmp_path`` is this run's own directory (inbox, state, daemon log)."""
    rng = random.Random(seed)
    agents = [f"a{i}" for i in range(80)]
    cfg = SandboxConfig(time_scale=0.1, seed=rng.randrange(2**31), ring_s=(0.2, 1), talk_s=(1, 3),
                        default_max_dispose_s=0, agent_pickup_s=0, agents=agents, token="sb-token",
                        default_max_retries=0, **plan.faults)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env = {**daemon_env, "DIALER_DATABASE_URL": dsn, "DIALER_RYNG_TOKEN": "sb-token",
           "DIALER_INBOX_DIR": str(inbox), "DIALER_STATE_DIR": str(tmp_path / "var"), "DIALER_UNCERTAIN_AFTER_MIN": str(plan.uncertain_after_min),
           "DIALER_INSTANCE_STALE_S": "2",
           "DIALER_RYNG_TIMEOUT_S": "5",
           "DIALER_CONFIG": str(target_toml(tmp_path / "d.toml", agents, chunk_size=100, calls_per_agent=3,
                                            max_retries=0, mapping="inline"))}
    t0 = time.monotonic()

    def note(msg: str) -> None:
        log.append(f"{time.monotonic() - t0:7.2f}s {msg}")

    with SandboxThread(cfg) as sb:
        env["DIALER_RYNG_BASE_URL"] = sb.url
        d = DaemonProcess(env, tmp_path)
        try:
            d.start()
            dnc = [number(i, base=7_000_000) for i in range(plan.leads // 100)]
            with d.client() as c:
                assert c.post("/v1/dnc", json={"numbers": dnc}).status_code in (200, 201, 202, 204)
            rows = write_leads(inbox / "leads.csv", rng, plan.leads, dnc, agents)
            note(f"dropped leads.csv with {rows} rows")
            kills = list(plan.kills)
            pg_at = rng.uniform(0.3, 0.7) if plan.pg_restart else None

            def detail() -> str:
                st = sb.stats()
                return (f"sandbox calls {st['calls']}, callbacks {st['callbacks']}, "
                        f"db {call_states(dsn)}, batches {[dict(b) for b in sql(dsn, 'SELECT state, rows_read FROM batches')]}")

            def ended_at_sandbox() -> int:
                return int(sb.stats()["calls"]["ended"])

            def progress(key: str) -> int:
                st = sb.stats()
                return int(st["calls"]["total"] if key == "dispatch" else st["callbacks"]["terminal"]["delivered"])

            def retrying() -> int:
                """Callbacks that failed (the daemon was down) and are not through yet. The
                sandbox squeezes Ryng's 2-minute retry window into 12 s: killing the daemon
                again before they are through stacks two outages in one window, which no
                daemon could survive, so the next kill waits for them."""
                return sum(int(c["retrying"]) for c in sb.stats()["callbacks"].values())

            while kills:
                phase = kills.pop(0)
                if phase == "random":
                    phase = rng.choice(("dispatch", "flood"))
                if phase == "ingest":
                    time.sleep(rng.uniform(0.05, 0.8))  # a random moment of the ingest
                else:
                    # past the last kill, but short of the end (a small campaign may be far along)
                    hi = 0.8 if phase == "dispatch" else 0.9
                    at = min(max(int(plan.leads * rng.uniform(0.1, hi)), progress(phase) + plan.leads // 20),
                             int(plan.leads * 0.97))
                    what = "calls submitted" if phase == "dispatch" else "terminal callbacks delivered"

                    def reached(at: int = at, phase: str = phase) -> bool:
                        alive(d, f"waiting to kill it during {phase}")
                        return progress(phase) >= at and retrying() == 0

                    poll(reached, plan.timeout_s, f"{at} {what}", every=0.05, detail=detail)
                if pg is not None and pg_at is not None and ended_at_sandbox() >= plan.leads * pg_at:
                    outage = rng.uniform(3, 8)
                    note(f"PostgreSQL stopped for {outage:.1f}s")
                    pg.stop("fast")
                    time.sleep(outage)  # the outage itself
                    pg.start()
                    note("PostgreSQL started")
                    pg_at = None
                alive(d, f"before the kill during {phase}")
                st = sb.stats()
                note(f"kill -9 during {phase}: sandbox submitted {st['calls']['total']}, "
                     f"ended {st['calls']['ended']}, terminal delivered {st['callbacks']['terminal']['delivered']}")
                d.kill9()
                d.start()
                note("restarted")
            if pg is not None and pg_at is not None:  # not reached during the kills: do it now
                poll(lambda: ended_at_sandbox() >= plan.leads * pg_at, plan.timeout_s, "load for the PG restart")
                note("PostgreSQL stopped for 5s")
                pg.stop("fast")
                time.sleep(5)  # the outage itself
                pg.start()
            def ended() -> bool:
                alive(d, "after the kills")
                return not sql_value(dsn, "SELECT count(*) FROM calls WHERE NOT (state = ANY($1::text[]))",
                                     list(TERMINAL + INTAKE))

            poll(ended, plan.timeout_s, "every call ended after the campaign", detail=detail)
            note("every call ended")

            def sandbox_quiet() -> bool:
                s = sb.stats()
                t = s["callbacks"]["terminal"]
                return (s["calls"]["queued"] + s["calls"]["active"] == 0
                        and t["delivered"] + t["given_up"] >= s["calls"]["ended"])

            poll(sandbox_quiet, 60, "sandbox callbacks settled", detail=lambda: sb.stats()["callbacks"])
            alive(d, "at the end")
            stats = sb.stats()
            dials = sb.sandbox.dials_by_number()
            ended = sb.sandbox.calls(state="ended")
            refs = sb.sandbox.submissions_by_ref("customField10")
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
    return {"rows": rows, "dnc": dnc, "stats": stats, "dials": dials, "ended": ended, "refs": refs, "log": log,
            "inbox": inbox, "errors": log_errors(d, allowed_exc=DB_DOWN_ERRORS)}


def _story(dsn: str, ids: list[int], out: dict[str, Any]) -> str:
    """What the database and the sandbox know of these calls: enough to tell a lost callback
    from a call the daemon gave up on while the provider still had it."""
    lines = []
    for cid in ids:
        row = sql(dsn, "SELECT state, outcome, reason, chunk_id, prev_chunks, submitted_at, ended_at "
                       "FROM calls WHERE id = $1", cid)
        events = sql(dsn, "SELECT at, kind, from_state, to_state, applied, payload FROM call_events "
                          "WHERE call_id = $1 ORDER BY id", cid)
        at_sandbox = [c for c in out["ended"] if parse_ref(c.get("customField10")) == cid]
        lines.append(f"call {cid}: {dict(row[0]) if row else None}")
        lines += [f"  {e['at']:%H:%M:%S.%f} {e['kind']} {e['from_state']}->{e['to_state']} "
                  f"applied={e['applied']} {str(e['payload'])[:300]}" for e in events]
        lines += [f"  sandbox: {str(c)[:300]}" for c in at_sandbox]
    return "\n".join(lines)


def check(plan: Plan, out: dict[str, Any], dsn: str) -> str:
    # ---- every input row accounted for, once, in exactly one final state
    batches = sql(dsn, "SELECT id, source, state, counts FROM batches")
    assert len(batches) == 1, batches
    lines = sql(dsn, "SELECT line, count(*)::int AS n FROM calls WHERE attempt = 1 GROUP BY line HAVING count(*) > 1")
    assert not lines, f"input lines ingested twice: {lines[:10]}"
    assert sql_value(dsn, "SELECT count(*) FROM calls WHERE attempt = 1") == out["rows"]
    states = call_states(dsn)
    stray = {s: n for s, n in states.items() if s not in TERMINAL + INTAKE}
    assert not stray, f"calls not in a final state: {stray}"
    assert states.get("invalid", 0) == plan.leads // 50
    assert states.get("duplicate", 0) == plan.leads // 50
    assert states.get("dnc", 0) == len(out["dnc"])
    reports = list((out["inbox"] / "processed").rglob("*.report.json"))
    assert len(reports) == 1, reports
    report = json.loads(reports[0].read_text())
    assert str(report.get("batch_id")) == str(batches[0]["id"]), report.get("batch_id")
    # ---- no number dialed more often than its attempts allow
    calls = sql(dsn, "SELECT c.id, c.e164, c.state, c.outcome, "
                     "EXISTS (SELECT 1 FROM call_events e WHERE e.call_id = c.id AND e.kind = 'requeued') AS rq "
                     "FROM calls c WHERE c.state <> ALL($1::text[])", list(INTAKE))
    allowed: Counter[str] = Counter()
    requeued = set()
    for c in calls:
        allowed[c["e164"]] += 2 if c["rq"] else 1  # max_retries = 0: one dial per submission
        if c["rq"]:
            requeued.add(c["id"])
    over = {n: (k, allowed[n]) for n, k in out["dials"].items() if k > allowed[n]}
    assert not over, f"dialed more than allowed (dials, allowed): {list(over.items())[:10]}"
    twice_refs = {parse_ref(r) for r, k in out["refs"].items() if k > 1}
    assert twice_refs <= requeued, f"submitted twice without a re-queue: {sorted(twice_refs - requeued)[:10]}"
    double_dialed = sum(1 for k in out["dials"].values() if k > 1)
    # ---- no callback lost
    term = out["stats"]["callbacks"]["terminal"]
    assert term["given_up"] == 0, out["stats"]["callbacks"]
    ended_ids = {parse_ref(c.get("customField10")) for c in out["ended"]}
    db_ended = {c["id"] for c in calls if c["state"] in CALLBACK_STATES}
    assert db_ended == ended_ids, (f"ended in DB not at sandbox: {sorted(db_ended - ended_ids)[:10]}; "
                                   f"ended at sandbox not in DB: {sorted(ended_ids - db_ended)[:10]}\n"
                                   + _story(dsn, sorted(db_ended ^ ended_ids)[:5], out))
    by_id = {c["id"]: c for c in calls}
    wrong = [(c.get("customField10"), c["disposition"], by_id[parse_ref(c.get("customField10"))]["state"])
             for c in out["ended"]
             if parse_ref(c.get("customField10")) not in requeued
             and by_id[parse_ref(c.get("customField10"))]["state"] != str(c["disposition"]).lower()]
    assert not wrong, f"DB state differs from the sandbox disposition: {wrong[:10]}"
    assert not out["errors"], "unexpected errors in the daemon log:\n" + short(out["errors"])
    return (f"{len(calls)} calls dialed, states {states}; requeued from uncertain: {len(requeued)}, "
            f"numbers dialed twice (accepted trade-off): {double_dialed}; sandbox faults {out['stats']['faults']}; "
            f"terminal callbacks {dict((k, v) for k, v in term.items() if k != 'statuses')}")


def _campaign(plan: Plan, tmp_path: Path, daemon_env: dict[str, str], dsn: str,
              pg: EmbeddedPostgres | None = None, seed: int = SEED, run: str = "") -> None:
    out: dict[str, Any] = {}
    log: list[str] = []
    try:
        out = run_campaign(plan, seed, tmp_path, daemon_env, dsn, pg, log)
        summary = check(plan, out, dsn)
    except BaseException as e:
        steps = "\n".join(log)
        raise AssertionError(f"crash campaign {run}failed with seed {seed} (replay: DIALER_FAULT_SEED={seed})\n"
                             f"{steps}\n{type(e).__name__}: {e}") from e
    print(f"{run}seed {seed}\n" + "\n".join(out["log"]) + "\n" + summary)


def _runs(plan: Plan, tmp_path: Path, daemon_env: dict[str, str], pg_server: str) -> None:
    """``plan.runs`` campaigns in a row, each with its own database, directory and seed."""
    for i in range(plan.runs):
        root = tmp_path / f"run{i + 1}"
        root.mkdir()
        for dsn in fresh_database(pg_server):
            _campaign(plan, root, daemon_env, dsn, seed=SEED + i, run=f"run {i + 1}/{plan.runs}: ")


def test_crash_campaign_short(daemon_env: dict[str, str], tmp_path: Path, db_url: str) -> None:
    _campaign(SHORT, tmp_path, daemon_env, db_url)


@pytest.mark.skipif(not SLOW, reason="long variant: DIALER_SLOW=1")
@pytest.mark.timeout(1800)
def test_crash_campaign_repeated(daemon_env: dict[str, str], tmp_path: Path, pg_server: str,
                                 template_dsn: str) -> None:
    _runs(REPEATED, tmp_path, daemon_env, pg_server)


@pytest.mark.skipif(not SLOW, reason="long variant: DIALER_SLOW=1")
@pytest.mark.timeout(1800)
def test_crash_campaign_long(daemon_env: dict[str, str], tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", fsync=False)
    dsn = pg.start()
    try:
        _campaign(LONG, tmp_path, daemon_env, dsn, pg)
    finally:
        pg.destroy()
