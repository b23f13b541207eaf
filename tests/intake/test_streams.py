"""Parallel COPY streams: ids follow the lines, commits follow the file, resume is exact.

Chunks COPY on several connections at once; a chunk whose COPY ends before the one
ahead of it waits to commit, and rolls back if that one fails. Driven against a real
PostgreSQL: a big chunk beside a small one makes the small one end first.
"""

from __future__ import annotations

import io
import itertools
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.intake import batches, streams
from dialer.intake.files import FileIngestor
from dialer.intake.pipeline import Chunk, ParseJob, iter_chunks
from dialer.store.database import create_pool

HEADER = "number,priority,external_id\n"


def csv_rows(n: int) -> str:
    # every 97th row is invalid (still one calls row each); numbers are unique otherwise
    return "".join(f"{'12' if i % 97 == 0 else f'+1415{2000000 + i:07d}'},{i % 10},x{i}\n"
                   for i in range(n))


def one_chunk(n: int, batch_id: uuid.UUID, settings: Settings) -> Chunk:
    job = ParseJob(fmt="csv", batch_id=str(batch_id), rules=batches.rules_for("sales", settings.targets["sales"]),
                   chunk_rows=n + 1, first_chunk_rows=n + 1)
    chunk = next(iter_chunks(io.BytesIO((HEADER + csv_rows(n)).encode()), job))
    assert chunk.rows == n
    return chunk


def cut(chunk: Chunk, sizes: Sequence[int]) -> list[Chunk]:
    """Consecutive pieces of a chunk's lines (one COPY line per input line)."""
    lines = chunk.data.split(b"\n")[:-1]
    assert sum(sizes) == len(lines) == chunk.rows
    out, at = [], 0
    for size in sizes:
        part = lines[at:at + size]
        out.append(Chunk(b"".join(x + b"\n" for x in part), size, chunk.first_line + at,
                         chunk.first_line + at + size - 1, sum(b"\tinvalid\t" in x for x in part)))
        at += size
    return out


def spoiled(chunk: Chunk) -> Chunk:
    """The same chunk with a line COPY refuses at its end: it fails after all its rows went in."""
    return Chunk(chunk.data + b"not a COPY line\n", chunk.rows + 1, chunk.first_line, chunk.last_line + 1,
                 chunk.invalid)


async def feed(chunks: list[Chunk]) -> AsyncGenerator[Chunk, None]:
    for c in chunks:
        yield c


async def lines_and_ids(conn: asyncpg.Connection, batch_id: uuid.UUID) -> list[tuple[int, int]]:
    return [(r["line"], r["id"]) for r in
            await conn.fetch("SELECT line, id FROM calls WHERE batch_id = $1 ORDER BY line", batch_id)]


def assert_each_line_once_ids_in_line_order(got: list[tuple[int, int]], lines: range) -> None:
    assert [line for line, _ in got] == list(lines)
    ids = [i for _, i in got]
    assert all(a < b for a, b in itertools.pairwise(ids)), "ids out of line order"


async def test_a_later_chunk_that_ends_first_waits_and_rolls_back_when_the_one_ahead_fails(
    pool: asyncpg.Pool, settings: Settings, clock: FakeClock
) -> None:
    async with pool.acquire() as conn:
        bid = await batches.create_batch(conn, target="sales", source="cli", now=clock.now())
        whole = one_chunk(41_000, bid, settings)
        first, big, small, rest = cut(whole, [500, 40_000, 1, 499])
        # 0 commits; 1 (big) fails at its very end; 2 (one row) ended its COPY long before
        # and waited: it must roll back, and nothing after it may start
        with pytest.raises(asyncpg.PostgresError):
            await streams.copy_in_order(conn, pool, bid, feed([first, spoiled(big), small, rest]), streams=2)
        assert await conn.fetchval("SELECT rows_read FROM batches WHERE id = $1", bid) == 500
        assert_each_line_once_ids_in_line_order(await lines_and_ids(conn, bid), range(2, 502))

        # resume: the reader starts after the committed prefix; a big chunk beside small ones
        resumed = cut(Chunk(b"".join(c.data for c in (big, small, rest)), 40_500, big.first_line,
                            rest.last_line, 0), [30_000, 1, 1, 10_498])
        copied = await streams.copy_in_order(conn, pool, bid, feed(resumed), streams=2)
        assert (copied.rows, copied.chunks, copied.streams) == (40_500, 4, 2)
        assert copied.waited >= 1  # the one-row chunk ended its COPY while the big one ran
        assert await conn.fetchval("SELECT rows_read FROM batches WHERE id = $1", bid) == 41_000
        got = await lines_and_ids(conn, bid)
        assert_each_line_once_ids_in_line_order(got, range(2, 41_002))
        # the rows of the failed chunk that went in before its bad line are gone
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE batch_id = $1", bid) == 41_000


