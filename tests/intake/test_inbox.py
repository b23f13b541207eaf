"""The inbox, driven in-process against a real PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import openpyxl
import pytest

from dialer.clock import FakeClock
from dialer.intake.files import FileIngestor
from dialer.intake.inbox import Inbox
from dialer.intake.readers.xlsxfile import MAX_SHARED_STRINGS_BYTES
from tests.intake.workbooks import workbook

ROOT = Path(__file__).resolve().parents[2]


def drop(inbox: Inbox, name: str, data: bytes | str, target: str | None = None) -> Path:
    d = inbox.root / target if target else inbox.root
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


async def settle_and_scan(inbox: Inbox, clock: FakeClock) -> int:
    await inbox.scan_once()  # first sighting
    clock.advance(inbox.settings.settle_s + 0.01)
    return await inbox.scan_once()


def report(inbox: Inbox, name: str) -> dict[str, Any]:
    day = inbox.clock.now().astimezone().date().isoformat()
    p = inbox.root / "processed" / day / f"{name}.report.json"
    return dict(json.loads(p.read_text()))


async def test_example_file_is_processed_with_a_full_report(inbox: Inbox, clock: FakeClock,
                                                           pool: asyncpg.Pool) -> None:
    drop(inbox, "leads.csv", (ROOT / "examples" / "leads.csv").read_bytes())
    assert await settle_and_scan(inbox, clock) == 1
    rep = report(inbox, "leads.csv")
    data_rows = len((ROOT / "examples" / "leads.csv").read_text().strip().splitlines()) - 1
    c = rep["counts"]
    assert c["rows"] == data_rows
    assert c["accepted"] + c["invalid"] + c["duplicate"] + c["dnc"] == data_rows
    assert len(rep["rejected"]) == c["invalid"] + c["duplicate"] + c["dnc"]
    by_line = {r["line"]: r for r in rep["rejected"]}
    assert by_line[12]["outcome"] == "duplicate" and "line 2" in by_line[12]["reason"]
    assert by_line[13]["outcome"] == "invalid" and by_line[13]["reason"].startswith("number:")
    assert by_line[15]["reason"] == "number: missing"
    assert "unknown agent(s) dave" in by_line[16]["reason"]
    assert not (inbox.root / "leads.csv").exists()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE state = 'pending'") == c["accepted"]
        assert await conn.fetchval("SELECT count(*) FROM calls") == c["rows"]  # one row per input row


async def test_a_quote_never_closed_accounts_for_every_line_it_swallowed(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool) -> None:
    lines = ["number,note", *(f"+1415555{i:04d},ok" for i in range(2, 8)),
             '+14155559404,"unterminated', "+14155559405,next", "+14155559406,more",
             "+14155559407,last"]
    drop(inbox, "quote.csv", "\n".join(lines) + "\n")
    assert await settle_and_scan(inbox, clock) == 1
    rep = report(inbox, "quote.csv")
    assert rep["counts"] == {"rows": len(lines) - 1, "accepted": 6, "invalid": 4, "duplicate": 0,
                             "dnc": 0}
    assert [(r["line"], r["outcome"]) for r in rep["rejected"]] == [(n, "invalid") for n in range(8, 12)]
    assert rep["rejected"][0]["reason"] == ("malformed CSV: a quoted field opened here is never "
                                            "closed; lines 8-11 are inside it")
    assert all("opened on line 8, which is never closed" in r["reason"] for r in rep["rejected"][1:])
    async with pool.acquire() as conn:
        dialable = await conn.fetch("SELECT line FROM calls WHERE state = 'pending' ORDER BY line")
    assert [r["line"] for r in dialable] == list(range(2, 8))


async def test_a_file_is_taken_only_once_it_has_settled(inbox: Inbox, clock: FakeClock) -> None:
    p = drop(inbox, "a.csv", "number\n+14155550100\n")
    assert await inbox.scan_once() == 0
    clock.advance(0.1)
    with p.open("a") as f:
        f.write("+14155550101\n")
    assert await inbox.scan_once() == 0  # changed: the clock starts again
    clock.advance(0.15)
    assert await inbox.scan_once() == 0
    clock.advance(0.1)
    assert await inbox.scan_once() == 1
    assert report(inbox, "a.csv")["counts"]["accepted"] == 2


async def test_a_renamed_in_file_is_taken_at_once(inbox: Inbox) -> None:
    p = drop(inbox, "b.csv.part", "number\n+14155550100\n")
    assert await inbox.scan_once() == 0  # *.part is ignored
    final = p.with_name("b.csv")
    os.rename(p, final)
    inbox.note_moved_in(final)  # what the inotify watcher does on IN_MOVED_TO
    assert await inbox.scan_once() == 1


@pytest.mark.parametrize("name", [".hidden.csv", "x.tmp", "y.part", "BIG.TMP", "z.csv.Part"])
@pytest.mark.parametrize("target", [None, "sales"])
async def test_ignored_names(inbox: Inbox, clock: FakeClock, name: str, target: str | None) -> None:
    p = drop(inbox, name, "number\n+14155550100\n", target=target)
    assert await settle_and_scan(inbox, clock) == 0
    assert p.exists()


@pytest.mark.parametrize("name", ["customers.results.csv", "calls.error.txt", "leads.report.json"])
async def test_a_name_like_our_outputs_is_a_lead_file_like_any_other(
        inbox: Inbox, clock: FakeClock, name: str) -> None:
    # our outputs are written under processed/ and failed/, which are never scanned
    data = '[{"number": "+14155550100"}]' if name.endswith(".json") else "number\n+14155550100\n"
    drop(inbox, name, data, target="sales")
    assert await settle_and_scan(inbox, clock) == 1
    assert report(inbox, name)["counts"]["accepted"] == 1


async def test_subfolder_picks_the_target(make_settings: Any, pool: asyncpg.Pool, clock: FakeClock) -> None:
    s = make_settings(
        settle_s=0.2,
        targets={
            "sales": {"queue_id": "1"},
            "renewals": {"queue_id": "2", "default_region": "GB"},
        },
    )
    box = Inbox(s, FileIngestor(pool, s, clock), clock)
    box.ensure_dirs()
    drop(box, "r.csv", "mobile\n07911 123456\n", target="renewals")
    assert await settle_and_scan(box, clock) == 1
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT target, e164 FROM calls")
    assert dict(row) == {"target": "renewals", "e164": "+447911123456"}


async def test_same_content_twice_points_at_the_first_batch(inbox: Inbox, clock: FakeClock,
                                                            pool: asyncpg.Pool) -> None:
    body = "number\n+14155550100\n+14155550101\n"
    drop(inbox, "one.csv", body)
    await settle_and_scan(inbox, clock)
    first = report(inbox, "one.csv")
    drop(inbox, "two.csv", body)
    await settle_and_scan(inbox, clock)
    second = report(inbox, "two.csv")
    assert second["result"] == "duplicate"
    assert second["duplicate_of"]["batch_id"] == first["batch_id"]
    assert second["duplicate_of"]["file"] == "one.csv"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE state = 'pending'") == 2
    # and the same name again does not overwrite the first file or its report
    drop(inbox, "one.csv", body)
    await settle_and_scan(inbox, clock)
    day = clock.now().astimezone().date().isoformat()
    assert (inbox.root / "processed" / day / "one-2.csv.report.json").exists()


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("bin.csv", bytes(range(256)) * 64, "binary"),
        ("nonum.csv", "name,company\nAnn,Acme\n", "no number column"),
        ("empty.csv", "", "empty"),
        ("trunc.json", '[{"number": "+14155550100"}, {"number": "+1415', "JSON"),
        ("notzip.xlsx", b"PK\x03\x04 this is not really a zip", "xlsx"),
        ("notes.docx", b"whatever", "unsupported file type"),
        ("shape.json", '{"rows": []}', "leads"),
    ],
)
async def test_unreadable_files_go_to_failed_with_a_reason(inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool,
                                                           name: str, data: bytes | str, needle: str) -> None:
    drop(inbox, name, data)
    await settle_and_scan(inbox, clock)
    assert (inbox.root / "failed" / name).exists()
    err = (inbox.root / "failed" / f"{name}.error.txt").read_text()
    assert needle.lower() in err.lower()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls") == 0
        assert await conn.fetchval("SELECT count(*) FROM leads") == 0


def special(kind: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a named pipe, a listening unix socket or a device node at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        monkeypatch.chdir(path.parent)  # a socket's path must fit in 108 bytes: bound relative
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path.name)
        sock.listen()
        sock.close()  # the socket file stays
    else:
        if os.geteuid() != 0:
            pytest.skip("making a device node takes root")
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # as /dev/null
        except PermissionError:
            pytest.skip("no CAP_MKNOD here")


@pytest.mark.parametrize(("kind", "what", "test"), [
    ("fifo", "a named pipe (FIFO)", stat.S_ISFIFO),
    ("socket", "a unix socket", stat.S_ISSOCK),
    ("device", "a character device node", stat.S_ISCHR),
])
@pytest.mark.parametrize("target", [None, "sales"])
async def test_a_pipe_socket_or_device_named_like_a_lead_file_goes_to_failed_never_opened(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, kind: str, what: str, test: Callable[[int], bool],
        target: str | None) -> None:
    """Not left in the inbox for good, unsaid: once settled it is moved to failed/ as it is,
    with a note saying what it is (opening a FIFO would wait for a writer); the files beside
    it are taken as ever."""
    d = inbox.root / target if target else inbox.root
    d.mkdir(exist_ok=True)
    special(kind, d / "w4.csv", monkeypatch)
    drop(inbox, "ok.csv", "number\n+14155550100\n", target)
    with caplog.at_level(logging.WARNING, logger="dialer.intake.inbox"):
        assert await settle_and_scan(inbox, clock) == 2
        assert await settle_and_scan(inbox, clock) == 0  # once
    moved = inbox.root / "failed" / "w4.csv"
    assert test(moved.lstat().st_mode) and not os.path.lexists(d / "w4.csv")
    assert (inbox.root / "failed" / "w4.csv.error.txt").read_text() == (
        f"w4.csv is {what}, not a file: the inbox reads only regular files (CSV, JSON, xlsx).\n"
        "target: sales\n"
        "Nothing was read from it (it was never opened): it was moved here as it was.\n")
    assert [r.getMessage() for r in caplog.records] == ["inbox entry is not a file: moved to failed/"]
    assert report(inbox, "ok.csv")["counts"]["accepted"] == 1
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM batches") == 1


async def test_a_workbook_bomb_goes_to_failed_with_the_limit_it_broke(inbox: Inbox, clock: FakeClock,
                                                                     pool: asyncpg.Pool) -> None:
    data = workbook(MAX_SHARED_STRINGS_BYTES + (16 << 20))  # about 200 KB on disk, 80 MiB unpacked
    drop(inbox, "bomb.xlsx", data)
    await settle_and_scan(inbox, clock)
    assert (inbox.root / "failed" / "bomb.xlsx").exists()
    err = (inbox.root / "failed" / "bomb.xlsx.error.txt").read_text()
    assert "shared-strings table (xl/sharedStrings.xml) unpacks to" in err
    assert f"over the {MAX_SHARED_STRINGS_BYTES:,}-byte limit" in err
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM leads") == 0


async def test_header_only_file_is_processed_with_zero_rows(inbox: Inbox, clock: FakeClock) -> None:
    drop(inbox, "h.csv", "number,priority\n")
    await settle_and_scan(inbox, clock)
    assert report(inbox, "h.csv")["counts"]["rows"] == 0


async def test_formats_json_ndjson_xlsx(inbox: Inbox, clock: FakeClock, tmp_path: Path) -> None:
    drop(inbox, "a.json", json.dumps({"leads": [{"phone": "+14155550100", "lead_id": 7},
                                                {"phone": "bad"}]}))
    drop(inbox, "b.ndjson", '{"Mobile": "+14155550102"}\n\nnot json\n{"mobile": "+14155550103"}\n')
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["Phone Number", "Priority", "Company"])
    ws.append(["+14155550104", 3, "Acme"])
    ws.append([4155550105, 1, "Globex"])
    wb.save(inbox.root / "c.xlsx")
    await inbox.scan_once()
    clock.advance(1)
    assert await inbox.scan_once() == 3
    a = report(inbox, "a.json")
    assert a["counts"] == {"rows": 2, "accepted": 1, "invalid": 1, "duplicate": 0, "dnc": 0}
    b = report(inbox, "b.ndjson")
    assert b["counts"]["accepted"] == 2 and b["rejected"][0]["line"] == 3
    c = report(inbox, "c.xlsx")
    assert c["counts"]["accepted"] == 2


async def test_a_json_lead_over_the_line_limit_is_rejected_with_its_size(inbox: Inbox, clock: FakeClock,
                                                                         pool: asyncpg.Pool) -> None:
    # as a CSV or NDJSON line over max_line_kb; it used to be parsed whole, in time growing
    # with the square of its size, while the file (and the drain) waited
    big = {"phone": "+14155550101", "notes": "x" * (3 << 20)}
    text = json.dumps({"leads": [{"phone": "+14155550100"}, big, {"phone": "+14155550102"}]})
    drop(inbox, "mono.json", text)  # over 2 MiB: read in the intake worker process
    await settle_and_scan(inbox, clock)
    rep = report(inbox, "mono.json")
    assert rep["counts"] == {"rows": 3, "accepted": 2, "invalid": 1, "duplicate": 0, "dnc": 0}
    size, start = len(json.dumps(big)), text.index('{"phone": "+14155550101"')
    (rejected,) = rep["rejected"]
    assert rejected["line"] == 2 and rejected["outcome"] == "invalid"
    assert rejected["reason"] == f"item is longer than 1048576 bytes ({size} bytes from byte {start})"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT array_agg(e164 ORDER BY line) FROM leads WHERE state = 'pending'") == [
            "+14155550100", "+14155550102"]


async def test_cp1252_and_semicolons(inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool) -> None:
    drop(inbox, "excel.csv", "Nummer;number;Firma\r\nx;+14155550100;Müller GmbH\r\n".encode("cp1252"))
    await settle_and_scan(inbox, clock)
    async with pool.acquire() as conn:
        fields = await conn.fetchval("SELECT fields FROM leads")
    assert fields == {"Nummer": "x", "Firma": "Müller GmbH"}


async def test_ten_thousand_invalid_rows_are_all_reported(inbox: Inbox, clock: FakeClock) -> None:
    drop(inbox, "bad.csv", "number\n" + "".join(f"00{i}\n" for i in range(10_000)))
    await settle_and_scan(inbox, clock)
    rep = report(inbox, "bad.csv")
    assert rep["counts"]["invalid"] == 10_000
    assert [r["line"] for r in rep["rejected"]] == list(range(2, 10_002))


async def test_a_batch_that_ends_before_its_file_is_filed_still_gets_its_results(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool) -> None:
    """Every row rejected: the batch has nothing live from its finalise on. A completion
    sweep (this instance's or another's) that comes before the file is filed waits for the
    filing, so the results file is written beside it, not lost."""
    from dialer.results.files import Completion

    completion = Completion(pool, clock)
    write_report = inbox.ingestor.write_report

    swept: list[list[Any]] = []

    async def a_sweep_first(outcome: Any, dest: Path) -> dict[str, Any]:
        swept.append(await completion.check())
        return await write_report(outcome, dest)

    inbox.ingestor.write_report = a_sweep_first  # type: ignore[method-assign]
    drop(inbox, "bad.csv", "number\nnope\n12\n")
    await settle_and_scan(inbox, clock)
    assert swept == [[]]  # finalised, not yet filed: not done yet
    completion.sweep_soon()  # what filing a file does (on_ingested)
    assert len(await completion.check()) == 1
    day = clock.now().astimezone().date().isoformat()
    results = inbox.root / "processed" / day / "bad.csv.results.csv"
    assert results.read_text().count("\n") == 3  # the header and both rejected leads
    import csv

    rows = list(csv.DictReader(results.open()))
    assert [(r["state"], r["attempts"]) for r in rows] == [("invalid", "0"), ("invalid", "0")]  # never dialed


async def test_the_results_file_shows_lead_text_never_a_formula(inbox: Inbox, clock: FakeClock,
                                                                pool: asyncpg.Pool) -> None:
    """What a spreadsheet would evaluate gets a leading ' (OWASP CSV injection); numbers as
    typed, E.164 or national, stay byte for byte."""
    from dialer.results.files import Completion

    drop(inbox, "evil.csv", 'number,external_id,note\n'
                            '=1+1,"=HYPERLINK(""http://evil.example"",""x"")",=2+2\n'
                            '@SUM(1+1),+1 (415) 555-01,@x\n'
                            '+1 (415) 555-01,-2+3,\n')
    await settle_and_scan(inbox, clock)
    assert len(await Completion(pool, clock).check()) == 1  # every row invalid: done at once
    day = clock.now().astimezone().date().isoformat()
    assert (inbox.root / "processed" / day / "evil.csv.results.csv").read_bytes() == (
        b"number,external_id,state,outcome,attempts,agent,ended_at,number_reached,attempts_per_number\r\n"
        b"""'=1+1,"'=HYPERLINK(""http://evil.example"",""x"")",invalid,,0,,,,\r\n"""
        b"'@SUM(1+1),+1 (415) 555-01,invalid,,0,,,,\r\n"
        b"+1 (415) 555-01,-2+3,invalid,,0,,,,\r\n")


