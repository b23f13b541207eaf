"""Group-commit for callbacks: everything waiting is applied in one statement.

Under load the callbacks that arrive while one statement runs form the next batch, so
the database sees one round trip and one commit for many callbacks; when idle a batch
is a single callback and adds no delay. Each caller is answered only after the commit
that made its callback durable.

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
        self._running = False
        self._task: asyncio.Task[None] | None = None

    async def apply(
        self, chunk_id: int, call_id: int, kind: str, cb: CallbackData, dst: State
    ) -> Applied | None:
        """Durably apply one callback; None when its call is not in that chunk."""
        item = _Item(chunk_id, call_id, kind, cb, dst)
        self._queue.append(item)
        if not self._running:
            self._running = True
            # a strong reference: the loop only keeps weak ones to its tasks
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await item.done

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch: list[_Item] = []
                rest: list[_Item] = []
                seen: set[int] = set()
                for it in self._queue:
                    # two callbacks for one call go in separate batches, in arrival order
                    if it.call_id in seen or len(batch) >= MAX_BATCH:
                        rest.append(it)
                    else:
                        seen.add(it.call_id)
                        batch.append(it)
                self._queue = rest
                await self._run(batch)
        finally:
            self._running = False

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
