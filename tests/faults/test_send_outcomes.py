"""Send outcomes and send-time re-checks (SPEC §5) against a real daemon process.

* The sandbox answers 500/502/504 AFTER queuing the calls, for a while: those answers
  may mean "taken", so no chunk is resent and no number is dialed twice; the calls end
  by their own callbacks (proof of life).
* While recorded chunks wait out a ``Retry-After``, numbers go on the DNC list, a batch
  is cancelled and a target paused: once the throttle lifts none of those rows reaches
  the sandbox, each has an event naming the rule, a chunk left empty is not sent, and
  the paused rows are dialed after ``resume``.

Long variant (``DIALER_SLOW=1``): more leads, the 5xx held longer.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from dialer.dispatch.chunker import parse_ref
from tests.conftest import DaemonProcess
from tests.faults.harness import (
    SLOW,
    TERMINAL,
    SandboxConfig,
    SandboxThread,
    Watched,
    call_states,
    log_errors,
    number,
    poll,
    sandbox_env,
    short,
    sql,
    targets_toml,
)

CALLBACK_STATES = ("answered", "no_answer", "busy", "unreachable")


def _quiet(sb: SandboxThread) -> bool:
    s = sb.stats()
    t = s["callbacks"]["terminal"]
    return s["calls"]["queued"] + s["calls"]["active"] == 0 and t["delivered"] + t["given_up"] >= s["calls"]["ended"]


def test_5xx_after_accepting_never_resends(daemon_env: dict[str, str], tmp_path: Path, db_url: str) -> None:
    # short: three 5xx in a row (under the circuit breaker's five, so no cool-down);
    # long: the fault held 20 s, breaker and all
    leads, faults, hold_s = (600, 1, 20.0) if SLOW else (80, 3, 0.0)
    agents = [f"a{i}" for i in range(10)]
    cfg = SandboxConfig(time_scale=0.05, seed=7, ring_s=(0.5, 2), talk_s=(5, 20), agent_pickup_s=0,
                        default_max_dispose_s=0, agents=agents, token="sb-token", default_max_retries=0,
                        accept_then_fail_rate=1, accept_then_fail_mode="5xx",
                        accept_then_fail_statuses=(500, 502, 504))
    with SandboxThread(cfg) as sb:
        conf = targets_toml(tmp_path / "d.toml", agents, {"sales": {"chunk_size": 10, "calls_per_agent": 2}})
        d = DaemonProcess(sandbox_env(daemon_env, sb, conf), tmp_path)
        try:
            d.start()
            w = Watched(d)
            with d.client() as c:
                r = c.post("/v1/batches", json={"leads": [{"number": number(i)} for i in range(leads)]})
                assert r.status_code == 202, r.text
            poll(lambda: (w.check(), sb.stats()["faults"].get("accept_then_fail", 0) >= faults)[1], 30,
                 f"{faults} chunks queued then answered 5xx", every=0.02)
            t0 = time.monotonic()
            while time.monotonic() - t0 < hold_s:  # the fault held for a while
                w.check("while the sandbox answered 5xx after queuing")
                time.sleep(0.2)
            sb.configure(accept_then_fail_rate=0)

            def ended() -> bool:
                w.check()
                return bool(sql(db_url, "SELECT count(*) = $1 AS ok FROM calls WHERE state = ANY($2::text[])",
                                leads, list(TERMINAL))[0]["ok"]) and _quiet(sb)

            poll(ended, 120, "every call ended", detail=lambda: (call_states(db_url), sb.stats()["calls"]))
            w.check("at the end")
            stats = sb.stats()
            dials = sb.sandbox.dials_by_number()
            refs = sb.sandbox.submissions_by_ref("customField10")
            at_sandbox = {parse_ref(c.get("customField10")): str(c["disposition"]).lower()
                          for c in sb.sandbox.calls(state="ended")}
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
    calls = {r["id"]: r["state"] for r in sql(db_url, "SELECT id, state FROM calls")}
    chunks = sql(db_url, "SELECT id, state, rows FROM chunks ORDER BY id")
    answers = stats["requests"]["queue_append"]
    assert set(answers) <= {"200", "500", "502", "504"}, answers
    assert stats["faults"]["accept_then_fail"] >= 1, stats["faults"]
    # nothing resent: one request per chunk, one submission per call, one dial per number
    doubled = {n: k for n, k in dials.items() if k > 1}
    assert not doubled, f"{len(doubled)} numbers dialed more than once (chunks resent after a 5xx): " \
                        f"{list(doubled.items())[:5]}; sandbox answers {answers}"
    assert set(refs.values()) == {1} and len(refs) == leads, Counter(refs.values())
    assert sum(answers.values()) == len(chunks), f"{sum(answers.values())} requests for {len(chunks)} chunks"
    # every call ended by its own callback, in the state the sandbox reported
    assert at_sandbox == calls, {i: (calls.get(i), at_sandbox.get(i)) for i in set(calls) | set(at_sandbox)
                                 if calls.get(i) != at_sandbox.get(i)}
    assert set(calls.values()) <= set(CALLBACK_STATES), Counter(calls.values())
    errors = log_errors(d)
    assert not errors, "unexpected errors in the daemon log:\n" + short(errors)
    print(f"sandbox answers {answers}, faults {stats['faults']}, chunks {Counter(c['state'] for c in chunks)}")


def _rule_events(c: httpx.Client, call_id: int) -> list[str]:
    """The rules named by a call's events (``payload.rule``), lower-cased."""
    r = c.get(f"/v1/calls/{call_id}")
    assert r.status_code == 200, r.text
    out = []
    for e in r.json()["events"]:
        p: Any = e.get("payload")
        if isinstance(p, dict) and p.get("rule"):
            out.append(str(p["rule"]).lower())
    return out


