"""The console's pages in-process: upload through the inbox's intake, the report, downloads,
search and paging, cancel, pause/resume, the do-not-call list."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import asyncpg
import openpyxl
import pytest
from fastapi import FastAPI

from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.intake.submit import Submission, submit
from dialer.results.files import COLUMNS
from tests.ui.conftest import Console

ROOT = Path(__file__).resolve().parents[2]
LEADS = ROOT / "examples" / "leads.csv"
BATCH_URL = re.compile(r"^/ui/batches/([0-9a-f-]{36})\?upload=(\w+)&name=")


async def upload(console: Console, name: str, content: bytes, target: str = "sales") -> str:
    r = await console.c.post("/ui/upload", data={"csrf": console.csrf, "target": target},
                             files={"file": (name, content, "text/csv")})
    assert r.status_code == 303, r.text[:2000]
    return str(r.headers["location"])


async def test_upload_goes_through_intake_and_shows_its_report(console: Console, settings: Settings,
                                                              pool: asyncpg.Pool, clock: FakeClock) -> None:
    loc = await upload(console, "leads.csv", LEADS.read_bytes())
    m = BATCH_URL.match(loc)
    assert m and m.group(2) == "ingested", loc
    bid = m.group(1)
    page = await console.c.get(loc)
    assert page.status_code == 200
    html = page.text
    assert "leads.csv was received" in html
    assert "upload · leads.csv" in html
    # the report: every rejected row with its line, the number as typed and the reason
    rows = re.findall(r'<td data-label="Line" class="num">(\d+)</td>', html.split('id="calls-h"')[0])
    assert rows == ["12", "13", "15", "16"]
    assert "12345" in html and "not a valid phone number" in html
    assert "(empty)" in html and "number: missing" in html and "unknown agent(s) dave" in html
    assert "duplicate of line 2 in this batch" in html
    # calls: as typed and E.164
    assert "(415) 555-0101" in html and "+14155550101" in html
    # the file is kept with its report, as the inbox does; nothing is left half-written
    day = clock.now().astimezone().date().isoformat()
    kept = settings.state_dir / "uploads" / day
    assert (kept / "leads.csv").read_bytes() == LEADS.read_bytes()
    on_disk = json.loads((kept / "leads.csv.report.json").read_text())
    assert on_disk["batch_id"] == bid and on_disk["counts"]["rows"] == 15
    assert not list((settings.state_dir / "uploads" / ".incoming").iterdir())
    async with pool.acquire() as conn:
        b = await conn.fetchrow("SELECT source, source_name, state FROM batches WHERE id = $1", m.group(1))
    assert (b["source"], b["source_name"], b["state"]) == ("api", "leads.csv", "ingested")

    # downloads: report.json, results.csv, results.xlsx (the same rows)
    rep = await console.c.get(f"/ui/batches/{bid}/report.json")
    assert rep.status_code == 200 and "leads.csv.report.json" in rep.headers["content-disposition"]
    report = rep.json()
    assert [x["line"] for x in report["rejected"]] == [12, 13, 15, 16]
    assert report["counts"] == on_disk["counts"]
    got_csv = await console.c.get(f"/ui/batches/{bid}/results.csv")
    assert got_csv.status_code == 200
    csv_rows = list(csv.reader(io.StringIO(got_csv.text)))
    assert tuple(csv_rows[0]) == COLUMNS and len(csv_rows) == 16
    xl = await console.c.get(f"/ui/batches/{bid}/results.xlsx")
    assert xl.status_code == 200
    assert xl.headers["content-type"].startswith("application/vnd.openxmlformats")
    ws = openpyxl.load_workbook(io.BytesIO(xl.content)).active
    assert ws is not None
    xl_rows = [["" if v is None else str(v) for v in row] for row in ws.iter_rows(values_only=True)]
    assert xl_rows[0][:6] == list(COLUMNS[:6]) and xl_rows[0][6].startswith("ended_at")
    assert [r[:6] for r in xl_rows[1:]] == [r[:6] for r in csv_rows[1:]]
    assert len(xl_rows) == 16  # one row per lead of the file
    assert {r[1] for r in xl_rows[1:]} - {""} <= {f"crm-{i}" for i in range(1001, 1016)}
    assert {r[0] for r in xl_rows[1:]} >= {"+14155550101", "12345", "+442079460018"}
    assert not list((settings.state_dir / "uploads" / ".outgoing").iterdir())

    # the same content again: nothing new, the page points at the first batch
    again = await upload(console, "leads-copy.csv", LEADS.read_bytes())
    m2 = BATCH_URL.match(again)
    assert m2 and m2.group(1) == bid and m2.group(2) == "duplicate"
    assert "same content" in (await console.c.get(again)).text
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM batches") == 1


async def test_results_downloads_show_lead_text_never_a_formula(console: Console) -> None:
    """An external id, a custom field or a number as typed that starts with = or @: the
    workbook holds it as a string cell, shown as typed; results.csv gives it a leading '
    (OWASP CSV injection); numbers, E.164 or national, are unchanged."""
    link = '=HYPERLINK("http://evil.example","x")'
    buf = io.StringIO()
    csv.writer(buf).writerows([["number", "external_id", "note"],
                               ["+14155550100", link, "=1+2"],
                               ["+14155550101", "@SUM(1+1)", "@cmd"],
                               ["=1+1", "#N/A", ""],
                               ["+1 (415) 555-01", "-2+3", "-x"]])
    bid = (await upload(console, "evil.csv", buf.getvalue().encode())).split("/")[3].split("?")[0]

    xl = await console.c.get(f"/ui/batches/{bid}/results.xlsx")
    ws = openpyxl.load_workbook(io.BytesIO(xl.content)).active
    assert ws is not None
    cells = [c for row in ws.iter_rows(min_row=2) for c in row if c.value is not None]
    assert [c.coordinate for c in cells if c.data_type != "s" and isinstance(c.value, str)] == []
    assert not [c.coordinate for c in cells if c.data_type in ("f", "e")]
    assert [[c.value for c in row[:2]] for row in ws.iter_rows(min_row=2)] == [
        ["+14155550100", link], ["+14155550101", "@SUM(1+1)"], ["=1+1", "#N/A"], ["+1 (415) 555-01", "-2+3"]]

    got = await console.c.get(f"/ui/batches/{bid}/results.csv")
    rows = list(csv.reader(io.StringIO(got.text)))
    assert [r[:2] for r in rows[1:]] == [
        ["+14155550100", "'" + link], ["+14155550101", "'@SUM(1+1)"], ["'=1+1", "#N/A"],
        ["+1 (415) 555-01", "-2+3"]]


async def test_upload_refusals(pool: asyncpg.Pool, make_settings: object, clock: FakeClock,
                               make_client: object, settings: Settings) -> None:
    from dialer.http.app import create_app
    from dialer.http.context import AppContext
    from tests.ui.conftest import csrf_of, log_in

    small = make_settings(max_body_mb=0.01)  # type: ignore[operator]
    app = create_app(AppContext(settings=small, pool=pool, clock=clock))
    async with make_client(app) as c:  # type: ignore[operator]
        await log_in(c)
        token = csrf_of((await c.get("/ui/upload")).text)

        async def post(name: str, body: bytes, target: str = "sales") -> tuple[int, str]:
            r = await c.post("/ui/upload", data={"csrf": token, "target": target},
                             files={"file": (name, body, "application/octet-stream")})
            return r.status_code, r.text

        status, text = await post("big.csv", b"number\n" + b"+14155550100\n" * 2000)
        assert status == 413 and "over the 10 KB limit" in text
        status, text = await post("notes.pdf", b"number\n+14155550100\n")
        assert status == 415 and "only .csv, .xlsx" in text
        status, text = await post("leads.csv", b"number\n+14155550100\n", target="nope")
        assert status == 422 and "no target" in text
        status, text = await post("broken.xlsx", b"this is not a workbook")
        assert status == 422 and "was not ingested" in text
        r = await c.post("/ui/upload", data={"csrf": token, "target": "sales"},
                         files={"file": ("", b"", "application/octet-stream")})
        assert r.status_code == 422 and "Choose a file first" in r.text
    incoming = small.state_dir / "uploads" / ".incoming"
    assert not list(incoming.iterdir())
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM batches WHERE state <> 'failed'") == 0


async def _post_batch(pool: asyncpg.Pool, settings: Settings, clock: FakeClock, numbers: list[str],
                      **lead: object) -> str:
    rows = [{"number": n, "external_id": f"ext-{i}", **lead} for i, n in enumerate(numbers)]
    _, out = await submit(pool, settings, clock, Submission(target="sales", rows=rows))
    return str(out["batch_id"])


async def test_batches_newest_first_paged_with_a_live_fragment(console: Console, pool: asyncpg.Pool,
                                                                settings: Settings, clock: FakeClock) -> None:
    empty = await console.c.get("/ui/batches")
    assert "No batches yet" in empty.text and "inbox" in empty.text
    ids = []
    for i in range(23):
        ids.append(await _post_batch(pool, settings, clock, [f"+1415555{i:04d}"]))
        clock.advance(60)
    p1 = (await console.c.get("/ui/batches")).text
    found = re.findall(r'href="/ui/batches/([0-9a-f-]{36})"', p1)
    assert found == ids[::-1][:20]
    assert "Page 1 of 2" in p1 and 'data-live-state="active"' in p1
    p2 = (await console.c.get("/ui/batches?page=2")).text
    assert re.findall(r'href="/ui/batches/([0-9a-f-]{36})"', p2) == ids[::-1][20:]
    frag = await console.c.get("/ui/batches?page=1&part=rows", headers={"X-Dialer-Live": "1"})
    assert frag.status_code == 200 and "<html" not in frag.text
    assert re.findall(r'href="/ui/batches/([0-9a-f-]{36})"', frag.text) == ids[::-1][:20]
    assert 'aria-label="Calls of API: 0 of 1 calls ended (0%)"' in frag.text


async def test_calls_search_and_paging(console: Console, pool: asyncpg.Pool, settings: Settings,
                                       clock: FakeClock) -> None:
    numbers = [f"+1415555{i:04d}" for i in range(100, 220)]
    bid = await _post_batch(pool, settings, clock, numbers)
    page = (await console.c.get(f"/ui/batches/{bid}")).text
    assert page.count('data-label="E.164"') == 50
    nxt = re.search(r'href="(\?after=\d+)#calls" rel="next"', page)
    assert nxt
    page2 = (await console.c.get(f"/ui/batches/{bid}{nxt.group(1)}")).text
    assert page2.count('data-label="E.164"') == 50 and "+14155550150" in page2
    prev = re.search(r'href="(\?before=\d+)#calls" rel="prev"', page2)
    assert prev
    back = (await console.c.get(f"/ui/batches/{bid}{prev.group(1)}")).text
    assert "+14155550100" in back and "+14155550150" not in back
    # by external id, by the number typed another way, by a part of it
    hit = (await console.c.get(f"/ui/batches/{bid}", params={"q": "EXT-119"})).text
    assert hit.count('data-label="E.164"') == 1 and "+14155550219" in hit
    hit = (await console.c.get(f"/ui/batches/{bid}", params={"q": "ext-7"})).text
    assert hit.count('data-label="E.164"') == 11  # ext-7, ext-70 … ext-79
    hit = (await console.c.get(f"/ui/batches/{bid}", params={"q": "(415) 555-0199"})).text
    assert hit.count('data-label="E.164"') == 1 and "+14155550199" in hit
    hit = (await console.c.get(f"/ui/batches/{bid}", params={"q": "555021"})).text
    assert hit.count('data-label="E.164"') == 10
    miss = (await console.c.get(f"/ui/batches/{bid}", params={"q": "nobody%_"})).text
    assert "No call matches" in miss
    frag = await console.c.get(f"/ui/batches/{bid}", params={"q": "ext-119", "part": "calls"})
    assert frag.status_code == 200 and "<html" not in frag.text and "+14155550219" in frag.text
    assert (await console.c.get("/ui/batches/not-a-uuid")).status_code == 404
    assert (await console.c.get("/ui/batches/00000000-0000-0000-0000-000000000000")).status_code == 404


async def test_cancel_batch(console: Console, pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> None:
    bid = await _post_batch(pool, settings, clock, ["+14155550100", "+14155550101"])
    summary = (await console.c.get(f"/ui/batches/{bid}?part=summary")).text
    assert 'data-live-state="active"' in summary and "Cancel batch" in summary
    r = await console.post(f"/ui/batches/{bid}/cancel")
    assert r.status_code == 303 and r.headers["location"] == f"/ui/batches/{bid}?cancelled=2"
    assert "2 calls not yet sent will not be dialed" in (await console.c.get(r.headers["location"])).text
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE state = 'cancelled'") == 2
        assert await conn.fetchval("SELECT count(*) FROM call_events WHERE payload->>'by' = 'console'") == 2
    summary = (await console.c.get(f"/ui/batches/{bid}?part=summary")).text
    assert 'data-live-state="idle"' in summary and "Cancel batch" not in summary
    assert '<svg class="chart"' in summary and "cancelled" in summary


async def test_targets_pause_and_resume(console: Console, pool: asyncpg.Pool, ui_app: FastAPI) -> None:
    woken: list[int] = []
    ui_app.state.ctx.wake_dispatch = lambda: woken.append(1)
    page = (await console.c.get("/ui/targets")).text
    assert "Pause sales" in page and "running" in page and "00:00-24:00" in page
    r = await console.post("/ui/targets/sales/pause")
    assert r.status_code == 303
    page = (await console.c.get(r.headers["location"])).text
    assert "Target sales paused." in page and "Resume sales" in page and "paused (console)" in page
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT paused FROM target_state WHERE target = 'sales'") is True
    r = await console.post("/ui/targets/sales/resume")
    assert r.status_code == 303 and woken == [1]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT paused FROM target_state WHERE target = 'sales'") is False
    assert (await console.post("/ui/targets/nope/pause")).status_code == 404
    frag = await console.c.get("/ui/targets?part=list")
    assert frag.status_code == 200 and "Pause sales" in frag.text and "<html" not in frag.text


async def test_dnc_add_search_remove(console: Console, pool: asyncpg.Pool, settings: Settings,
                                     clock: FakeClock) -> None:
    empty = (await console.c.get("/ui/dnc")).text
    assert "The list is empty" in empty
    bid = await _post_batch(pool, settings, clock, ["+14155550111"])
    r = await console.c.post("/ui/dnc", data={"csrf": console.csrf, "numbers": "(415) 555-0111\nnope\n+442079460018\n",
                                              "region": "US"},
                             files={"file": ("list.txt", b"number\n4155550112\n4155550113\n", "text/plain")})
    assert r.status_code == 200, r.text[:500]
    assert "4 added" in r.text and "1 not valid" in r.text and "1 calls not yet sent were cancelled" in r.text
    assert "nope" in r.text
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT state FROM calls WHERE batch_id = $1", bid) == "cancelled"
    listing = (await console.c.get("/ui/dnc", params={"q": "415 555 011"})).text
    assert all(n in listing for n in ("+14155550111", "+14155550112", "+14155550113"))
    assert "+442079460018" not in listing
    r = await console.post("/ui/dnc/remove", {"number": "+14155550112", "q": "415"})
    assert r.status_code == 303
    after = (await console.c.get(r.headers["location"])).text
    assert "+14155550112 was removed" in after and 'value="+14155550112"' not in after
    r = await console.post("/ui/dnc/remove", {"number": "+14155550112"})
    assert "was not on the do-not-call list" in (await console.c.get(r.headers["location"])).text
    r = await console.c.post("/ui/dnc", data={"csrf": console.csrf, "numbers": "  "})
    assert r.status_code == 422


async def test_a_dnc_import_that_waited_too_long_for_a_lock_says_so_and_stores_nothing(
        console: Console, pool: asyncpg.Pool, settings: Settings, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's finalise holds its target's dedupe lock past the import's wait (30 s; here
    0.2 s): the page says nothing was imported and to retry, not a bare error."""
    from dialer.store import limits

    bid = await _post_batch(pool, settings, clock, ["+14155550111"])
    monkeypatch.setattr(limits, "BULK_BASE_S", 0.4)  # a lock is waited for half of it
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(1, hashtext('sales'))")
        try:
            r = await console.c.post("/ui/dnc", data={"csrf": console.csrf, "numbers": "(415) 555-0111\n"})
        finally:
            await holder.execute("SELECT pg_advisory_unlock(1, hashtext('sales'))")
    assert r.status_code == 503 and "Not imported: the do-not-call import waited too long" in r.text, r.text[:500]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dnc") == 0
        assert await conn.fetchval("SELECT state FROM calls WHERE batch_id = $1", bid) == "pending"


