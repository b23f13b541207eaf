"""Scale-out: several daemon instances on one PostgreSQL and one inbox share a run.

Short variant (always on): two instances, a 3,000-row lead file in the shared inbox
plus an API batch posted to the other instance. Long variant (``DIALER_SLOW=1``):
three instances, 50,000 rows.

Checked: the file is ingested once (one batch, one report), every call ends, no call
is submitted twice (counted at the sandbox), both/all instances sent chunks, and no
instance logged an error (singleton jobs are advisory-locked; a double run of the
orphan sweeper or the uncertain re-queue would show up as calls moved twice).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dialer.dispatch.chunker import call_ref
from tests.conftest import DaemonProcess, wait_for
from tests.faults.harness import (
    INTAKE,
    SLOW,
    SandboxConfig,
    SandboxThread,
    call_states,
    instance_env,
    kill_all,
    log_errors,
    number,
    poll,
    sql,
    sql_value,
    target_toml,
    wait_all_ended,
)

VARIANTS = [pytest.param(2, 3_000, 500, id="short-2x3000")]
if SLOW:
    VARIANTS.append(pytest.param(3, 50_000, 2_000, id="long-3x50000", marks=pytest.mark.timeout(1800)))


@pytest.mark.parametrize(("instances", "file_rows", "api_rows"), VARIANTS)
def test_instances_share_one_run(daemon_env: dict[str, str], tmp_path: Path, db_url: str,
                                 instances: int, file_rows: int, api_rows: int) -> None:
    agents = [f"a{i}" for i in range(60)]
    cfg = SandboxConfig(time_scale=0.01, seed=11, ring_s=(0.2, 1), talk_s=(1, 4), default_max_dispose_s=0,
                        agent_pickup_s=0, agents=agents, token="sb-token", default_max_retries=0)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    base = {**daemon_env, "DIALER_RYNG_TOKEN": "sb-token", "DIALER_INBOX_DIR": str(inbox),
            "DIALER_CONFIG": str(target_toml(tmp_path / "d.toml", agents, chunk_size=100, calls_per_agent=5,
                                             mapping="inline")),
            "DIALER_INSTANCE_STALE_S": "5"}
    daemons: list[DaemonProcess] = []
    timeout = 180 if file_rows <= 5_000 else 900  # a deadline, not a figure: a loaded machine is slow
    with SandboxThread(cfg) as sb:
        try:
            for i in range(instances):
                env, cwd = instance_env({**base, "DIALER_RYNG_BASE_URL": sb.url}, tmp_path, f"i{i}")
                daemons.append(DaemonProcess(env, cwd).start())
            # pause the target while loading, so every instance is up and racing for the work
            with daemons[0].client() as c:
                assert c.post("/v1/targets/sales/pause").status_code in (200, 202)
            part = inbox / "leads.csv.part"
            with part.open("w") as f:
                # each lead names its agent (inline): the sandbox round-robins afresh per request,
                # so the small refill appends would otherwise all queue on the first agent
                f.write("number,external_id,agents\n")
                for i in range(file_rows):
                    f.write(f"{number(i)},f{i},{agents[i % len(agents)]}\n")
            part.rename(inbox / "leads.csv")  # renamed in: taken at once
            with daemons[-1].client() as c:
                leads = [{"number": number(i, base=5_000_000), "external_id": f"api{i}",
                          "agents": [agents[i % len(agents)]]} for i in range(api_rows)]
                r = c.post("/v1/batches", json={"leads": leads})
                assert r.status_code == 202, r.text
                api_batch = r.json()["batch_id"]

            def file_ingested() -> bool:
                return bool(sql_value(db_url, "SELECT count(*) FROM batches WHERE source = 'inbox' "
                                              "AND state IN ('ingested', 'done')"))

            poll(file_ingested, timeout, "the inbox file ingested", detail=lambda: sql(db_url, "SELECT * FROM batches"))
            with daemons[0].client() as c:
                assert c.post("/v1/targets/sales/resume").status_code in (200, 202)
            started = time.monotonic()
            wait_all_ended(db_url, timeout)
            elapsed = time.monotonic() - started
            reports = sorted(p.name for p in (inbox / "processed").rglob("*.report.json"))

            def results_written() -> list[Path]:
                return list((inbox / "processed").rglob("*.results.csv"))

            wait_for(results_written, 30, "results file written")
            # a last look after every instance had a chance at the completion/orphan jobs
            poll(lambda: sql_value(db_url, "SELECT count(*) FROM batches WHERE state = 'done'") == 2,
                 30, "both batches done", detail=lambda: sql(db_url, "SELECT id, state FROM batches"))
            stats = sb.stats()
            refs = sb.sandbox.submissions_by_ref("customField10")
        finally:
            for d in daemons:
                if d.proc is not None and d.proc.poll() is None:
                    d.stop()
            kill_all(daemons)

    # ---- the file was ingested once
    batches = sql(db_url, "SELECT id, source, source_name, state FROM batches ORDER BY created_at")
    inbox_batches = [b for b in batches if b["source"] == "inbox"]
    assert len(inbox_batches) == 1, batches
    assert len(batches) == 2 and str(api_batch) in {str(b["id"]) for b in batches}
    assert reports == ["leads.csv.report.json"], reports
    assert len(results_written()) == 1
    assert sql_value(db_url, "SELECT count(*) FROM inbox_files") == 1
    # ---- every input row is a call, every call ended, each once
    total = file_rows + api_rows
    states = call_states(db_url)
    assert sum(states.values()) == total, states
    assert not any(states.get(s) for s in INTAKE), states
    dialed = sql(db_url, "SELECT id FROM calls WHERE state <> ALL($1::text[])", list(INTAKE))
    assert len(dialed) == total
    # ---- no call submitted twice (the sandbox counts our reference in customField10)
    twice = {ref: n for ref, n in refs.items() if n != 1}
    assert not twice, f"submitted more than once: {list(twice.items())[:10]}"
    assert set(refs) == {call_ref(r["id"]) for r in dialed}
    assert stats["calls"]["total"] == total
    assert stats["callbacks"]["terminal"]["given_up"] == 0
    # ---- the work split across the instances
    senders = {r["claimed_by"]: r["n"] for r in sql(
        db_url, "SELECT claimed_by, count(*)::int AS n FROM chunks WHERE state = 'sent' GROUP BY claimed_by")}
    ids = sql(db_url, "SELECT id FROM instances")
    assert len(senders) == instances, f"chunks sent by {senders}"
    pids = {str(d.proc.pid) for d in daemons if d.proc is not None}
    assert {k.rsplit("-", 2)[-2] for k in senders if k} == pids, (senders, pids)
    # a send whose answer was lost under load is 'uncertain' (never resent): its calls must
    # still have ended, proven live by their callbacks; nothing else may be left over
    others = sql(db_url, "SELECT state, count(*)::int AS n FROM chunks WHERE state <> 'sent' GROUP BY state")
    assert {r["state"] for r in others} <= {"uncertain"}, others
    assert sql_value(db_url, "SELECT count(*) FROM calls c JOIN chunks k ON k.id = c.chunk_id "
                             "WHERE k.state = 'uncertain' AND c.ended_at IS NULL") == 0
    # ---- nothing moved twice: one submission event per call, one terminal per call
    doubled = sql(db_url, "SELECT call_id, count(*) AS n FROM call_events WHERE applied AND to_state = 'queued' "
                          "GROUP BY call_id HAVING count(*) > 1 LIMIT 5")
    assert not doubled, doubled
    # ---- no instance logged an error
    for d in daemons:
        assert not log_errors(d), "\n".join(log_errors(d)[:20])
    print(f"{instances} instances, {total} calls ended in {elapsed:.1f}s; chunks sent per instance: "
          f"{sorted(senders.values())}; instances rows left: {len(ids)}; pid={os.getpid()}")
