"""File and folder names that are not UTF-8 (a Linux name is bytes: a Latin-1 client's é is
b'\\xe9'), against a real inbox directory and PostgreSQL. Such a file is taken like any other:
ingested or failed with its note, filed under its own bytes name; wherever its name is text
(the database, the report and the note, logs) it is shown with each such byte as \\xNN."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import asyncpg
import pytest
from prometheus_client import generate_latest

from dialer import metrics
from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.intake.files import FileIngestor
from dialer.intake.inbox import Inbox
from dialer.lifecycle import moves
from dialer.logs import JsonFormatter
from dialer.results.files import Completion
from tests.intake.test_cut_off import batch_of, cut_off
from tests.intake.test_finalise_limits import dialer
from tests.intake.test_inbox import settle_and_scan
from tests.intake.test_streams import HEADER, csv_rows

LEADS = b"number\n+14155550100\nnope\n"


@pytest.fixture
def counted(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> metrics.Metrics:
    m = metrics.Metrics(settings.targets)
    monkeypatch.setattr(metrics, "_current", m)
    return m


def put(inbox: Inbox, rel: bytes, data: bytes) -> bytes:
    """Write ``data`` at ``rel`` (bytes) under the inbox, as a client would; its path."""
    path = os.fsencode(inbox.root) + b"/" + rel
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def listed(directory: Path) -> list[bytes]:
    return sorted(os.listdir(os.fsencode(directory)))


def logged(records: list[logging.LogRecord]) -> list[dict[str, object]]:
    """The records as the daemon writes them under systemd: one JSON object a line."""
    return [json.loads(JsonFormatter().format(r)) for r in records]


@pytest.mark.parametrize("folder", [b"", b"sales/"], ids=["inbox", "target-folder"])
async def test_a_file_named_in_bytes_that_are_not_utf8_is_ingested_and_filed_under_its_own_name(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, counted: metrics.Metrics,
        caplog: pytest.LogCaptureFixture, folder: bytes) -> None:
    dropped = put(inbox, folder + b"caf\xe9.csv", LEADS)
    with caplog.at_level(logging.INFO, logger="dialer"):
        assert await settle_and_scan(inbox, clock) == 1
    assert not os.path.lexists(dropped)
    day = inbox.root / "processed" / clock.now().astimezone().date().isoformat()
    assert listed(day) == [b"caf\xe9.csv", b"caf\xe9.csv.report.json"]
    with open(os.fsencode(day) + b"/caf\xe9.csv.report.json", "rb") as f:
        rep = json.load(f)
    assert (rep["file"], rep["result"], rep["counts"]["accepted"], rep["counts"]["invalid"]) == (
        "caf\\xe9.csv", "ingested", 1, 1)
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT f.name, f.state, b.source_name, b.id FROM inbox_files f "
                                  "JOIN batches b ON b.id = f.batch_id")
        assert (row["name"], row["state"], row["source_name"]) == ("caf\\xe9.csv", "filed", "caf\\xe9.csv")
        async with conn.transaction():
            await moves.cancel_batch(conn, row["id"], clock.now(), "api")  # its calls end: results owed
    assert await Completion(pool, clock).check() == [row["id"]]
    assert listed(day) == [b"caf\xe9.csv", b"caf\xe9.csv.report.json", b"caf\xe9.csv.results.csv"]
    lines = logged(caplog.records)
    assert {"msg": "inbox file ingested", "file": "caf\\xe9.csv"}.items() <= lines[-1].items()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert counted.registry.get_sample_value("dialer_inbox_files_total",
                                             {"target": "sales", "result": "ingested"}) == 1


async def test_a_file_named_in_bytes_that_are_not_utf8_fails_with_its_note_like_any_other(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool) -> None:
    put(inbox, b"\xe9t\xe9.csv", b"")  # empty
    put(inbox, b"caf\xe9.docx", b"whatever")
    assert await settle_and_scan(inbox, clock) == 2
    failed = inbox.root / "failed"
    assert listed(failed) == [b"caf\xe9.docx", b"caf\xe9.docx.error.txt", b"\xe9t\xe9.csv",
                              b"\xe9t\xe9.csv.error.txt"]
    with open(os.fsencode(failed) + b"/\xe9t\xe9.csv.error.txt", "rb") as f:
        assert f.read().decode() == (
            "\\xe9t\\xe9.csv: file is empty\ntarget: sales\n"
            "Nothing from this file was ingested. Fix it and drop it into the inbox again.\n")
    with open(os.fsencode(failed) + b"/caf\xe9.docx.error.txt", "rb") as f:
        assert f.read().decode().startswith("caf\\xe9.docx: unsupported file type '.docx'")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls") == 0


async def test_a_folder_named_in_bytes_that_are_not_utf8_is_no_target_its_file_goes_to_failed(
        inbox: Inbox, clock: FakeClock, counted: metrics.Metrics) -> None:
    put(inbox, b"\xe9quipe/caf\xe9.csv", LEADS)
    assert await settle_and_scan(inbox, clock) == 1
    failed = inbox.root / "failed"
    assert listed(failed) == [b"caf\xe9.csv", b"caf\xe9.csv.error.txt"]
    with open(os.fsencode(failed) + b"/caf\xe9.csv.error.txt", "rb") as f:
        assert f.read().decode() == (
            "caf\\xe9.csv: unknown target '\\xe9quipe'; configured targets: sales\n"
            "target: \\xe9quipe\n"
            "Nothing from this file was ingested. Fix it and drop it into the inbox again.\n")
    assert counted.registry.get_sample_value("dialer_inbox_files_total",
                                             {"target": "other", "result": "failed"}) == 1
    generate_latest(counted.registry)  # /metrics still renders


async def test_a_link_and_a_long_name_in_bytes_that_are_not_utf8_are_filed_under_their_own_names(
        inbox: Inbox, clock: FakeClock, tmp_path: Path) -> None:
    os.symlink(b"/data/caf\xe9.csv", os.fsencode(inbox.root) + b"/lien-caf\xe9.csv")
    long = b"\xe9" * 251 + b".csv"  # 255 bytes: "<name>.report.json" would not fit
    put(inbox, long, LEADS)
    assert await settle_and_scan(inbox, clock) == 2
    failed = inbox.root / "failed"
    assert listed(failed) == [b"lien-caf\xe9.csv", b"lien-caf\xe9.csv.error.txt"]
    assert os.readlink(os.fsencode(failed) + b"/lien-caf\xe9.csv") == b"/data/caf\xe9.csv"
    with open(os.fsencode(failed) + b"/lien-caf\xe9.csv.error.txt", "rb") as f:
        assert f.read().decode().startswith(
            "lien-caf\\xe9.csv is a symbolic link (to /data/caf\\xe9.csv); the inbox does not follow links")
    day = inbox.root / "processed" / clock.now().astimezone().date().isoformat()
    filed, report = listed(day)
    assert filed.endswith(b".csv") and long.startswith(filed[:-4]) and report == filed + b".report.json"
    with open(os.fsencode(day) + b"/" + report, "rb") as f:
        assert json.load(f)["file"] == "\\xe9" * 251 + ".csv"  # the name received, whole


async def test_a_path_typed_for_dialer_ingest_in_bytes_that_are_not_utf8_is_ingested(
        settings: Settings, pool: asyncpg.Pool, clock: FakeClock, tmp_path: Path) -> None:
    path = os.fsencode(tmp_path) + b"/caf\xe9.csv"
    with open(path, "wb") as f:
        f.write(LEADS)
    out = await FileIngestor(pool, settings, clock).ingest(Path(os.fsdecode(path)), "sales", source="cli",
                                                           follow_links=True)
    assert (out.kind, out.name, out.counts["accepted"]) == ("ingested", "caf\\xe9.csv", 1)


async def test_a_cut_off_ingest_of_a_file_named_so_whose_file_is_removed_ends_failed_with_its_note(
        make_settings: Callable[..., Settings], pool: asyncpg.Pool, clock: FakeClock, db_url: str) -> None:
    """Its path is read back from the database (is the file still there?): stored as its
    bytes, not as the name is shown."""
    settings = make_settings(ingest_commit_rows=100)
    path = Path(os.fsdecode(os.fsencode(settings.inbox / "sales") + b"/caf\xe9.csv"))
    path.parent.mkdir(parents=True)
    path.write_text(HEADER + csv_rows(1_000))
    batch = await cut_off(settings, pool, db_url, clock, path)
    box = Inbox(settings, FileIngestor(pool, settings, clock), clock)
    box.ensure_dirs()
    assert await box.scan_once() == 0  # still there: left to resume
    assert (await batch_of(pool, batch["id"]))["state"] == "receiving"
    path.unlink()
    await box.cut_off.abandon_gone()
    b = await batch_of(pool, batch["id"])
    assert b["state"] == "failed" and b["error"].startswith(
        "the file sales/caf\\xe9.csv was removed from the inbox before its ingest finished")
    failed = settings.inbox / "failed"
    assert listed(failed) == [b"caf\xe9.csv.error.txt"]
    with open(os.fsencode(failed) + b"/caf\xe9.csv.error.txt", "rb") as f:
        assert f.read().decode().startswith(f"caf\\xe9.csv: {b['error']}\ntarget: sales\n")


async def test_a_dnc_file_typed_for_dialer_dnc_import_in_bytes_that_are_not_utf8_is_imported(
        pool: asyncpg.Pool, db_url: str, tmp_path: Path) -> None:
    """The list's ``source`` is the file's name by default: shown with ``\\xNN``, not a traceback."""
    path = os.fsencode(tmp_path) + b"/registre-\xe9t\xe9.txt"
    with open(path, "wb") as f:
        f.write(b"+14155550100\n+14155550101\n")
    r = await anyio.to_thread.run_sync(lambda: dialer(["dnc", "import", os.fsdecode(path)], db_url, tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["added"] == 2
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT array_agg(DISTINCT source) FROM dnc") == ["registre-\\xe9t\\xe9.txt"]
