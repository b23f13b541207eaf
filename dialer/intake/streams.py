"""A file's chunks COPYed over several connections at once, ids and commits in file order.

Where one PostgreSQL backend maintaining the ``calls`` indexes is the ingest's bottleneck,
chunks may COPY on ``ingest_copy_streams`` connections in parallel (default 1: on a
2-core machine shared by daemon, worker and PostgreSQL a second stream costs more CPU
than it saves; see bench/README.md). What one stream gave stays true:

* ids follow the file's lines: before its COPY, each chunk takes its ids from the calls
  id sequence (one round trip, in file order, on the connection that will COPY it) and
  COPYs them explicitly, so an earlier line always has the smaller id (with one stream
  the sequence's own order does it);
* the resume point is a contiguous prefix: a chunk commits (its rows together with
  ``batches.rows_read``) only after the chunk before it committed. A chunk whose COPY
  ends first waits with its transaction open; if an earlier chunk fails or is cancelled,
  the later ones roll back. A crash therefore re-reads exactly the chunks that did not
  commit, and never a row twice.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import anyio
import asyncpg

from dialer.intake import batches
from dialer.intake.pipeline import Chunk
from dialer.store.queries import Q

# An extra connection that the pool cannot give within this long is done without: the
# ingest goes on with fewer streams rather than wait on (or starve) the rest of the daemon.
ACQUIRE_TIMEOUT_S = 2.0


@dataclass
class Copied:
    rows: int = 0
    invalid: int = 0
    chunks: int = 0
    streams: int = 0
    waited: int = 0  # chunks whose COPY ended before the chunk ahead of them had committed
    in_file_duplicates: bool | None = None  # from the reader's closing marker


class _EarlierChunkFailed(Exception):
    """Raised inside a chunk's transaction to roll it back."""


@dataclass(eq=False)
class _Turn:
    """One chunk's place in the commit order."""

    done: anyio.Event
    committed: bool = False


def with_ids(data: bytes, ids: list[int]) -> bytes:
    """COPY text lines with their ids as a first column."""
    lines = data.split(b"\n")
    lines.pop()  # every line ends with "\n"
    if len(lines) != len(ids):
        raise RuntimeError(f"chunk has {len(lines)} COPY lines for {len(ids)} ids")
    return b"".join(map(b"%d\t%b\n".__mod__, zip(ids, lines, strict=True)))


async def copy_in_order(
    first: asyncpg.Connection,
    pool: asyncpg.Pool,
    batch_id: uuid.UUID,
    chunks: AsyncGenerator[Chunk, None],
    *,
    streams: int,
    on_progress: Callable[[int], None] | None = None,
) -> Copied:
    """COPY every chunk (``first`` is one of the connections; ``streams - 1`` more come
    from the pool) and return the totals of what committed. The first failure is raised
    once every chunk in flight has committed or rolled back."""
    out = Copied()
    async with contextlib.AsyncExitStack() as stack:
        conns = [first]
        for _ in range(streams - 1):
            try:
                conns.append(await stack.enter_async_context(pool.acquire(timeout=ACQUIRE_TIMEOUT_S)))
            except TimeoutError:
                break
        out.streams = len(conns)
        # one stream COPYs the chunks one after another: the ids the sequence gives during
        # COPY already follow the lines, so reserving them (and the daemon's work of
        # writing them into the lines) is needed only with several
        parallel = len(conns) > 1
        free_tx, free_rx = anyio.create_memory_object_stream[asyncpg.Connection](len(conns))
        for c in conns:
            free_tx.send_nowait(c)
        errors: list[Exception] = []

        async def copy_one(conn: asyncpg.Connection, chunk: Chunk, data: bytes,
                           ahead: _Turn | None, mine: _Turn) -> None:
            async def after_ahead() -> None:
                if ahead is None:
                    return
                if not ahead.done.is_set():
                    out.waited += 1
                    await ahead.done.wait()
                if not ahead.committed:
                    raise _EarlierChunkFailed

            try:
                await batches.copy_chunk_in_turn(conn, batch_id, chunk, data, after_ahead,
                                                 with_ids=parallel)
                mine.committed = True
                out.rows += chunk.rows
                out.invalid += chunk.invalid
                out.chunks += 1
                if on_progress:
                    on_progress(chunk.rows)
            except _EarlierChunkFailed:
                pass
            except Exception as e:  # the first failure is raised by copy_in_order
                errors.append(e)
            finally:
                mine.done.set()
                free_tx.send_nowait(conn)

        async with anyio.create_task_group() as tg, contextlib.aclosing(chunks):
            ahead: _Turn | None = None
            try:
                async for chunk in chunks:
                    if not chunk.rows:
                        out.in_file_duplicates = chunk.in_file_duplicates
                        continue
                    conn = await free_rx.receive()
                    if errors:
                        break
                    data = chunk.data
                    if parallel:
                        data = with_ids(data, await conn.fetchval(Q.calls_reserve_ids, chunk.rows))
                    mine = _Turn(anyio.Event())
                    tg.start_soon(copy_one, conn, chunk, data, ahead, mine)
                    ahead = mine
            except Exception as e:
                # a reader failure (or a lost connection): the chunks in flight end on their
                # own, committed or rolled back, before it is raised
                errors.insert(0, e)
    if errors:
        raise errors[0]
    return out