@pytest.mark.parametrize("folder", ["templates", "static"])
def test_no_asset_comes_from_another_host(folder: str) -> None:
    for f in (ROOT / "dialer" / "ui" / folder).iterdir():
        text = f.read_text()
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(src|href|url)\s*[=(]\s*[\"']?(https?:)?//", text), f.name


def test_progress_groups_chart_and_times() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from dialer.ui.render import batch_active, outcome_chart, progress, source_label, time_tag

    p = progress({"answered": 2, "no_answer": 1, "queued": 1, "pending": 4})
    assert (p.total, p.ended, p.live) == (8, 3, 5)
    assert p.summary() == "3 of 8 calls ended (37%)"
    assert abs(sum(s.pct for s in p.segments) - 100) < 1e-9
    assert {s.key: s.n for s in p.segments if s.n} == {"answered": 2, "not_reached": 1, "sent": 1, "waiting": 4}
    assert batch_active("ingested", {}) and batch_active("receiving", {})
    assert batch_active("cancelled", {"queued": 1}) and not batch_active("cancelled", {"cancelled": 3})
    assert not batch_active("done", {"answered": 1})

    svg = str(outcome_chart({"answered": 3, "busy": 1, "pending": 5}))
    assert svg.startswith('<svg class="chart"') and 'role="img"' in svg
    assert "answered: 3, busy: 1" in svg and "pending" not in svg and "3 (75%)" in svg
    assert "No call has ended yet" in str(outcome_chart({"pending": 2}))

    t = datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    tag = str(time_tag(t))
    assert 'datetime="2026-03-01T07:30:00Z"' in tag and "2026-03-01 07:30:00 UTC" in tag and "data-local" in tag
    assert str(time_tag(None, "never")) == "never"
    assert str(time_tag(datetime(2026, 3, 1, tzinfo=UTC))).count("2026-03-01 00:00:00 UTC") == 2

    assert source_label("inbox", "a.csv") == "inbox · a.csv"
    assert source_label("api", "api") == "API" and source_label("api", "api (text/csv)") == "API"
    assert source_label("api", "leads.csv") == "upload · leads.csv"


async def test_names_from_files_are_escaped(console: Console) -> None:
    loc = await upload(console, "<img src=x onerror=alert(1)>.csv", b"number\n+14155550100\n")
    page = (await console.c.get(loc)).text
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.csv" in page
    listing = (await console.c.get("/ui/batches")).text
    assert "<img src=x" not in listing
    bid = loc.split("/")[3].split("?")[0]
    r = await console.c.get(f"/ui/batches/{bid}/results.csv")
    disposition = r.headers["content-disposition"]
    assert r.status_code == 200 and disposition.startswith('attachment; filename="')
    assert disposition.count('"') == 2 and "\n" not in disposition


async def test_a_batch_page_shows_a_leads_numbers_and_the_numbers_left_out(console: Console) -> None:
    loc = await upload(console, "multi.csv",
                       b"number,number2,number3\n+14155550100,12345,+14155550101\n+14155550102,,\n")
    page = (await console.c.get(loc)).text
    assert "number 1 of 2: +14155550100, +14155550101" in page
    assert "number2: not a valid phone number for region US (the lead is dialed on its other numbers)" in page
    assert page.count("number 1 of") == 1  # a one-number lead shows just its number


async def test_a_name_longer_than_a_file_system_takes_is_cut_to_fit(console: Console, settings: Settings,
                                                                     clock: FakeClock) -> None:
    name = "😀" * 100 + ".csv"  # 100 characters, 404 bytes: no file system takes it
    loc = await upload(console, name, b"number\n+14155550100\n")
    assert BATCH_URL.match(loc), loc
    page = (await console.c.get(loc)).text
    kept = [p for p in (settings.state_dir / "uploads" / clock.now().astimezone().date().isoformat()).iterdir()
            if not p.name.endswith(".report.json")]
    assert len(kept) == 1
    cut = kept[0].name
    assert len(cut.encode()) <= 200 and cut.endswith(".csv") and cut == "😀" * 49 + ".csv"
    assert kept[0].with_name(cut + ".report.json").exists()
    assert f"{cut} was received" in page


@pytest.mark.parametrize(("raw", "expected"), [
    ("😀" * 100 + ".csv", "😀" * 49 + ".csv"),              # 4-byte characters: never half of one
    ("é" * 150 + ".xlsx", "é" * 97 + ".xlsx"),              # 2-byte ones
    ("a" * 300, "a" * 200),                                  # no extension
    ("x" * 250 + "." + "y" * 40, ("x" * 250 + "." + "y" * 40)[:200]),  # no extension that long
    ("C:\\Users\\me\\leads 😀.csv", "leads 😀.csv"),
    ("../\x00.hidden.csv", "hidden.csv"),
    ("😀" * 40, "😀" * 40),                                   # 160 bytes: kept whole
], ids=["emoji", "two-byte", "no-extension", "long-extension", "windows-path", "control-and-dots", "short"])
def test_an_uploaded_files_name_fits_in_200_bytes(raw: str, expected: str) -> None:
    from dialer.ui.forms import safe_filename

    name = safe_filename(raw)
    assert name == expected
    assert len(name.encode()) <= 200


async def test_an_upload_whose_finalise_waited_too_long_for_its_target_says_busy(
        console: Console, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another batch's finalise holds the target's lock past the wait (30 s; here 0.2 s):
    the page says the target is busy and to upload again, not a bare 500; nothing is dialed,
    and the same upload again, once the lock is free, goes through."""
    from dialer.store import limits

    monkeypatch.setattr(limits, "BULK_BASE_S", 0.4)  # a lock is waited for half of it
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(1, hashtext('sales'))")
        try:
            r = await console.c.post("/ui/upload", data={"csrf": console.csrf, "target": "sales"},
                                     files={"file": ("leads.csv", LEADS.read_bytes(), "text/csv")})
        finally:
            await holder.execute("SELECT pg_advisory_unlock(1, hashtext('sales'))")
    assert r.status_code == 503 and "is busy finishing another batch" in r.text, r.text[:500]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE state NOT IN "
                                   "('pending', 'invalid', 'duplicate', 'dnc')") == 0
        assert await conn.fetchval("SELECT count(*) FROM batches WHERE state = 'ingested'") == 0
    assert BATCH_URL.match(await upload(console, "leads.csv", LEADS.read_bytes()))


def no_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step over a whole input may run 1 ms: none over thousands of rows runs in it (what a
    big input meets on an overloaded database at 60 s plus 1 ms a row)."""
    from dialer.store import limits

    monkeypatch.setattr(limits, "BULK_BASE_S", 0.001)
    monkeypatch.setattr(limits, "BULK_ROW_S", 0.0)


THOUSANDS = "number\n" + "".join(f"+1415{2000000 + i:07d}\n" for i in range(5000))


async def test_an_upload_whose_finalise_runs_past_its_time_limit_says_so(
        console: Console, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a bare 500: the page says what happened and to upload again; nothing is dialed, and
    the same upload again goes through."""
    no_time(monkeypatch)
    r = await console.c.post("/ui/upload", data={"csrf": console.csrf, "target": "sales"},
                             files={"file": ("big.csv", THOUSANDS.encode(), "text/csv")})
    assert r.status_code == 503, r.text[:500]
    assert ("Settling the leads of big.csv was stopped: one of its steps ran past its time limit (the "
            "database may be overloaded). Nothing from this file is dialed: upload it again later.") in r.text
    assert await pool.fetchval("SELECT count(*) FROM batches WHERE state <> 'receiving'") == 0
    monkeypatch.undo()
    m = BATCH_URL.match(await upload(console, "big.csv", THOUSANDS.encode()))
    assert m and m.group(2) == "ingested"
    assert await pool.fetchval("SELECT count(*) FROM calls WHERE state = 'pending'") == 5000


async def test_a_dnc_import_that_runs_past_its_time_limit_says_so_and_stores_nothing(
        console: Console, pool: asyncpg.Pool, settings: Settings, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bid = await _post_batch(pool, settings, clock, ["+14152000001"])
    no_time(monkeypatch)
    r = await console.c.post("/ui/dnc", data={"csrf": console.csrf, "numbers": THOUSANDS})
    assert r.status_code == 503, r.text[:500]
    assert ("Not imported: the do-not-call import was stopped: one of its steps ran past the 0.001 s its "
            "5000 numbers allow; nothing of it was stored") in r.text
    assert await pool.fetchval("SELECT count(*) FROM dnc") == 0
    assert await pool.fetchval("SELECT state FROM calls WHERE batch_id = $1", bid) == "pending"
