"""Callbacks in, durable state out: the DB path, the spool path, and the replayer."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from datetime import datetime

import anyio
import asyncpg

from dialer import metrics
from dialer.clock import Clock
from dialer.config import Settings
from dialer.lifecycle import callbacks_scheduled, ended, events, moves, observe, payload
from dialer.lifecycle.batcher import CallbackBatcher
from dialer.lifecycle.dispositions import Dispositions
from dialer.lifecycle.spool import Quarantined, Spool, Spooled
from dialer.lifecycle.states import TERMINAL, State
from dialer.store import retry
from dialer.store.queries import Q
from dialer.store.retry import transient

log = logging.getLogger(__name__)

# Errors that mean "not now", not "this callback is bad": the database is away, or the
# callback lost a lock race. Either way it is spooled and goes through later.
DB_DOWN: tuple[type[BaseException], ...] = (*retry.DB_DOWN, *retry.RACE)


class SpoolOnly:
    """Callbacks while the daemon waits for its database at start-up: validated as always,
    made durable in the spool alone; the replayer applies them once the database is there."""

    def __init__(self, spool: Spool, clock: Clock, ref_fields: set[int]) -> None:
        self.spool = spool
        self.clock = clock
        self.ref_fields = ref_fields

    async def receive(self, chunk_id: int, kind: str, body: bytes, content_type: str) -> str:
        # a body that cannot be read is spooled too: the replayer records it as bytes
        cb = _read(body, content_type, self.ref_fields)
        await self.spool.append(Spooled(kind, chunk_id, content_type, body, self.clock.now().isoformat()))
        return "bad_payload" if isinstance(cb, payload.BadPayload) else "spooled"


def _read(body: bytes, content_type: str, ref_fields: set[int]) -> payload.CallbackData | payload.BadPayload:
    """The callback read, or why it cannot be."""
    try:
        return payload.read(payload.decode(body, content_type), ref_fields)
    except payload.BadPayload as e:
        return e


class CallbackService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        dispositions: Dispositions,
        spool: Spool,
        on_applied: Callable[[events.Applied], None] | None = None,
        on_spooled: Callable[[str], None] | None = None,
        settings: Settings | None = None,
        on_event: Callable[[str, int, events.Applied], None] | None = None,
    ) -> None:
        self.settings = settings

        self.on_event = on_event  # (kind, chunk_id, applied) once committed: metrics
        self.pool = pool
        self.clock = clock
        self.dispositions = dispositions
        self.spool = spool
        self.on_applied = on_applied
        self.on_spooled = on_spooled
        self._batcher = CallbackBatcher(pool, clock.now, db_down=DB_DOWN)

    async def store(self, chunk_id: int, kind: str, cb: payload.CallbackData,
                    now: datetime | None = None) -> events.Applied:
        now = now or self.clock.now()
        result = await self._store_fast(chunk_id, kind, cb, now)
        if result is None:
            result = await self._store_slow(chunk_id, kind, cb, now)
        if result.chunk_state is not None and result.chunk_state != "sent":
            await self._prove(chunk_id, now)
        if isinstance(result.effects, ended.EndEffects):  # committed: tell what it ended
            observe.ended(result.effects.ended)
        if self.on_event:
            self.on_event(kind, chunk_id, result)
        if self.on_applied:
            self.on_applied(result)
        return result

    async def _prove(self, chunk_id: int, now: datetime) -> None:
        """Proof of life (SPEC §5): a callback for one row proves the provider took the whole
        chunk. Its own transaction, after the callback's: the same lock order (chunk, then
        calls) as the settle of a send. If this is lost, the uncertain job redoes it."""
        async def go() -> int:
            async with self.pool.acquire(timeout=2) as conn, conn.transaction():
                return await moves.chunk_taken(conn, chunk_id, now, "proved taken by a callback")

        try:
            moved = await transient(go, "proof of life")
        except DB_DOWN as e:
            log.warning("proof of life deferred: database unreachable",
                        extra={"chunk": chunk_id, "error": type(e).__name__})
            return
        if moved:
            log.info("a callback proved a chunk taken", extra={"chunk": chunk_id, "calls_moved": moved})

    @property
    def _ref_fields(self) -> set[int]:
        # the slots our references travel in; read each time, like _recycle_states
        return {t.ref_field for t in self.settings.targets.values()} if self.settings else set()

    @property
    def _regions(self) -> dict[str, str]:
        # each target's default_region, for a callback matched by its number; read each time
        return {name: t.default_region for name, t in self.settings.targets.items()} if self.settings else {}

    @property
    def _recycle_states(self) -> set[State]:
        # read each time: a SIGHUP reload may add or drop re-dial rules
        targets = self.settings.targets.values() if self.settings else []
        return {State(k) for t in targets for k in t.recycle}

    @property
    def _callback_missed_states(self) -> frozenset[State]:
        # only when some target re-tries missed callbacks; otherwise a miss just ends
        targets = self.settings.targets.values() if self.settings else []
        return callbacks_scheduled.MISSED if any(t.callback_missed for t in targets) else frozenset()

    async def _store_fast(self, chunk_id: int, kind: str, cb: payload.CallbackData,
                          now: datetime) -> events.Applied | None:
        """One statement when nothing but the webhook follows the event (no re-dial rule
        for the state it ends in, no DNC word)."""
        if not cb.refs or self.settings is None:
            return None
        dst = events.target_state(kind, cb, self.dispositions)
        if dst in self._recycle_states or self.dispositions.is_dnc(cb.disposition):
            return None
        if dst in TERMINAL and events.provider_dials(cb) is not None:
            return None  # the provider dialed it more than once: the caps count each (slow path)
        if self.dispositions.is_callback(cb.disposition) or (dst in self._callback_missed_states):
            return None  # a callback to schedule, or a scheduled one that may have missed
        return await self._batcher.apply(chunk_id, cb.refs[0], kind, cb, dst)

    async def _store_slow(self, chunk_id: int, kind: str, cb: payload.CallbackData,
                          now: datetime) -> events.Applied:
        async with self.pool.acquire(timeout=2) as conn, conn.transaction():
            result = await events.apply(conn, chunk_id, kind, cb, self.dispositions, now, self._regions)
            if result.result == "applied" and result.terminal and self.settings is not None \
                    and result.call_id is not None:
                result.effects = await ended.after_end(conn, self.settings, self.dispositions,
                                                       result.call_id, cb.disposition, now, cb.raw)
            elif result.result == "duplicate" and result.to_state is not None \
                    and State(result.to_state) in TERMINAL and self.settings is not None \
                    and result.call_id is not None:
                # a terminal word (on the terminal URL, or a campaign's termination milestone
                # on the connect URL) for a call that had already ended
                result.effects = await ended.late_dnc(conn, self.settings, self.dispositions,
                                                      result.call_id, cb.disposition, now)
        return result

    async def receive(self, chunk_id: int, kind: str, body: bytes, content_type: str) -> str:
        """Make one callback durable; returns 'stored' or 'spooled', or 'bad_payload' for a
        body that cannot be read (recorded or spooled all the same). Raises OSError."""
        cb = _read(body, content_type, self._ref_fields)
        if self.spool.depth == 0:
            try:
                if isinstance(cb, payload.BadPayload):
                    await self._unreadable(chunk_id, kind, body, content_type, cb, self.clock.now())
                    return "bad_payload"
                await self.store(chunk_id, kind, cb)
                return "stored"
            except DB_DOWN as e:
                log.warning("database unreachable; spooling callback", extra={"error": type(e).__name__})
        await self.spool.append(Spooled(kind, chunk_id, content_type, body, self.clock.now().isoformat()))
        if self.on_spooled:
            self.on_spooled(kind)
        return "bad_payload" if isinstance(cb, payload.BadPayload) else "spooled"

    async def _unreadable(self, chunk_id: int, kind: str, body: bytes, content_type: str,
                          error: payload.BadPayload, now: datetime) -> None:
        """A signed callback whose body cannot be read: its bytes are recorded, not applied.
        Acknowledged once recorded, for a body that will never read cannot be retried into
        anything, and it must not be lost without a trace either."""
        log.warning("callback body could not be read; recorded as bytes",
                    extra={"chunk_id": chunk_id, "kind": kind, "error": str(error)})
        event = {
            "chunk_id": chunk_id, "note": "body could not be read", "error": payload.storable(str(error)),
            "content_type": payload.storable(content_type),
            "body_base64": base64.b64encode(body).decode(),  # any bytes: PostgreSQL takes this
        }
        async with self.pool.acquire(timeout=2) as conn:
            await conn.execute(Q.event_insert, None, now, f"callback_{kind}", None, None, False, event)

    async def _replay_one(self, item: Spooled) -> None:
        cb = _read(item.body, item.content_type, self._ref_fields)
        received = datetime.fromisoformat(item.received_at)
        now = max(received, self.clock.now())
        if isinstance(cb, payload.BadPayload):  # spooled as received: record it as bytes now
            await self._unreadable(item.chunk_id, item.kind, item.body, item.content_type, cb, now)
            return
        await self.store(item.chunk_id, item.kind, cb, now=now)

    async def _quarantined(self, q: Quarantined) -> None:
        """A spooled callback the database refused (not "unreachable"): count, log, audit."""
        metrics.current().spool_quarantine()
        item = q.item
        log.error("spooled callback refused by the database; moved to the quarantine file",
                  extra={"chunk_id": item.chunk_id if item else None, "error": q.error})
        event = {
            "chunk_id": item.chunk_id if item else None, "kind": item.kind if item else None,
            "content_type": payload.storable(item.content_type) if item else None,
            "received_at": payload.storable(item.received_at) if item else None,
            "error": payload.storable(q.error),
            # the body as bytes we cannot fail to store: it is what the database refused
            "body_base64": base64.b64encode(item.body if item else q.line).decode(),
        }
        async with self.pool.acquire(timeout=2) as conn:
            await conn.execute(Q.event_insert, None, self.clock.now(), "spool_quarantined",
                               None, None, False, event)

    async def replay_once(self) -> int:
        """Replay the spool. Safe beside the replayer (the daemon's drain calls it): the
        spool runs one replay at a time, and this one replays whatever is left."""
        return await self.spool.replay(
            self._replay_one, refused=lambda e: not isinstance(e, DB_DOWN), on_quarantine=self._quarantined)

    async def run_replayer(self, retry_s: float = 1.0) -> None:
        while True:
            if self.spool.depth > 0:
                try:
                    n = await self.replay_once()
                    if n:
                        log.info("replayed spooled callbacks", extra={"count": n})
                except DB_DOWN:
                    await anyio.sleep(retry_s)
                    continue
                except Exception:
                    log.exception("spool replay failed; will retry")
                    await anyio.sleep(retry_s)
                    continue
            if self.spool.depth <= 0:
                self.spool.wake = anyio.Event()
                await self.spool.wake.wait()