async def test_ids_follow_the_lines_with_more_streams_than_chunks_in_flight(
    pool: asyncpg.Pool, settings: Settings, clock: FakeClock
) -> None:
    async with pool.acquire() as conn:
        bid = await batches.create_batch(conn, target="sales", source="cli", now=clock.now())
        chunks = cut(one_chunk(6_000, bid, settings), [3_000, 1, 2, 3, 994, 1_000, 1_000])
        copied = await streams.copy_in_order(conn, pool, bid, feed(chunks), streams=4)
        assert (copied.rows, copied.chunks, copied.streams) == (6_000, 7, 4)
        assert copied.invalid == sum(c.invalid for c in chunks) > 0
        assert_each_line_once_ids_in_line_order(await lines_and_ids(conn, bid), range(2, 6_002))


def test_with_ids_puts_each_id_before_its_line() -> None:
    assert streams.with_ids(b"a\tb\nc\td\n", [7, 9]) == b"7\ta\tb\n9\tc\td\n"
    with pytest.raises(RuntimeError, match="2 COPY lines for 1 ids"):
        streams.with_ids(b"a\nb\n", [1])


@pytest.mark.parametrize("copy_streams", [1, 3])
async def test_an_ingest_aborted_mid_file_resumes_with_every_row_once_in_line_order(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool, clock: FakeClock, tmp_path: Path,
    db_url: str, copy_streams: int,
) -> None:
    rows = 12_000
    settings = make_settings(ingest_commit_rows=700, ingest_copy_streams=copy_streams)
    path = tmp_path / "leads.csv"
    path.write_text(HEADER + csv_rows(rows))
    seen: list[int] = []

    # a crash at the first committed chunk: the chunks in flight on the other streams are
    # cut off mid-COPY or while waiting for their turn, and every session ends
    crashed = await create_pool(db_url, min_size=1, max_size=6)
    with anyio.CancelScope() as scope:
        def crash(n: int) -> None:
            seen.append(n)
            scope.cancel()

        await FileIngestor(crashed, settings, clock).ingest(path, "sales", source="cli", on_progress=crash)
    crashed.terminate()
    assert scope.cancelled_caught and seen == [700]
    ingestor = FileIngestor(pool, settings, clock)
    async with pool.acquire() as conn:
        batch = await conn.fetchrow("SELECT id, state, rows_read FROM batches")
        assert batch["state"] == "receiving"
        committed = await lines_and_ids(conn, batch["id"])
        assert len(committed) == batch["rows_read"] and 700 <= batch["rows_read"] < rows

    outcome = await ingestor.ingest(path, "sales", source="cli")
    assert outcome.kind == "ingested" and outcome.batch_id == batch["id"]
    invalid = len(range(0, rows, 97))
    counts: dict[str, Any] = outcome.counts
    assert counts == {"rows": rows, "accepted": rows - invalid, "invalid": invalid, "duplicate": 0, "dnc": 0}
    async with pool.acquire() as conn:
        got = await lines_and_ids(conn, batch["id"])
    assert_each_line_once_ids_in_line_order(got, range(2, rows + 2))
    assert got[:len(committed)] == committed  # the committed prefix was kept, not re-read


async def _analyze_count(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'calls'"))


async def test_a_batch_that_outweighs_the_planners_statistics_is_analyzed_before_its_finalise(
        settings: Settings, pool: asyncpg.Pool, clock: FakeClock, tmp_path: Path) -> None:
    """Without statistics (a fresh table: autovacuum analyzes a minute later) the finalise's
    self-joins were planned as nested loops over the whole batch: a 600,000-row file with
    duplicates ran past the 60 s statement timeout (bench: 1.3 s with this ANALYZE)."""
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE calls")  # what earlier tests left: no rows, as the planner knows
    before = await _analyze_count(pool)
    small = tmp_path / "small.csv"
    small.write_text(HEADER + csv_rows(batches.ANALYZE_MIN_ROWS - 1))
    assert (await FileIngestor(pool, settings, clock).ingest(small, "sales", source="cli")).kind == "ingested"
    assert await _analyze_count(pool) == before  # not worth it
    big = tmp_path / "big.csv"
    big.write_text(HEADER + csv_rows(batches.ANALYZE_MIN_ROWS) + csv_rows(batches.ANALYZE_MIN_ROWS))
    outcome = await FileIngestor(pool, settings, clock).ingest(big, "sales", source="cli")
    assert outcome.kind == "ingested" and outcome.counts["duplicate"] > 0
    assert await _analyze_count(pool) == before + 1


async def test_a_finalise_does_not_wait_long_for_the_tables_lock_to_analyze(
        settings: Settings, pool: asyncpg.Pool, clock: FakeClock, tmp_path: Path) -> None:
    """Another big finalise's ANALYZE, or a VACUUM, holds the lock: the statistics are not
    refreshed this time, rather than the ingest waiting (past its statement timeout)."""
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE calls")
    before = await _analyze_count(pool)
    big = tmp_path / "big.csv"
    big.write_text(HEADER + csv_rows(batches.ANALYZE_MIN_ROWS + 1))
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("LOCK calls IN SHARE UPDATE EXCLUSIVE MODE")
        with anyio.fail_after(60):  # a hang guard, not a measurement: it waited for the holder
            outcome = await FileIngestor(pool, settings, clock).ingest(big, "sales", source="cli")
    assert outcome.kind == "ingested"
    assert await _analyze_count(pool) == before
