"""It stays up (SPEC §8): PostgreSQL stopped under a real daemon process.

* PostgreSQL (a dedicated embedded server) stopped for 15 s while calls are dispatched
  and the sandbox streams callbacks: same pid throughout, ``/healthz`` 200 throughout,
  ``/readyz`` 503 while the database is away and 200 after, every callback the sandbox
  sent acknowledged (from the spool), and at the end exact counts: every lead in one
  final state, as many calls ended in the database as at the sandbox, no number dialed
  twice.
* A poison callback (form-encoded, with ``%00``) spooled during an outage among normal
  ones: after the database returns the spool drains to depth 0, the normal ones are
  applied, the daemon keeps its pid.

Long variant (``DIALER_SLOW=1``): more leads and a 60 s outage.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from dialer.dispatch.chunker import call_ref, parse_ref
from tests.conftest import DaemonProcess
from tests.faults.harness import (
    DB_DOWN_ERRORS,
    INTAKE,
    SLOW,
    TERMINAL,
    SandboxConfig,
    SandboxThread,
    Watched,
    call_states,
    dedicated_postgres,
    log_errors,
    metric,
    number,
    poll,
    sandbox_env,
    short,
    sql,
    status,
    target_toml,
)

CALLBACK_STATES = ("answered", "no_answer", "busy", "unreachable")
OUTAGE_S = 60.0 if SLOW else 15.0
LEADS = 1_500 if SLOW else 300


def _sandbox_quiet(sb: SandboxThread) -> bool:
    s = sb.stats()
    t, c = s["callbacks"]["terminal"], s["callbacks"]["connect"]
    return (s["calls"]["queued"] + s["calls"]["active"] == 0
            and t["delivered"] + t["given_up"] >= s["calls"]["ended"]
            and c["sent"] - c["retried"] <= c["delivered"] + c["given_up"])


@pytest.mark.timeout(600)
def test_postgres_stopped_under_dispatch_and_callbacks(daemon_env: dict[str, str], tmp_path: Path) -> None:
    agents = [f"a{i}" for i in range(20)]
    # ~1.5 s a call: the 80 calls in flight when the database stops keep the callback
    # stream going well into the outage
    cfg = SandboxConfig(time_scale=0.03, seed=11, ring_s=(1, 4), talk_s=(40, 120), agent_pickup_s=0,
                        default_max_dispose_s=0, agents=agents, token="sb-token", default_max_retries=0)
    with dedicated_postgres(tmp_path) as (pg, dsn), SandboxThread(cfg) as sb:
        conf = target_toml(tmp_path / "d.toml", agents, chunk_size=40, calls_per_agent=4)
        d = DaemonProcess(sandbox_env(daemon_env, sb, conf, DIALER_DATABASE_URL=dsn), tmp_path)
        try:
            d.start()
            w = Watched(d)
            health: Counter[int | None] = Counter()
            with d.client() as c:
                r = c.post("/v1/batches", json={"leads": [{"number": number(i)} for i in range(LEADS)]})
                assert r.status_code == 202, r.text
                assert r.json()["accepted"] == LEADS

            def alive_then(cond: Any) -> Any:
                w.check()
                health[status(d.url + "/healthz")] += 1
                return cond()

            poll(lambda: alive_then(lambda: sb.stats()["calls"]["ended"] >= LEADS // 5), 60,
                 "calls flowing before the outage", every=0.1)
            before = sb.stats()["callbacks"]["terminal"]["delivered"]
            pg.stop("fast")
            stopped = time.monotonic()
            ready_down: Counter[int | None] = Counter()
            while time.monotonic() - stopped < OUTAGE_S:  # the outage itself: a fixed hold
                w.check(f"{time.monotonic() - stopped:.1f}s into the database outage")
                health[status(d.url + "/healthz")] += 1
                ready_down[status(d.url + "/readyz")] += 1
                time.sleep(0.25)
            during = sb.stats()["callbacks"]["terminal"]["delivered"] - before
            pg.start()
            poll(lambda: alive_then(lambda: status(d.url + "/readyz") == 200), 60,
                 "/readyz 200 after the database returned", every=0.2)

            def every_call_ended() -> bool:
                return not sql(dsn, "SELECT 1 FROM calls WHERE NOT (state = ANY($1::text[])) LIMIT 1",
                               list(TERMINAL + INTAKE))

            poll(lambda: alive_then(every_call_ended), 180, "every call ended after the outage",
                 detail=lambda: (call_states(dsn), sb.stats()["calls"]))
            poll(lambda: alive_then(lambda: _sandbox_quiet(sb)), 60, "sandbox callbacks settled",
                 detail=lambda: sb.stats()["callbacks"])
            w.check("at the end")
            stats = sb.stats()
            dials = sb.sandbox.dials_by_number()
            refs = sb.sandbox.submissions_by_ref("customField10")
            ended = sb.sandbox.calls(state="ended")
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
        calls = sql(dsn, "SELECT id, e164, state, attempt FROM calls")
    # the process: never gone, healthy throughout, not ready only while the database was away
    assert set(health) == {200}, f"/healthz answers: {dict(health)}"
    assert set(ready_down) == {503}, f"/readyz answers during the outage: {dict(ready_down)}"
    assert during > 0, "no terminal callback arrived during the outage: the stream did not cover it"
    # every callback the sandbox sent was acknowledged, in the end
    cbs = stats["callbacks"]
    assert cbs["terminal"]["given_up"] == 0 and cbs["connect"]["given_up"] == 0, cbs
    # exact counts: every lead once, in one final state; the DB ended what the sandbox ended
    assert len(calls) == LEADS and all(c["attempt"] == 1 for c in calls), Counter(c["attempt"] for c in calls)
    states = Counter(c["state"] for c in calls)
    assert set(states) <= set(CALLBACK_STATES), f"calls not ended by their callback: {dict(states)}"
    assert stats["calls"]["ended"] == stats["calls"]["total"] == LEADS, stats["calls"]
    ended_ids = {parse_ref(c.get("customField10")) for c in ended}
    assert ended_ids == {c["id"] for c in calls}
    by_id = {c["id"]: c["state"] for c in calls}
    wrong = [(c["callId"], c["disposition"], by_id[parse_ref(c.get("customField10"))]) for c in ended
             if by_id[parse_ref(c.get("customField10"))] != str(c["disposition"]).lower()]
    assert not wrong, f"DB state differs from the sandbox disposition: {wrong[:10]}"
    # max_retries = 0: one dial per number, one submission per call
    assert len(dials) == LEADS and set(dials.values()) == {1}, {n: k for n, k in dials.items() if k > 1}
    assert set(refs.values()) == {1}, {r: k for r, k in refs.items() if k > 1}
    errors = log_errors(d, allowed_exc=DB_DOWN_ERRORS)
    assert not errors, "unexpected errors in the daemon log:\n" + short(errors)
    print(f"outage {OUTAGE_S:g}s: {during} terminal callbacks acknowledged while the database was away; "
          f"/readyz during it {dict(ready_down)}; states {dict(states)}; callbacks {cbs['terminal']}")


def _quiet_sandbox(agents: list[str]) -> SandboxConfig:
    """Every call answered, talking for ~3 h: the sandbox sends no callback during the test."""
    return SandboxConfig(time_scale=1, seed=5, ring_s=(0, 0), talk_s=(10_000, 10_000), agent_pickup_s=0,
                         default_max_dispose_s=0, agents=agents, token="sb-token", answer_rate=1,
                         no_answer_rate=0, busy_rate=0, unreachable_rate=0)


def _calls_at_the_sandbox(d: DaemonProcess, dsn: str, n: int) -> list[Any]:
    """``n`` leads posted and sent at once (no timed dispatch tick needed): their rows, each
    with its chunk's token, once the sandbox has assigned every one."""
    with d.client() as c:
        r = c.post("/v1/batches", json={"leads": [{"number": number(i)} for i in range(n)]})
        assert r.status_code == 202, r.text
        assert c.post("/v1/targets/sales/resume").status_code == 200  # wakes dispatch now
    poll(lambda: sql(dsn, "SELECT count(*) = $1 AS ok FROM calls WHERE state IN ('assigned', 'connected')",
                     n)[0]["ok"], 30, f"the {n} calls assigned at the sandbox", detail=lambda: call_states(dsn))
    return sql(dsn, "SELECT c.id, c.e164, k.token FROM calls c JOIN chunks k ON k.id = c.chunk_id ORDER BY c.id")


