"""The intake worker process (``from_process``): its consumer never waits on it once
cancelled, whatever the worker is doing."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import anyio
import psutil
import pytest

from dialer.intake.pipeline import from_process


def first_then_silent(n: int) -> Iterator[int]:
    """A worker that sends one item, then nothing ever (module level: it is spawned)."""
    yield n
    threading.Event().wait()


@pytest.mark.timeout(60)
async def test_cancelling_the_consumer_ends_a_worker_that_never_answers() -> None:
    # as the drain's deadline cancels a file's ingest: the worker is ended, not waited on
    got: list[int] = []
    workers: list[psutil.Process] = []
    first = anyio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(from_process(first_then_silent, 7)) as items:
            async for item in items:
                got.append(item)
                first.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await first.wait()
            await anyio.wait_all_tasks_blocked()  # the consumer waits in a thread for the next item
            workers = [c for c in psutil.Process().children()
                       if "--multiprocessing-fork" in c.cmdline() and "resource_tracker" not in str(c.cmdline())]
            tg.cancel_scope.cancel()
        assert got == [7] and len(workers) == 1
        assert not workers[0].is_running() or workers[0].status() == psutil.STATUS_ZOMBIE
    finally:
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()
