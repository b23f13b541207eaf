"""DNC imports: a file cut into parts and normalised by child processes reads exactly as
one text stream would, and the import reports and merges the same whatever the cut."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dialer.intake import dnc, dnc_lines, phones

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def as_one_stream(data: bytes, region: str = "US") -> dict[str, Any]:
    """The reading the import promises, written the plain way: the bytes as one text
    stream with universal line ends (what the import did before it was cut in parts)."""
    out: dict[str, Any] = {"rows": [], "invalid": [], "lines": 0}
    reader = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="replace", newline="")
    first = True
    for n, raw in enumerate(reader, start=1):
        out["lines"] = n
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        number, _, rest = line.replace(";", ",").replace("\t", ",").partition(",")
        number = number.strip().strip('"')
        if first:
            first = False
            if not any(ch.isdigit() for ch in number):
                continue
        e164, why = phones.normalise(number, region)
        expiry = None
        if e164 is not None and rest.strip():
            try:
                expiry = dnc_lines.parse_expiry(rest.split(",")[0].strip('" '))
            except ValueError:
                e164, why = None, f"expires_at {rest.strip()[:40]!r} is not an ISO date"
        if e164 is None:
            out["invalid"].append({"line": n, "value": line[:64].translate(dnc_lines._ESC), "reason": why})
            continue
        out["rows"].append(f"{n}\t{e164}\t{expiry.isoformat() if expiry else chr(92) + 'N'}")
    return out


def read_in_parts(path: Path, parts: int, chunk_lines: int = 7) -> dict[str, Any]:
    job = dnc_lines.DncJob("US", chunk_lines=chunk_lines)
    out: dict[str, Any] = {"rows": [], "invalid": [], "lines": 0, "read": 0}
    ranges = dnc_lines.split_parts(path, parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    for start, end in ranges:
        for chunk in dnc_lines.iter_part(path, start, end, job):
            out["rows"] += chunk.data.decode().splitlines()
            out["invalid"] += chunk.samples
            out["lines"] = max(out["lines"], chunk.lines)
            out["read"] += chunk.read
    out["rows"].sort(key=lambda r: int(r.split("\t")[0]))
    return out


TRICKY = [
    b"\xef\xbb\xbfphone\n4155550100\n\n# a comment\n(415) 555-0101;2027-01-01\n",
    b"# lists start with comments\n\n  \nnumber,expires_at\r\n+14155550102,2027-01-01T00:00:00Z\r\n"
    b"bad-number\r\n4155550103\t2027-02-01\r\n\"4155550104\",\"2027-03-01\"\r\n",
    b"4155550105\r4155550106\r\nnot a date one,\n4155550107,never\n4155550108",  # lone \r, no final \n
    b"4155550109\n\xff\xfe broken bytes\n41555501\xc3\n+1 415 555 0110\n",
    b"2125550111\n" * 3 + b"\n" * 5 + b"#\n4155550112\n",
]


@pytest.mark.parametrize("data", TRICKY)
@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_parts_read_as_one_stream(tmp_path: Path, data: bytes, parts: int) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(data * 40)  # long enough to be cut, header only at the top
    expected = as_one_stream(data * 40)
    got = read_in_parts(path, parts)
    assert got["rows"] == expected["rows"]
    first = sorted(got["invalid"], key=lambda s: s["line"])[: dnc_lines.MAX_SAMPLES]
    assert first == expected["invalid"][: dnc_lines.MAX_SAMPLES]
    assert got["lines"] == expected["lines"]
    assert got["read"] == path.stat().st_size


def test_the_thread_path_reads_the_same(tmp_path: Path) -> None:
    for data in TRICKY:
        expected = as_one_stream(data)
        chunks = list(dnc_lines.iter_stream(io.BytesIO(data), dnc_lines.DncJob("US", chunk_lines=2)))
        rows = [r for c in chunks for r in c.data.decode().splitlines()]
        assert rows == expected["rows"]
        assert [s for c in chunks for s in c.samples] == expected["invalid"]
        assert max(c.lines for c in chunks) == expected["lines"]
        assert sum(c.read for c in chunks) == len(data)


def test_a_cut_never_takes_the_header_away_from_the_first_part(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"#" * 100 + b"\n" + b"\n" * 50 + b"phone\n" + b"4155550100\n" * 10)
    ranges = dnc_lines.split_parts(path, 8)
    head = path.read_bytes()[ranges[0][0]:ranges[0][1]]
    assert b"phone\n" in head
    assert read_in_parts(path, 8)["rows"] == as_one_stream(path.read_bytes())["rows"]


def test_no_line_end_near_the_top_means_one_part(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"4155550100\r" * 200_000)  # old Mac line ends only
    assert dnc_lines.split_parts(path, 4) == [(0, path.stat().st_size)]
    got = read_in_parts(path, 4, chunk_lines=50_000)
    assert got["lines"] == 200_000 and len(got["rows"]) == 200_000


async def test_a_file_in_child_processes_merges_like_one_stream(pool: asyncpg.Pool, tmp_path: Path) -> None:
    path = tmp_path / "registry.txt"
    n = 300_000
    with path.open("w") as f:
        f.write("phone,expires_at\n")
        for i in range(n):
            f.write(f"{[201, 212, 415, 312][i % 4]}{2000000 + i // 4:07d}\n")
        # a repeat: the later expiry wins; a bad line; a number without expiry wins over both
        f.write("2015550199,2027-01-01\n2015550199,2028-01-01\nnot-a-number\n")
        f.write("4155550100,2027-01-01\n4155550100\n")
    assert path.stat().st_size > dnc.PROCESS_THRESHOLD_BYTES  # child processes, not a thread
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO dnc (e164, source) VALUES ('+13122000000', 'old')")
    seen: list[int] = []
    report = await dnc.import_file(pool, path, region="US", source="registry", now=NOW, targets={}, parts=3,
                                   on_progress=seen.append)
    assert seen[-1] == path.stat().st_size and seen == sorted(seen)
    assert report.lines == n + 6 and report.valid == n + 4 and report.invalid == 1
    assert report.invalid_samples == [{"line": n + 4, "value": "not-a-number",
                                       "reason": report.invalid_samples[0]["reason"]}]
    assert report.added == n + 1 and report.updated == 1
    async with pool.acquire() as conn:
        rows = {r["e164"]: r for r in await conn.fetch(
            "SELECT * FROM dnc WHERE e164 IN ('+12015550199', '+14155550100', '+13122000000')")}
        total = await conn.fetchval("SELECT count(*) FROM dnc")
    assert total == n + 2
    assert rows["+12015550199"]["expires_at"] == datetime(2028, 1, 1, tzinfo=UTC)
    assert rows["+14155550100"]["expires_at"] is None
    assert rows["+13122000000"]["source"] == "old"  # listed for good already: nothing longer to add


async def test_a_line_whose_expiry_has_passed_is_invalid(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """It protects nobody, yet it cancelled the number's calls as if listed (the API and
    the CLI refuse such an expiry)."""
    body = f"number,expires_at\n4155550100,{(NOW - timedelta(days=1)).date()}\n4155550101,{NOW.isoformat()}\n" \
           f"4155550102,{(NOW + timedelta(days=1)).isoformat()}\n"
    report = await dnc.import_bytes(pool, body.encode(), region="US", source="registry", now=NOW, targets={})
    assert (report.valid, report.invalid, report.added) == (1, 2, 1)
    assert [(s["line"], s["reason"]) for s in report.invalid_samples] == [
        (2, f"expires_at '{(NOW - timedelta(days=1)).date()}' is in the past"),
        (3, f"expires_at '{NOW.isoformat()}' is in the past")]
    async with pool.acquire() as conn:
        assert [r["e164"] for r in await conn.fetch("SELECT e164 FROM dnc")] == ["+14155550102"]


async def test_an_expiry_offset_postgresql_does_not_take_is_read_in_utc(pool: asyncpg.Pool) -> None:
    """Python reads offsets up to ±23:59, PostgreSQL only to ±15:59: the COPY failed (a
    500 on the API, a traceback from the CLI)."""
    body = b"4155550100,2030-01-01T00:00:00+16:00\n4155550101,0001-01-01T00:00:00+23:59\n"
    report = await dnc.import_bytes(pool, body, region="US", source="registry", now=NOW, targets={})
    assert (report.valid, report.invalid) == (1, 1)
    assert report.invalid_samples[0]["reason"] == "expires_at '0001-01-01T00:00:00+23:59' is out of range"
    async with pool.acquire() as conn:
        got = await conn.fetchval("SELECT expires_at FROM dnc WHERE e164 = '+14155550100'")
    assert got == datetime(2029, 12, 31, 8, tzinfo=UTC)


async def test_a_number_listed_meanwhile_by_another_transaction_is_counted_once(
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    """The merge inserts without ON CONFLICT; a number another transaction lists while the
    import runs makes it fall back to the row-by-row merge, with the same outcome."""
    import asyncio

    path = tmp_path / "list.txt"
    path.write_bytes(b"4155550100\n4155550101\n4155550102\n")
    async with pool.acquire() as other:
        tx = other.transaction()
        await tx.start()
        await other.execute("INSERT INTO dnc (e164, source) VALUES ('+14155550101', 'api')")
        task = asyncio.create_task(dnc.import_file(pool, path, region="US", source="file", now=NOW, targets={}))
        async with pool.acquire() as conn:
            for _ in range(500):  # the import's insert waits for the uncommitted row
                if await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type"
                                       " = 'Lock' AND datname = current_database()"):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the import never waited for the other transaction")
        await tx.commit()
    report = await task
    assert (report.added, report.updated, report.valid) == (2, 1, 3)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT e164, source FROM dnc ORDER BY e164")
    assert [(r["e164"], r["source"]) for r in rows] == [
        ("+14155550100", "file"), ("+14155550101", "api"), ("+14155550102", "file")]  # api's: as long


def test_a_normalising_child_imports_only_the_parsing_side() -> None:
    """What a child of an import loads (the pipeline's worker and dnc_lines): not the
    lifecycle, dispatch or phonenumbers' geocoder, which cost each child 0.9 s before its
    first line when the child side lived in intake/dnc.py."""
    code = ("import sys, dialer.intake.pipeline, dialer.intake.dnc_lines, dialer.intake.leads; "
            "print(sorted(m for m in sys.modules if m.startswith(('dialer.lifecycle', 'dialer.dispatch', "
            "'dialer.store', 'phonenumbers.geocoder', 'asyncpg'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_an_import_starts_with_small_chunks_that_grow_to_chunk_lines() -> None:
    data = "".join(f"415{2000000 + i:07d}\n" for i in range(30_000)).encode()
    job = dnc_lines.DncJob("US", chunk_lines=10_000, first_chunk_lines=500)
    chunks = list(dnc_lines.iter_stream(io.BytesIO(data), job))
    assert [c.valid for c in chunks] == [500, 2_000, 8_000, 10_000, 9_500]
    assert sum(c.read for c in chunks) == len(data)
