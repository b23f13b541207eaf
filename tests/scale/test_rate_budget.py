"""Two daemons against one database and one sandbox share one budget of 5 calls/s
(``[providers.ryng] max_calls_per_s = 5``), measured at the sandbox from its request log:
never more than 5 calls in any 1-second window of arrival times, over a load period of
20 s (60 s under ``DIALER_SLOW=1``). Both instances send, and every call ends.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import DaemonProcess
from tests.dispatch.test_budget import most_in_any_window
from tests.faults.harness import (
    SLOW,
    SandboxConfig,
    SandboxThread,
    instance_env,
    kill_all,
    log_errors,
    number,
    short,
    sql,
    target_toml,
    wait_all_ended,
)

BUDGET = 5
VARIANTS = [pytest.param(20, id="20s")]
if SLOW:
    VARIANTS.append(pytest.param(60, id="60s", marks=pytest.mark.timeout(600)))


@pytest.mark.parametrize("load_s", VARIANTS)
def test_two_daemons_never_exceed_one_shared_budget(daemon_env: dict[str, str], tmp_path: Path, db_url: str,
                                                    load_s: int) -> None:
    agents = [f"a{i}" for i in range(40)]
    cfg = SandboxConfig(time_scale=0.01, seed=5, ring_s=(0.2, 1), talk_s=(1, 3), default_max_dispose_s=0,
                        agent_pickup_s=0, agents=agents, token="sb-token", default_max_retries=0)
    config = target_toml(tmp_path / "d.toml", agents, chunk_size=50, calls_per_agent=5)
    config.write_text(config.read_text() + f"\n[providers.ryng]\nmax_calls_per_s = {BUDGET}\n")
    leads = BUDGET * load_s  # enough for the whole load period at the budget
    base = {**daemon_env, "DIALER_RYNG_TOKEN": "sb-token", "DIALER_CONFIG": str(config),
            "DIALER_DISPATCH_INTERVAL_S": "0.2"}
    daemons: list[DaemonProcess] = []
    with SandboxThread(cfg) as sb:
        try:
            for i in range(2):
                env, cwd = instance_env({**base, "DIALER_RYNG_BASE_URL": sb.url}, tmp_path, f"i{i}")
                daemons.append(DaemonProcess(env, cwd).start())
            with daemons[0].client() as c:  # paused while loading: both race from the start
                assert c.post("/v1/targets/sales/pause").status_code in (200, 202)
            for k in range(0, leads, 100):
                with daemons[k // 100 % 2].client() as c:
                    r = c.post("/v1/batches", json={"leads": [{"number": number(i)}
                                                              for i in range(k, min(leads, k + 100))]})
                    assert r.status_code == 202, r.text
            with daemons[1].client() as c:
                assert c.post("/v1/targets/sales/resume").status_code in (200, 202)
            wait_all_ended(db_url, load_s * 3 + 30)
            requests = [r for r in sb.sandbox.requests() if r["status"] == "200"]
            with httpx.Client() as http:
                metrics = http.get(daemons[0].url + "/metrics").text
            errors = [line for d in daemons for line in log_errors(d)]
        finally:
            for d in daemons:
                if d.proc is not None and d.proc.poll() is None:
                    d.stop()
            kill_all(daemons)

    arrivals = [(r["at"], r["calls"]) for r in requests]
    assert sum(n for _, n in arrivals) == leads  # each call sent once
    worst = most_in_any_window(arrivals)
    span = max(t for t, _ in arrivals) - min(t for t, _ in arrivals)
    rate = leads / (span + 1)
    print(f"\n{leads} calls in {len(arrivals)} requests over {span:.1f} s at the sandbox: "
          f"most in any 1 s window {worst}, {rate:.2f} calls/s on average")
    assert worst <= BUDGET, sorted(arrivals)
    # both instances sent chunks
    senders = {r["claimed_by"] for r in sql(db_url, "SELECT DISTINCT claimed_by FROM chunks WHERE state = 'sent'")}
    assert len(senders) == 2, senders
    assert "dialer_rate_budget_wait_seconds_count" in metrics
    assert errors == [], short(errors)
