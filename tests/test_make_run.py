"""What a newcomer runs (SPEC §2): ``make run`` from the checkout starts the daemon in
sandbox mode on an embedded PostgreSQL, prints its API token, and a lead file dropped into
the inbox is ingested and reported."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_make_run_serves_the_sandbox_and_takes_a_dropped_file(tmp_path: Path) -> None:
    if shutil.which("make") is None:  # pragma: no cover - every CI machine has it
        raise AssertionError("make is not installed")
    port = free_port()
    state = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(DIALER_STATE_DIR=str(state), DIALER_HTTP_LISTEN=f"127.0.0.1:{port}", DIALER_LOG_FORMAT="json")
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120, "make run: /readyz 200")
        token = (state / "sandbox_api_token").read_text().strip()
        assert f"API token is {token}" in log.read_text()  # printed once, for the operator
        r = httpx.get(url + "/v1/targets", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, r.text
        inbox = state / "inbox"
        shutil.copy(ROOT / "examples" / "leads.csv", inbox / "leads.csv.part")
        (inbox / "leads.csv.part").rename(inbox / "leads.csv")  # renamed in: taken at once

        def report() -> dict[str, object] | None:
            found = list((inbox / "processed").rglob("leads.csv.report.json"))
            return json.loads(found[0].read_text()) if found else None

        got = wait_for(report, 60, "the report of the dropped file")
        assert got["result"] == "ingested" and got["counts"]["accepted"] > 0, got
    finally:
        # SIGTERM to the daemon, as systemd would: it drains and exits 0, and so does make
        started = re.search(r"Started server process \[(\d+)\]", log.read_text())
        if started is None or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(log.read_text()[-3000:])
        os.kill(int(started.group(1)), signal.SIGTERM)
        assert proc.wait(40) == 0, log.read_text()[-3000:]