def _terminal(http: httpx.Client, d: DaemonProcess, row: Any, form: str) -> httpx.Response:
    """A form-encoded terminal callback for ``row``, ``form`` before its reference and number."""
    return http.post(f"{d.url}/callbacks/ryng/terminal/{row['token']}",
                     headers={"content-type": "application/x-www-form-urlencoded"},
                     content=f"{form}&customField10={call_ref(row['id'])}&number=%2B{row['e164'][1:]}".encode())


def test_poison_callback_in_the_spool(daemon_env: dict[str, str], tmp_path: Path) -> None:
    """A callback PostgreSQL will never take (a NUL byte in text) must not wedge the spool."""
    agents = [f"a{i}" for i in range(5)]
    with dedicated_postgres(tmp_path) as (pg, dsn), SandboxThread(_quiet_sandbox(agents)) as sb:
        conf = target_toml(tmp_path / "d.toml", agents, chunk_size=10, calls_per_agent=2)
        d = DaemonProcess(sandbox_env(daemon_env, sb, conf, DIALER_DATABASE_URL=dsn,
                                      DIALER_DISPATCH_INTERVAL_S="3600"), tmp_path)
        try:
            d.start()
            w = Watched(d)
            rows = _calls_at_the_sandbox(d, dsn, 5)
            poison, normal = rows[0], rows[1:]
            outcomes = ["NO_ANSWER", "BUSY", "UNREACHABLE", "ANSWERED"]
            pg.stop("fast")
            try:
                with httpx.Client(timeout=10) as http:
                    r = _terminal(http, d, poison, "event=terminated&disposition=ANSWERED&agent=a0%00evil"
                                                   "&customField3=x%00y")
                    assert r.status_code == 200, f"poison callback while the database is down: {r.status_code}"
                    for row, outcome in zip(normal, outcomes, strict=True):
                        r = _terminal(http, d, row, f"event=terminated&disposition={outcome}&agent=a1&attempts=1")
                        assert r.status_code == 200, f"callback while the database is down: {r.status_code}"
                spooled = metric(d, "dialer_spool_depth")
                w.check("with the callbacks spooled")
            finally:
                pg.start()
            assert spooled == 5, f"spool depth with five callbacks spooled: {spooled}"
            poll(lambda: (w.check(), metric(d, "dialer_spool_depth") == 0)[1], 30, "the spool drained",
                 detail=lambda: f"spool depth {metric(d, 'dialer_spool_depth')}, {call_states(dsn)}")
            got = {r["id"]: r["state"] for r in sql(dsn, "SELECT id, state FROM calls")}
            want = {row["id"]: o.lower() for row, o in zip(normal, outcomes, strict=True)}
            assert {i: got[i] for i in want} == want, "the normal callbacks behind the poison were not applied"
            w.check("at the end")
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
    # the poison itself may be logged (it is set aside for a human), nothing else
    errors = log_errors(d, allowed=("spool",), allowed_exc=(*DB_DOWN_ERRORS, "CharacterNotInRepertoireError",
                                                            "UntranslatableCharacterError"))
    assert not errors, "unexpected errors in the daemon log:\n" + short(errors)


