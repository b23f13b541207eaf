"""The daemon as a real process: start-up, API over TCP, SIGTERM, and kill -9 mid-file."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import DaemonProcess, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]


def _fetchval(dsn: str, sql: str) -> object:
    async def go() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_daemon_serves_api_and_inbox_then_drains_on_sigterm(daemon: DaemonProcess) -> None:
    daemon.start()
    with daemon.client() as c:
        r = c.post("/v1/batches", json={"leads": [{"number": "+14155550100"}]})
        assert r.status_code == 202, r.text
        bid = r.json()["batch_id"]
        assert c.get(f"/v1/batches/{bid}").json()["calls_by_state"] == {"pending": 1}
        assert httpx.get(daemon.url + "/v1/batches/" + bid).status_code == 401
    inbox = Path(daemon.env["DIALER_STATE_DIR"]) / "inbox"
    (inbox / "leads.csv").write_bytes((ROOT / "examples" / "leads.csv").read_bytes())
    day = datetime.now().astimezone().date().isoformat()
    rep = inbox / "processed" / day / "leads.csv.report.json"
    wait_for(rep.exists, 30, "report")
    assert json.loads(rep.read_text())["counts"]["rows"] == 15
    assert daemon.stop() == 0
    running = [json.loads(line) for line in daemon.log.read_text().splitlines()
               if line.startswith("{") and "dialer running" in line]
    assert [r.get("phone_numbers") for r in running] == ["rphonenumbers"]
    assert "validated by phonenumbers" not in daemon.log.read_text()


def _kill_9_mid_file(daemon: DaemonProcess, db_url: str, rows: int) -> Path:
    """Start the daemon, drop ``big.csv`` (``rows`` rows, every 50th invalid) and kill -9 it
    once some of its rows are committed; returns the inbox."""
    daemon.start()
    rng = random.Random(7)
    inbox = Path(daemon.env["DIALER_STATE_DIR"]) / "inbox"
    tmp = inbox / "big.csv.part"
    with tmp.open("w") as f:
        f.write("number,priority,external_id\n")
        for i in range(rows):
            # every 50th row is invalid; numbers are unique otherwise
            num = "12" if i % 50 == 0 else f"+1415{2000000 + i:07d}"
            f.write(f"{num},{rng.randint(0, 9)},x{i}\n")
    tmp.rename(inbox / "big.csv")

    def some_rows_committed() -> bool:
        n = _fetchval(db_url, "SELECT coalesce(max(rows_read), 0) FROM batches")
        assert isinstance(n, int)
        if n >= rows:
            raise AssertionError("file finished before the kill: make it bigger")
        return n > 0

    wait_for(some_rows_committed, 60, "first committed chunk")
    daemon.kill9()
    return inbox


def test_kill_9_mid_file_then_restart_accounts_for_every_row_once(daemon: DaemonProcess, db_url: str) -> None:
    daemon.env["DIALER_INGEST_COMMIT_ROWS"] = "5000"
    daemon.env["DIALER_INGEST_COPY_STREAMS"] = "2"
    rows = 200_000
    inbox = _kill_9_mid_file(daemon, db_url, rows)
    partial = _fetchval(db_url, "SELECT count(*) FROM leads")
    assert isinstance(partial, int) and 0 < partial < rows
    # calls of a batch still receiving rows wait: nothing was sent before finalise
    assert _fetchval(db_url, "SELECT state FROM batches") == "receiving"
    assert _fetchval(db_url, "SELECT count(*) FROM calls WHERE state NOT IN ('pending', 'invalid')") == 0
    assert _fetchval(db_url, "SELECT count(*) FROM chunks") == 0

    daemon.start()
    day = datetime.now().astimezone().date().isoformat()
    rep = inbox / "processed" / day / "big.csv.report.json"
    wait_for(rep.exists, 120, "report after restart")
    report = json.loads(rep.read_text())
    assert report["counts"]["rows"] == rows
    assert report["counts"]["invalid"] == rows // 50
    assert report["counts"]["accepted"] == rows - rows // 50
    assert _fetchval(db_url, "SELECT count(*) FROM leads") == rows
    assert _fetchval(db_url, "SELECT count(DISTINCT line) FROM leads") == rows
    # chunks COPY on two connections at once (ingest_copy_streams), yet ids follow the lines
    assert _fetchval(db_url, "SELECT count(*) FROM (SELECT id > lead(id) OVER (ORDER BY line) AS back "
                             "FROM leads) s WHERE back") == 0
    # the dispatcher may already be sending some: count every accepted row, whatever its state now
    assert _fetchval(db_url, "SELECT count(*) FROM calls WHERE state NOT IN ('invalid', 'duplicate', 'dnc')") == rows - rows // 50
    assert _fetchval(db_url, "SELECT count(DISTINCT e164) FROM calls") == rows - rows // 50
    assert daemon.stop() == 0


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_kill_9_mid_file_then_the_file_gone_ends_its_batch_failed_and_reported(daemon: DaemonProcess, db_url: str,
                                                                              how: str) -> None:
    """Removed, or saved over with other leads, while the daemon was down: the batch cut off
    can never resume. It ends failed, its rows read never dialed, with a note in failed/;
    a file in its place is a drop of its own."""
    daemon.env["DIALER_INGEST_COMMIT_ROWS"] = "5000"
    inbox = _kill_9_mid_file(daemon, db_url, 200_000)
    bid = _fetchval(db_url, "SELECT id FROM batches")
    read = _fetchval(db_url, "SELECT rows_read FROM batches")
    if how == "removed":
        (inbox / "big.csv").unlink()
    else:
        (inbox / "big.csv").write_text("number\n+14155550100\n")
    daemon.start()
    wait_for(lambda: _fetchval(db_url, f"SELECT state FROM batches WHERE id = '{bid}'") == "failed", 60,
             "the cut-off batch to fail")
    error = _fetchval(db_url, f"SELECT error FROM batches WHERE id = '{bid}'")
    assert isinstance(error, str) and f"the {read} rows of " in error and ("removed" if how == "removed" else "replaced") in error
    assert (inbox / "failed" / "big.csv.error.txt").read_text().startswith(f"big.csv: {error}\n")
    assert _fetchval(db_url, f"SELECT count(*) FROM calls WHERE batch_id = '{bid}'") == 0
    if how == "replaced":
        day = datetime.now().astimezone().date().isoformat()
        rep = inbox / "processed" / day / "big.csv.report.json"
        wait_for(rep.exists, 60, "the new file's report")
        assert json.loads(rep.read_text())["counts"]["accepted"] == 1
    assert _fetchval(db_url, "SELECT count(*) FROM calls") == (1 if how == "replaced" else 0)
    assert _fetchval(db_url, "SELECT count(*) FROM batches WHERE state = 'receiving'") == 0
    assert daemon.stop() == 0


def test_a_misspelled_variable_is_logged_at_start_up(daemon: DaemonProcess) -> None:
    daemon.env["DIALER_RYNG_BASEURL"] = "https://acme.ryng.example"
    daemon.start()
    assert daemon.stop() == 0
    warnings = [json.loads(line) for line in daemon.log.read_text().splitlines()
                if line.startswith("{") and "DIALER_RYNG_BASEURL" in line]
    assert [(w["level"], w["msg"]) for w in warnings] == [
        ("warning", "DIALER_RYNG_BASEURL is not a dialer setting and is ignored; "
                    "did you mean DIALER_RYNG_BASE_URL?")]


@pytest.mark.parametrize(("setting", "value", "needle"), [
    ("DIALER_STATE_DIR", "{file}/var", "state_dir: cannot create {file}/var: Not a directory"),
    ("DIALER_INBOX_DIR", "{file}/inbox", "inbox_dir: cannot create {file}/inbox: Not a directory"),
    ("DIALER_HTTP_LISTEN", "999.1.1.1:{port}", "http_listen: cannot listen on 999.1.1.1:{port}"),
])
def test_a_setting_run_cannot_use_exits_2_naming_it(tmp_path: Path, setting: str, value: str,
                                                    needle: str) -> None:
    """Caught before the database is opened: a message, no traceback, exit 2 (SPEC §8)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(DIALER_STATE_DIR=str(tmp_path / "var"), DIALER_HTTP_LISTEN=f"127.0.0.1:{port}")
    env[setting] = value.format(file=a_file, port=port)
    r = subprocess.run([sys.executable, "-m", "dialer", "run"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: {needle.format(file=a_file, port=port)}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_port_held_by_another_process_is_not_a_configuration_error(tmp_path: Path) -> None:
    """EADDRINUSE (an instance still stopping, a hand-started daemon) passes: exit 1, which
    systemd's Restart=on-failure retries; exit 2 would keep the service down for good."""
    import socket

    from dialer.config import load_settings
    from dialer.daemon import bind
    from dialer.errors import ConfigError, DialerError

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        s = load_settings(None, environ={"DIALER_HTTP_LISTEN": f"127.0.0.1:{port}",
                                         "DIALER_STATE_DIR": str(tmp_path / "var")})
        with pytest.raises(DialerError, match=f"http_listen: cannot listen on 127.0.0.1:{port}") as e:
            bind(s)
        assert not isinstance(e.value, ConfigError)
    finally:
        holder.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_state_dir_this_user_cannot_write_is_named(tmp_path: Path) -> None:
    from dialer.config import load_settings
    from dialer.daemon import make_dirs
    from dialer.errors import ConfigError

    (tmp_path / "var").mkdir(mode=0o500)
    s = load_settings(None, environ={"DIALER_STATE_DIR": str(tmp_path / "var"),
                                     "DIALER_INBOX_DIR": str(tmp_path / "inbox")})
    with pytest.raises(ConfigError, match=r"state_dir: .* is not writable"):
        make_dirs(s)


def test_uploads_cut_off_long_ago_are_removed_at_start_up(tmp_path: Path) -> None:
    """A kill -9 mid-upload left its .part file for good; one still being written (recent)
    is left alone (another instance may share the state directory)."""
    import time

    from dialer.config import load_settings
    from dialer.daemon import STALE_UPLOAD_S, make_dirs

    incoming = tmp_path / "var" / "uploads" / ".incoming"
    incoming.mkdir(parents=True)
    old, fresh, other = incoming / "a.part", incoming / "b.part", incoming / "keep.txt"
    for f in (old, fresh, other):
        f.write_bytes(b"x")
    long_ago = time.time() - STALE_UPLOAD_S - 60
    os.utime(old, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    make_dirs(load_settings(None, environ={"DIALER_STATE_DIR": str(tmp_path / "var")}))
    assert sorted(p.name for p in incoming.iterdir()) == ["b.part", "keep.txt"]