async def test_a_file_in_a_folder_that_is_no_target_goes_to_failed_naming_the_targets(
        inbox: Inbox, clock: FakeClock) -> None:
    drop(inbox, "x.csv", "number\n+14155550100\n", target="nosuch")
    await settle_and_scan(inbox, clock)
    failed = list((inbox.root / "failed").glob("x.csv*"))
    assert sorted(p.name for p in failed) == ["x.csv", "x.csv.error.txt"], failed
    text = (inbox.root / "failed" / "x.csv.error.txt").read_text()
    assert "unknown target 'nosuch'" in text and "sales" in text


@pytest.mark.parametrize("name", ["a" * 251 + ".csv", "😀" * 62 + ".csv"], ids=["ascii", "emoji"])
async def test_a_name_as_long_as_the_file_system_takes_is_filed_with_its_report(
        inbox: Inbox, clock: FakeClock, name: str) -> None:
    drop(inbox, name, "number\n+14155550100\n")  # 255 and 252 bytes: "<name>.report.json" would not fit
    assert await settle_and_scan(inbox, clock) == 1
    assert not (inbox.root / name).exists()
    day = inbox.root / "processed" / clock.now().astimezone().date().isoformat()
    filed = [p for p in day.iterdir() if not p.name.endswith(".report.json")]
    assert len(filed) == 1 and filed[0].name.endswith(".csv") and name.startswith(filed[0].name[:-4])
    assert json.loads(filed[0].with_name(filed[0].name + ".report.json").read_text())["counts"]["accepted"] == 1


