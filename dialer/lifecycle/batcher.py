"""Group-commit for callbacks: everything waiting is applied in one statement.

Under load the callbacks that arrive while a statement runs form the next batch, so
the database sees one round trip and one commit for many callbacks; when idle a batch
is a single callback and adds no delay. Each caller is answered only after the commit
that made its callback durable.

Up to ``MAX_IN_FLIGHT`` batches run at once, so a batch held up (waiting on a lock: a
send's settle or re-check holds its chunk's calls) does not hold back every other
callback. (It does not raise the throughput measured by bench/callbacks.py: that is
bound by the daemon's CPU per request, not by the commit.) Batches lock their calls in
id order (``callback_apply_batch``), so they cannot deadlock, and a call is in at most
one batch in flight: its next callback waits, so a call's callbacks apply in arrival
order.

One bad callback must not fail its neighbours: when a batch fails for any reason but
the database being unreachable (``db_down``), each of its callbacks is run again alone,
so only the bad one's caller gets the error. ``db_down`` goes to every caller (they
spool).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from dialer.lifecycle.events import ALLOWED_PAIRS, Applied
from dialer.lifecycle.payload import CallbackData
from dialer.lifecycle.states import TERMINAL, State
from dialer.store.queries import Q

MAX_BATCH = 256
MAX_IN_FLIGHT = 2  # of the pool's connections (db_pool_size, 10 by default)


@dataclass
class _Item:
    chunk_id: int
    call_id: int
    kind: str
    cb: CallbackData
    dst: State
    done: asyncio.Future[Applied | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class CallbackBatcher:
    def __init__(self, pool: asyncpg.Pool, now: Any,
                 db_down: tuple[type[BaseException], ...] = ()) -> None:
        self.pool = pool
        self.now = now  # a clock's now()
        self.db_down = db_down
        self._queue: list[_Item] = []
        self._busy: set[int] = set()  # calls in a batch in flight
        # strong references: the loop only keeps weak ones to its tasks
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def apply(
        self, chunk_id: int, call_id: int, kind: str, cb: CallbackData, dst: State
    ) -> Applied | None:
        """Durably apply one callback; None when its call is not in that chunk."""
        item = _Item(chunk_id, call_id, kind, cb, dst)
        self._queue.append(item)
        if not self._scheduled:
            # on the loop's next turn: callbacks arriving together go in one batch
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
        return await item.done

    def _start(self) -> None:
        """Start batches of what waits, while fewer than MAX_IN_FLIGHT run."""
        self._scheduled = False
        while self._queue and len(self._tasks) < MAX_IN_FLIGHT:
            batch: list[_Item] = []
            rest: list[_Item] = []
            seen = set(self._busy)
            for it in self._queue:
                # a call already in a batch waits for it: its callbacks apply in arrival order
                if it.call_id in seen or len(batch) >= MAX_BATCH:
                    rest.append(it)
                else:
                    seen.add(it.call_id)
                    batch.append(it)
            if not batch:
                return
            self._queue = rest
            ids = {it.call_id for it in batch}
            self._busy |= ids
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(lambda t, ids=ids: self._finished(t, ids))  # type: ignore[misc]

    def _finished(self, task: asyncio.Task[None], ids: set[int]) -> None:
        self._tasks.discard(task)
        self._busy -= ids
        self._start()

    async def _run(self, batch: list[_Item]) -> None:
        now: datetime = self.now()
        try:
            async with self.pool.acquire(timeout=2) as conn:
                rows = await conn.fetch(
                    Q.callback_apply_batch,
                    [i.call_id for i in batch], [i.chunk_id for i in batch], [i.dst.value for i in batch],
                    [i.cb.agent for i in batch],
                    [(i.cb.disposition or "unknown") if i.dst in TERMINAL else None for i in batch],
                    [i.dst in TERMINAL for i in batch], [i.cb.call_id for i in batch],
                    [f"callback_{i.kind}" for i in batch],
                    [{"chunk_id": i.chunk_id, "body": i.cb.raw} for i in batch],
                    list(range(len(batch))), now, ALLOWED_PAIRS,
                )
        except Exception as e:
            if len(batch) > 1 and not isinstance(e, self.db_down):
                for it in batch:  # find the bad one: the statement rolled back, nothing applied
                    await self._run([it])
                return
            for it in batch:  # every caller learns (and spools on db_down)
                if not it.done.done():
                    it.done.set_exception(e)
            return
        except BaseException as e:  # cancelled: nobody waits forever
            for it in batch:
                if not it.done.done():
                    it.done.set_exception(e)
            raise
        by_ord = {r["ord"]: r for r in rows}
        for n, it in enumerate(batch):
            r = by_ord.get(n)
            if it.done.done():  # its caller was cancelled (a shutdown): nobody to answer
                continue
            if r is None:
                it.done.set_result(None)
            elif not r["applied"]:
                it.done.set_result(Applied("duplicate", r["id"], r["state"], it.dst.value, r["target"],
                                           chunk_state=r["chunk_state"]))
            else:
                it.done.set_result(Applied(
                    "applied", r["id"], r["state"], it.dst.value, r["target"], it.dst in TERMINAL,
                    agent=it.cb.agent or r["agent"], disposition=it.cb.disposition, batch_id=r["batch_id"],
                    chunk_state=r["chunk_state"],
                ))
