"""Nothing stays live forever, and completion follows every path (SPEC §6).

Four inbox files whose batches end without a single terminal callback — by provider
rejection (a queue the sandbox does not know: 404), by cancel (a paused target's
batch, cancelled), by expiry (calls the sandbox keeps queued or on a call forever, with
``stale_after_h`` at 3.6 s) and by intake (every row invalid) — each reach ``done``
and get ``<name>.results.csv`` beside the report, with no daemon restart.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tests.conftest import DaemonProcess
from tests.faults.harness import (
    SLOW,
    SandboxConfig,
    SandboxThread,
    Watched,
    call_states,
    drop_file,
    log_errors,
    number,
    poll,
    report_for,
    sandbox_env,
    short,
    targets_toml,
)

STALE_AFTER_H = 0.001  # 3.6 s


def test_batches_end_by_rejection_cancel_expiry_and_intake(daemon_env: dict[str, str], tmp_path: Path,
                                                             db_url: str) -> None:
    n = 30 if SLOW else 3
    # one agent on a call for ~3 h: the first call stays connected, the others queued,
    # and no terminal callback ever comes
    cfg = SandboxConfig(time_scale=1, seed=4, ring_s=(0, 0), talk_s=(10_000, 10_000), agent_pickup_s=0,
                        default_max_dispose_s=0, agents=["a0"], token="sb-token", answer_rate=1,
                        no_answer_rate=0, busy_rate=0, unreachable_rate=0, queues=["1"])
    inbox = tmp_path / "inbox"
    per = {"calls_per_agent": n, "chunk_size": 100}
    with SandboxThread(cfg) as sb:
        conf = targets_toml(tmp_path / "d.toml", ["a0"], {
            "sales": per, "rejects": {**per, "queue_id": "999"}, "held": per})
        d = DaemonProcess(sandbox_env(daemon_env, sb, conf, DIALER_INBOX_DIR=str(inbox),
                                      DIALER_STALE_AFTER_H=str(STALE_AFTER_H)), tmp_path)
        try:
            d.start()
            w = Watched(d)
            with d.client() as c:
                # a first all-invalid file, done before the others are dropped: whatever sweep
                # the daemon makes of open batches at start-up is behind us, so the four
                # below must complete on their own paths
                drop_file(inbox, "warmup.csv", "number\n555-01\n")
                warm = str(report_for(inbox, "warmup.csv")[1]["batch_id"])
                poll(lambda: (w.check(), c.get(f"/v1/batches/{warm}").json().get("state") == "done")[1], 30,
                     "the warm-up batch done", detail=lambda: c.get(f"/v1/batches/{warm}").json())
                assert c.post("/v1/targets/held/pause").status_code == 200
                files = {
                    "rejects.csv": ("rejects", [number(i, base=4_000_000) for i in range(n)], "rejected_by_provider"),
                    "held.csv": ("held", [number(i, base=2_000_000) for i in range(n)], "cancelled"),
                    "expire.csv": ("", [number(i, base=3_000_000) for i in range(n)], "expired"),
                    "invalid.csv": ("", ["555-01", "12", "not a number", "+999 1"], "invalid"),
                }
                for name, (sub, nums, _) in files.items():
                    drop_file(inbox / sub if sub else inbox, name, "number\n" + "\n".join(nums) + "\n")
                reports = {name: report_for(inbox, name) for name in files}
                batch = {name: str(rep["batch_id"]) for name, (_, rep) in reports.items()}
                assert all(batch.values()), {k: rep for k, (_, rep) in reports.items()}
                r = c.post(f"/v1/batches/{batch['held.csv']}/cancel")
                assert r.status_code == 200 and r.json()["cancelled"] == n, r.text

                def where() -> dict[str, Any]:
                    out = {}
                    for name, bid in batch.items():
                        b = c.get(f"/v1/batches/{bid}").json()
                        results = reports[name][0].with_name(f"{name}.results.csv")
                        out[name] = (b.get("state"), b.get("calls_by_state"), results.exists())
                    return out

                def all_done() -> bool:
                    w.check()
                    return all(state == "done" and has_file for state, _, has_file in where().values())

                try:
                    poll(all_done, 30, "every batch done with its results file", detail=where)
                finally:
                    final = where()
                    w.check("at the end")
                    at_sandbox = sb.sandbox.submissions_by_ref("number")
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
    print(f"batches: {final}; calls {call_states(db_url)}")
    for name, (_, nums, state) in files.items():
        rows = list(csv.DictReader(io.StringIO(reports[name][0].with_name(f"{name}.results.csv").read_text())))
        assert len(rows) == len(nums), (name, rows)
        assert {r["state"] for r in rows} == {state}, (name, rows)
    # the expired calls did reach the sandbox (they were live, not merely pending)
    assert all(at_sandbox.get(x) == 1 for x in files["expire.csv"][1]), at_sandbox
    errors = log_errors(d, allowed=("provider rejected a chunk",))
    assert not errors, "unexpected errors in the daemon log:\n" + short(errors)