@pytest.mark.parametrize("how", ["mv", "cp"])  # cp (scp, SMB) writes over the same inode
async def test_a_file_replaced_while_it_is_read_stays_as_a_new_drop(inbox: Inbox, clock: FakeClock,
                                                                     pool: asyncpg.Pool, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     how: str) -> None:
    """The file moved to processed/ was the newcomer, under the first one's report: its
    leads were never read. Now it stays in the inbox and is taken at a later scan."""
    path = drop(inbox, "rep.csv", "number\n+14155550100\n+14155550101\n")
    newer = tmp_path / "newer.csv"
    newer.write_text("number\n+14155550102\n")
    real = FileIngestor.ingest

    async def then_replaced(self: FileIngestor, *args: Any, **kwargs: Any) -> Any:
        out = await real(self, *args, **kwargs)
        if newer.exists():  # as `mv newer.csv inbox/rep.csv` (or cp) while it was read
            if how == "mv":
                os.replace(newer, path)
            else:
                path.write_bytes(newer.read_bytes())
                newer.unlink()
        return out

    monkeypatch.setattr(FileIngestor, "ingest", then_replaced)
    assert await settle_and_scan(inbox, clock) == 1
    assert report(inbox, "rep.csv")["counts"]["accepted"] == 2
    assert path.read_text() == "number\n+14155550102\n"  # not moved under the first one's report
    day = clock.now().astimezone().date().isoformat()
    assert not (inbox.root / "processed" / day / "rep.csv").exists()
    assert await settle_and_scan(inbox, clock) == 1  # the newcomer, as a drop of its own
    assert not path.exists() and report(inbox, "rep-2.csv")["counts"]["accepted"] == 1
    async with pool.acquire() as conn:
        numbers = {r["e164"] for r in await conn.fetch("SELECT e164 FROM calls")}
    assert numbers == {"+14155550100", "+14155550101", "+14155550102"}