def test_dnc_cancel_and_pause_during_retry_after(daemon_env: dict[str, str], tmp_path: Path, db_url: str) -> None:
    agents = [f"a{i}" for i in range(10)]
    cfg = SandboxConfig(time_scale=0.05, seed=9, ring_s=(0.5, 2), talk_s=(5, 20), agent_pickup_s=0,
                        default_max_dispose_s=0, agents=agents, token="sb-token", default_max_retries=0,
                        throttle_rate=1, retry_after_s=5)
    per = {"chunk_size": 10, "calls_per_agent": 5}
    with SandboxThread(cfg) as sb:
        conf = targets_toml(tmp_path / "d.toml", agents, {"sales": per, "other": per})
        d = DaemonProcess(sandbox_env(daemon_env, sb, conf), tmp_path)
        try:
            d.start()
            w = Watched(d)
            c = d.client()

            def post(target: str, nums: list[str]) -> str:
                r = c.post("/v1/batches", json={"target": target, "leads": [{"number": n} for n in nums]})
                assert r.status_code == 202, r.text
                bid = str(r.json()["batch_id"])
                # recorded into chunks while the API answers 429: they wait for its Retry-After,
                # which holds every send (not only the refused chunk's)
                poll(lambda: (w.check(), sql(db_url, "SELECT count(*) FILTER (WHERE state = 'submitting') = "
                                                     "count(*) AS ok FROM calls WHERE batch_id = $1::uuid",
                                                 bid)[0]["ok"]
                              and sb.stats()["faults"].get("throttle", 0) >= 1)[1],
                     30, f"{target} batch recorded and throttled", every=0.05, detail=lambda: call_states(db_url))
                return bid

            a_nums = [number(i) for i in range(30)]
            b_nums = [number(i) for i in range(100, 110)]
            c_nums = [number(i) for i in range(200, 210)]
            a = post("sales", a_nums)
            b = post("sales", b_nums)
            post("other", c_nums)
            a_rows = sql(db_url, "SELECT id, e164, chunk_id FROM calls WHERE batch_id = $1::uuid ORDER BY id", a)
            a_chunks = sorted({r["chunk_id"] for r in a_rows})
            assert len(a_chunks) == 3, a_chunks
            # one of A's chunks entirely on the DNC list (left empty), three rows of another
            dnc = [r for r in a_rows if r["chunk_id"] == a_chunks[1]] + \
                  [r for r in a_rows if r["chunk_id"] == a_chunks[0]][:3]
            assert c.post("/v1/dnc", json={"numbers": [r["e164"] for r in dnc]}).status_code == 200
            assert c.post(f"/v1/batches/{b}/cancel").status_code == 200
            assert c.post("/v1/targets/other/pause").status_code == 200
            still_throttled = sb.stats()["requests"]["queue_append"].get("200", 0) == 0
            sb.configure(throttle_rate=0)
            removed = {r["id"]: "dnc" for r in dnc}
            removed.update({r["id"]: "cancel" for r in sql(db_url, "SELECT id FROM calls WHERE batch_id = $1::uuid", b)})
            paused = {r["id"]: r["e164"] for r in sql(db_url, "SELECT id, e164 FROM calls WHERE target = 'other'")}
            removed.update({i: "pause" for i in paused})
            keep = [r["id"] for r in a_rows if r["id"] not in removed]
            numbers = {r["id"]: r["e164"] for r in sql(db_url, "SELECT id, e164 FROM calls")}

            def settled() -> bool:
                """A's other rows ended; each removed row either named its rule or reached the sandbox."""
                w.check()
                sent = sb.sandbox.submissions_by_ref("number")
                done = sql(db_url, "SELECT count(*) = $2 AS ok FROM calls WHERE id = ANY($1::bigint[]) "
                                   "AND state = ANY($3::text[])", keep, len(keep), list(TERMINAL))[0]["ok"]
                return bool(done) and _quiet(sb) and all(
                    numbers[i] in sent or any(rule in x for x in _rule_events(c, i)) for i, rule in removed.items())

            poll(settled, 60, "the throttle lifted and the waiting chunks handled",
                 detail=lambda: (call_states(db_url), sb.stats()["requests"]))
            sent = sb.sandbox.submissions_by_ref("number")
            accepted = sb.stats()["requests"]["queue_append"].get("200", 0)
            leaked = {rule: [numbers[i] for i, r in removed.items() if r == rule and numbers[i] in sent]
                      for rule in ("dnc", "cancel", "pause")}
            unnamed = {rule: [i for i, r in removed.items() if r == rule
                              and not any(rule in x for x in _rule_events(c, i))]
                       for rule in ("dnc", "cancel", "pause")}
            # the paused rows wait, and go out once the target resumes
            assert c.post("/v1/targets/other/resume").status_code == 200
            resumed = not any(leaked.values()) and poll(
                lambda: (w.check(), sql(db_url, "SELECT count(*) = 10 AS ok FROM calls WHERE target = 'other' "
                                                "AND state = ANY($1::text[])", list(CALLBACK_STATES))[0]["ok"])[1],
                60, "the paused target's calls dialed after resume", detail=lambda: call_states(db_url))
            w.check("at the end")
            final_dials = sb.sandbox.dials_by_number()
            c.close()
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
    assert still_throttled, "a chunk got through before the rules changed: the test raced the Retry-After"
    leaks = {k: len(v) for k, v in leaked.items() if v}
    assert not leaks, f"rows taken out by a rule still reached the sandbox (rows by rule): {leaks}"
    missing = {k: len(v) for k, v in unnamed.items() if v}
    assert not missing, f"removed rows without an event naming the rule (rows by rule): {missing}"
    # A's first chunk (7 rows left) and third (10) went out; the one left empty and B's did not
    assert accepted == 2, f"{accepted} requests accepted for 2 non-empty chunks"
    assert all(sent.get(numbers[i]) == 1 for i in keep), "A's remaining rows not sent exactly once"
    assert resumed
    assert all(final_dials.get(n) == 1 for n in paused.values()), "paused rows not dialed once after resume"
    errors = log_errors(d)
    assert not errors, "unexpected errors in the daemon log:\n" + short(errors)