def _start_without_ready(d: DaemonProcess) -> None:
    """Start the daemon and wait only for ``/healthz``: its database may not be there."""
    import sys

    from tests.conftest import start_and_wait

    d.proc = start_and_wait([sys.executable, "-m", "dialer", "run"], d.env, d.cwd, d.log,
                            d.url + "/healthz", "daemon")


@pytest.mark.timeout(300)
def test_restarted_while_postgres_is_down_it_waits_and_loses_no_callback(daemon_env: dict[str, str],
                                                                       tmp_path: Path) -> None:
    """The daemon dies during a database outage and systemd starts it again before the
    database is back: it keeps that pid, acknowledges the callbacks of the calls in flight
    from the spool, and applies them once the database returns."""
    agents = [f"a{i}" for i in range(4)]
    with dedicated_postgres(tmp_path) as (pg, dsn), SandboxThread(_quiet_sandbox(agents)) as sb:
        conf = target_toml(tmp_path / "d.toml", agents, chunk_size=10, calls_per_agent=1)
        d = DaemonProcess(sandbox_env(daemon_env, sb, conf, DIALER_DATABASE_URL=dsn,
                                      DIALER_DISPATCH_INTERVAL_S="3600"), tmp_path)
        try:
            d.start()
            rows = _calls_at_the_sandbox(d, dsn, 4)
            d.kill9()
            pg.stop("fast")
            try:
                _start_without_ready(d)
                w = Watched(d)
                ready = httpx.get(d.url + "/readyz", timeout=5)
                assert ready.status_code == 503, ready.text
                assert ready.json()["checks"]["database"].startswith("unreachable"), ready.text
                with d.client() as c:
                    api = c.get("/v1/targets")
                assert api.status_code == 503 and api.headers.get("retry-after"), api.text
                outcomes = ["NO_ANSWER", "BUSY", "UNREACHABLE", "ANSWERED"]
                with httpx.Client(timeout=10) as http:
                    forged = _terminal(http, d, {**rows[0], "token": "forged"}, "event=terminated")
                    assert forged.status_code == 401, forged.text
                    for row, outcome in zip(rows, outcomes, strict=True):
                        r = _terminal(http, d, row, f"event=terminated&disposition={outcome}&agent=a1&attempts=1")
                        assert r.status_code == 200, f"callback before the database was reached: {r.text}"
                # it keeps trying, and keeps its pid, for as long as the database is away
                poll(lambda: (w.check(), d.log.read_text().count("waiting for it") >= 3)[1], 60,
                     "three attempts to reach the database")
                w.check("while the database was away at start-up")
            finally:
                pg.start()
            poll(lambda: (w.check(), status(d.url + "/readyz") == 200)[1], 60, "/readyz 200 once it returned")
            want = {row["id"]: o.lower() for row, o in zip(rows, outcomes, strict=True)}
            poll(lambda: {r["id"]: r["state"] for r in sql(dsn, "SELECT id, state FROM calls")} == want, 30,
                 "the callbacks acknowledged before the database was there applied",
                 detail=lambda: call_states(dsn))
            assert metric(d, "dialer_spool_depth") == 0
            w.check("at the end")
            assert d.stop() == 0
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
    errors = log_errors(d, allowed_exc=DB_DOWN_ERRORS)
    assert not errors, "unexpected errors in the daemon log:\n" + short(errors)


def test_a_database_that_refuses_the_daemon_at_start_up_is_bad_configuration(
        daemon_env: dict[str, str], tmp_path: Path, db_url: str) -> None:
    import subprocess
    import sys

    from tests.conftest import with_database

    # the server answers, but has no such database: exit 2 with the reason, no waiting
    env = {**daemon_env, "DIALER_DATABASE_URL": with_database(db_url, "no_such_database")}
    r = subprocess.run([sys.executable, "-m", "dialer", "run"], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "InvalidCatalogNameError" in r.stdout + r.stderr, r.stdout + r.stderr
    # a DSN the driver cannot use: the same, and the password is not printed
    env["DIALER_DATABASE_URL"] = "postgresql://u:pw-secret-9@127.0.0.1:notaport/db"
    r = subprocess.run([sys.executable, "-m", "dialer", "run"], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "DIALER_DATABASE_URL" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "pw-secret-9" not in r.stdout + r.stderr
