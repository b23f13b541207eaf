"""The CLI as a newcomer runs it (SPEC §8): ``dialer ingest`` and ``dialer status`` on a
fresh state directory (the embedded database is migrated for them), a database whose
schema is not current (a message, not a traceback), and progress shown off a terminal."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import with_database


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dialer", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=180)


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(DIALER_STATE_DIR=str(tmp_path / "var"), DIALER_LOG_FORMAT="json")
    return env


def test_ingest_and_status_on_a_fresh_state_directory(tmp_path: Path) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text("number,first_name\n+14155550100,Ann\n(415) 555-0101,Bob\nnope,Carl\n")
    env = base_env(tmp_path)
    r = run(["ingest", str(leads)], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["counts"]["accepted"] == 2 and report["counts"]["invalid"] == 1, report
    # the embedded database was migrated for it; progress shows without a terminal
    assert "migrations to the embedded database" in r.stderr
    assert "ingesting leads.csv: 3 rows in" in r.stderr, r.stderr
    r = run(["status"], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    dnc = tmp_path / "dnc.txt"
    dnc.write_text("+14155550100\n(415) 555-0199\n")
    r = run(["dnc", "import", str(dnc)], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["added"] == 2 and "importing dnc.txt:" in r.stderr, r.stdout + r.stderr
    r = run(["dnc", "export"], env, tmp_path)
    assert r.returncode == 0 and "+14155550199" in r.stdout and "+14155550100" in r.stdout, r.stdout


def test_a_database_whose_schema_is_not_current_is_a_message_not_a_traceback(tmp_path: Path,
                                                                            pg_server: str) -> None:
    name = f"unmigrated_{os.getpid()}"

    async def make(sql: str) -> None:
        conn = await asyncpg.connect(pg_server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(make(f"CREATE DATABASE {name}"))
    try:
        env = {**base_env(tmp_path), "DIALER_DATABASE_URL": with_database(pg_server, name)}
        r = run(["status"], env, tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "schema is not current" in r.stderr and "dialer migrate" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    finally:
        asyncio.run(make(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def test_ingest_into_an_unknown_target_is_a_usage_error(tmp_path: Path) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text("number\n+14155550100\n")
    r = run(["ingest", str(leads), "--target", "nope"], base_env(tmp_path), tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "unknown target 'nope'" in r.stderr and "Traceback" not in r.stderr


def _commands() -> list[list[str]]:
    """Every command and sub-command the parser knows, from the parser itself."""
    import argparse

    from dialer.cli import build_parser

    out: list[list[str]] = [[]]

    def walk(p: argparse.ArgumentParser, path: list[str]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    out.append([*path, name])
                    walk(child, [*path, name])

    walk(build_parser(), [])
    return out


def test_every_command_has_help(tmp_path: Path) -> None:
    """SPEC §8: "--help everywhere"."""
    commands = _commands()
    assert {"run", "migrate", "ingest", "status", "sandbox", "check-config"} <= {c[0] for c in commands if c}
    for cmd in commands:
        r = run([*cmd, "--help"], base_env(tmp_path), tmp_path)
        assert r.returncode == 0 and r.stdout.startswith("usage: dialer"), (cmd, r.stdout + r.stderr)


def test_the_cli_leaves_the_schema_of_an_embedded_database_a_daemon_runs_to_the_daemon(tmp_path: Path) -> None:
    """A daemon of an older version may be running on it (an upgrade not yet restarted): the
    CLI does not migrate under it, it says what to do."""
    from dialer.store.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(tmp_path / "var" / "postgres")  # started here, as the daemon would
    pg.start()
    try:
        r = run(["status"], base_env(tmp_path), tmp_path)
        assert r.returncode == 1 and "schema is not current" in r.stderr, r.stdout + r.stderr
    finally:
        pg.stop()


@pytest.mark.parametrize(("args", "needle"), [
    (["dnc", "import", "{dnc}", "--expires-at", "notadate"], "argument --expires-at: 'notadate' is not an ISO 8601"),
    (["dnc", "import", "{dnc}", "--expires-at", "2001-01-01"], "argument --expires-at: '2001-01-01' is in the past"),
    (["dnc", "import", "{dnc}", "--region", "ZZ"], "argument --region: unknown region 'ZZ'"),
    (["status", "--limit", "-1"], "argument --limit: '-1' is not a whole number"),
    (["dnc", "export", "-o", "{tmp}/missing/x.csv"], "--output: cannot write {tmp}/missing/x.csv: No such file"),
])
def test_a_bad_option_value_exits_2_naming_the_option(tmp_path: Path, args: list[str], needle: str) -> None:
    dnc = tmp_path / "dnc.txt"
    dnc.write_text("+14155550100\n")
    r = run([a.format(dnc=dnc, tmp=tmp_path) for a in args], base_env(tmp_path), tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle.format(tmp=tmp_path) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "var" / "postgres").exists()  # refused before any database was started


def test_a_date_only_expiry_is_utc_midnight() -> None:
    # naive, it would be read in whatever zone the reader assumes (the client's, the session's)
    from dialer.cli import build_parser

    args = build_parser().parse_args(["dnc", "import", "f.txt", "--expires-at", "2031-01-02"])
    assert args.expires_at == datetime(2031, 1, 2, tzinfo=UTC)
    args = build_parser().parse_args(["dnc", "import", "f.txt", "--expires-at", "2031-01-02T09:00+02:00"])
    assert args.expires_at == datetime(2031, 1, 2, 7, tzinfo=UTC)


def test_dnc_export_is_csv_a_reader_reads_back(tmp_path: Path, db_url: str) -> None:
    env = {**base_env(tmp_path), "DIALER_DATABASE_URL": db_url, "TZ": "Asia/Tokyo"}
    dnc = tmp_path / "dnc.txt"
    dnc.write_text("+14155550100\n")
    source = 'web form, "urgent"\nsecond line'
    r = run(["dnc", "import", str(dnc), "--source", source, "--expires-at", "2031-01-02"], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "export.csv"
    r = run(["dnc", "export", "-o", str(out)], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    with out.open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["number"] == "+14155550100" and row["source"] == source
    assert row["expires_at"] == "2031-01-02T00:00:00+00:00"


def test_dnc_export_shows_progress_on_stderr_off_a_terminal(tmp_path: Path, db_url: str) -> None:
    env = {**base_env(tmp_path), "DIALER_DATABASE_URL": db_url}
    dnc = tmp_path / "dnc.txt"
    dnc.write_text("+14155550100\n+14155550101\n+14155550102\n")
    assert run(["dnc", "import", str(dnc)], env, tmp_path).returncode == 0
    r = run(["dnc", "export"], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exporting the do-not-call list: 3 rows in" in r.stderr, r.stderr
    assert len(r.stdout.splitlines()) == 4 and "exporting" not in r.stdout  # the CSV alone
    r = run(["dnc", "export", "--progress", "-o", str(tmp_path / "out.csv")], env, tmp_path)
    assert r.returncode == 0 and "3/3 rows" in r.stderr, r.stdout + r.stderr


def test_a_failed_dnc_export_leaves_the_last_good_file_as_it_was(tmp_path: Path) -> None:
    """The nightly `dnc export -o backup.csv` during a database outage: the previous export
    stays whole (the rows go to a file beside it, renamed over it only when complete)."""
    out = tmp_path / "dnc.csv"
    out.write_text("number,source,added_at,expires_at\n+14155550100,api,2026-12-01T00:00:00+00:00,\n")
    before = out.read_bytes()
    env = {**base_env(tmp_path), "DIALER_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    r = run(["dnc", "export", "-o", str(out)], env, tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "var") == ["dnc.csv"]  # no part left
