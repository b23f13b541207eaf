"""Input → chunks of COPY text, parsed off the event loop.

The parse-and-validate work is CPU-bound (CSV decoding, phone-number parsing), so for
files it runs in a child process (``from_process``): the daemon's event loop stays
responsive and the worker uses another core while PostgreSQL ingests the previous
chunk. Small inputs (API bodies) use a thread (``from_thread``). Either way one
generator does the work, and a bounded queue keeps memory flat whatever the input size.
Lead files go through ``iter_chunks``; DNC lists (``dnc.py``) reuse the same runners,
several children at once on parts of one file (``merged``).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import threading
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from dialer.errors import DialerError, FileUnreadable
from dialer.intake.columns import ColumnMap
from dialer.intake.leads import LeadEncoder, TargetRules
from dialer.intake.readers import (
    FileId,
    RowBlock,
    check_still_named,
    check_unchanged,
    open_file,
    open_reader,
)

T = TypeVar("T")

_POLL_S = 0.5  # how often a thread waiting on the worker checks it is still wanted
_END_WAIT_S = 1.0  # for the worker to exit after SIGTERM, then after SIGKILL


@dataclass(slots=True)
class Chunk:
    data: bytes  # COPY text, one line per input row
    rows: int  # input rows in this chunk (valid or not)
    first_line: int
    last_line: int
    invalid: int
    # set on the last chunk of a whole-file read: did the file repeat a number?
    in_file_duplicates: bool | None = None


@dataclass(frozen=True, slots=True)
class ParseJob:
    fmt: str
    batch_id: str
    rules: TargetRules
    encoding: str | None = None
    skip_rows: int = 0
    chunk_rows: int = 20_000
    max_line_bytes: int = 1 << 20
    # Small first chunks: PostgreSQL idles until the first one arrives, so it should not
    # wait for chunk_rows rows to be parsed; sizes grow fourfold to chunk_rows.
    first_chunk_rows: int = 1_000
    # The file fingerprinted: a path is read only if it still names that very file,
    # unchanged, and each chunk is handed on only while it does (else ``FileReplaced``).
    file: FileId | None = None
    # ``open_file``'s: no symbolic link followed from this folder down; None: followed
    no_links_below: Path | None = None


def iter_chunks(source: Path | BinaryIO, job: ParseJob) -> Generator[Chunk, None, None]:
    if job.file is None or not isinstance(source, Path):
        yield from _chunks(source, job)
        return
    with open_file(source, no_links_below=job.no_links_below, expect=job.file) as raw:
        for chunk in _chunks(raw, job):
            # the closing marker too: once the whole file is read, before the finalise
            check_unchanged(raw, job.file)
            # renamed over or removed: the open file reads on, unchanged, but is not the drop
            check_still_named(raw, source, no_links_below=job.no_links_below)
            yield chunk


def _chunks(source: Path | BinaryIO, job: ParseJob) -> Generator[Chunk, None, None]:
    enc = LeadEncoder(job.batch_id, job.rules)
    copy_line, lead = enc.copy_line, enc.lead
    with open_reader(
        source, job.fmt, encoding=job.encoding, max_line_bytes=job.max_line_bytes,
        skip_rows=job.skip_rows,
    ) as reader:
        if reader.header is not None:
            ColumnMap().check_header(reader.header)
        # CSV rows take the encoder's fast paths: well-formed runs of rows as blocks,
        # column by column; any other row with every value a str, keyed by the header
        header = reader.header
        csv_header = header if job.fmt == "csv" and header and enc.fast_path_fits(header) else None
        row_fast = enc.text_row_encoder(csv_header) if csv_header else None
        block_fast = enc.text_block_encoder(csv_header) if csv_header else None
        items = reader.iter_blocks() if block_fast is not None else iter(reader)
        buf: list[str] = []
        first = last = 0
        invalid_before = 0
        size = min(job.chunk_rows, job.first_chunk_rows)
        for item in items:
            if isinstance(item, RowBlock):
                assert block_fast is not None
                lines = block_fast(item)
                line = item.first_line
                while lines:  # a block may straddle chunks: cut it where a chunk is full
                    if not buf:
                        first = line
                    take = lines[: size - len(buf)]
                    buf += take
                    lines = lines[len(take):]
                    line += len(take)
                    last = line - 1
                    if len(buf) >= size:
                        # a cut block's invalid rows count in its first chunk: only the sum is used
                        yield Chunk("".join(buf).encode(), len(buf), first, last,
                                    enc.invalid - invalid_before)
                        invalid_before = enc.invalid
                        buf = []
                        size = min(job.chunk_rows, size * 4)
                continue
            if not buf:
                first = item.line
            if row_fast is not None and item.values is not None:
                buf.append(row_fast(item.line, item.values))
            else:
                buf.append(copy_line(lead(item.line, item.values, item.error)))
            last = item.line
            if len(buf) >= size:
                yield Chunk("".join(buf).encode(), len(buf), first, last, enc.invalid - invalid_before)
                invalid_before = enc.invalid
                buf = []
                size = min(job.chunk_rows, size * 4)
        if buf:
            yield Chunk("".join(buf).encode(), len(buf), first, last, enc.invalid - invalid_before)
        # A closing marker; a resumed read has not seen the whole file, so it cannot tell.
        yield Chunk(b"", 0, last, last, 0,
                    in_file_duplicates=None if job.skip_rows else enc.repeats_a_number())


def _worker(produce: Callable[..., Iterator[Any]], args: tuple[Any, ...],
            out: mp.Queue[tuple[str, Any]], parent: int) -> None:
    def put(item: tuple[str, Any]) -> None:
        while True:
            try:
                out.put(item, timeout=1)
                return
            except queue.Full:
                if os.getppid() != parent:  # the daemon died (kill -9): don't linger
                    os._exit(1)

    try:
        for item in produce(*args):
            put(("chunk", item))
        put(("done", None))
    except FileUnreadable as e:
        put(("unreadable", e.message))
    except Exception:  # reported to the parent with its traceback
        put(("error", traceback.format_exc()))


async def from_process(produce: Callable[..., Iterator[T]], *args: Any, prefetch: int = 3
                       ) -> AsyncGenerator[T, None]:
    """Run the generator ``produce(*args)`` in a child process and yield its items as they
    come (at most ``prefetch`` wait in the queue: memory stays flat). ``produce`` must be a
    module-level function and its arguments picklable (the child is spawned).

    Cancelling the consumer (a drain's deadline) never waits on the child: it is
    terminated, then killed, whatever it is busy with."""
    ctx = mp.get_context("spawn")
    out: mp.Queue[tuple[str, Any]] = ctx.Queue(maxsize=prefetch)
    proc = ctx.Process(target=_worker, args=(produce, args, out, os.getpid()), daemon=True,
                       name="dialer-intake")
    proc.start()
    # A thread blocked on the queue cannot be cancelled: one left behind gives up within
    # a poll once ``stop`` is set, and holds ``reading`` while it reads, so that the
    # queue is never closed under it.
    stop = threading.Event()
    reading = threading.Lock()

    def get() -> tuple[str, Any]:
        while True:
            with reading:
                if stop.is_set():
                    return ("stopped", None)
                try:
                    return out.get(timeout=_POLL_S)
                except queue.Empty:
                    if proc.is_alive():
                        continue
                    # the child may have put its last message just before exiting
                    try:
                        return out.get(timeout=_POLL_S)
                    except queue.Empty:
                        return ("error", f"intake worker died (exit code {proc.exitcode})")

    try:
        while True:
            kind, payload = await anyio.to_thread.run_sync(get, abandon_on_cancel=True)
            if kind == "chunk":
                yield payload
            elif kind == "done":
                return
            elif kind == "unreadable":
                raise FileUnreadable(payload)
            else:
                raise DialerError(f"intake worker failed:\n{payload}")
    finally:
        stop.set()
        with anyio.CancelScope(shield=True):  # bounded: about 3 s at most
            await anyio.to_thread.run_sync(_end_worker, proc, out, reading)


def _end_worker(proc: BaseProcess, out: mp.Queue[tuple[str, Any]], reading: threading.Lock) -> None:
    """Terminate the worker (then kill it), reap it, and close its queue once no thread
    reads it."""
    if proc.is_alive():
        proc.terminate()
        proc.join(_END_WAIT_S)
        if proc.is_alive():
            proc.kill()
    proc.join(_END_WAIT_S)
    with reading:
        out.close()


@contextlib.asynccontextmanager
async def merged(sources: Sequence[AsyncGenerator[T, None]], *, buffer: int = 2
                 ) -> AsyncIterator[AsyncIterator[T]]:
    """The items of several async iterators (child processes, each on its own part of one
    input) as each one produces them. Leaving the block stops them all; the first failure
    of any is raised as itself, not wrapped in an exception group."""
    send, receive = anyio.create_memory_object_stream[T](buffer)

    async def pump(src: AsyncGenerator[T, None], tx: MemoryObjectSendStream[T]) -> None:
        async with tx, contextlib.aclosing(src):
            async for item in src:
                await tx.send(item)

    try:
        async with anyio.create_task_group() as tg, receive:
            async with send:
                for src in sources:
                    tg.start_soon(pump, src, send.clone())
            try:
                yield receive
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _first(group) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first(e)
        if not isinstance(e, anyio.get_cancelled_exc_class()):
            return e
    return group


def chunks_from_process(path: Path, job: ParseJob, *, prefetch: int = 3) -> AsyncGenerator[Chunk, None]:
    """Run ``iter_chunks`` in a child process and yield its chunks as they come."""
    return from_process(iter_chunks, path, job, prefetch=prefetch)


async def from_thread(it: Iterator[T]) -> AsyncGenerator[T, None]:
    """Step a generator in a worker thread, one item at a time (for small inputs)."""
    done = object()

    def step() -> Any:
        return next(it, done)

    try:
        while True:
            item = await anyio.to_thread.run_sync(step)
            if item is done:
                return
            yield item
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def chunks_from_thread(source: Path | BinaryIO, job: ParseJob) -> AsyncGenerator[Chunk, None]:
    """``iter_chunks`` in a worker thread, one chunk at a time (for small inputs)."""
    return from_thread(iter_chunks(source, job))


def rows_to_chunk(rows: list[dict[str, Any]], job: ParseJob) -> Chunk:
    """API JSON leads (already shape-checked) → one chunk; ``line`` is the 0-based index."""
    enc = LeadEncoder(job.batch_id, job.rules)
    data = "".join(enc.copy_line(enc.lead(i, row, None)) for i, row in enumerate(rows))
    return Chunk(data.encode(), len(rows), 0, len(rows) - 1, enc.invalid)
