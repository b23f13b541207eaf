"""The proof-of-life sweep settles an uncertain chunk only on a callback that names it."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from dialer.dispatch.outbox import prove_unsettled


async def test_a_callback_for_an_earlier_chunk_of_a_requeued_call_proves_nothing_of_this_one(
        pool: asyncpg.Pool) -> None:
    """Chunk 1 went uncertain, its calls were requeued into chunk 2 (uncertain too); the
    provider had taken chunk 1 after all, and a callback for chunk 1 ended call x. That
    says nothing of chunk 2: settling it as sent left y, which the provider never had,
    queued for ever (the long crash campaign, 2026-12-06)."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        bid = await conn.fetchval("INSERT INTO batches (target, source, state) VALUES ('sales', 'api', 'ingested') "
                                  "RETURNING id")
        for k, state in ((1, "sent"), (2, "uncertain")):
            await conn.execute("INSERT INTO chunks (id, target, token, state) VALUES ($1, 'sales', $2, $3)",
                               k, f"tok-{k}", state)
        x, y = [await conn.fetchval(
            "INSERT INTO calls (batch_id, target, line, e164, state, chunk_id, prev_chunks) "
            "VALUES ($1, 'sales', $2, $3, $4, 2, '{1}') RETURNING id", bid, line, number, state)
            for line, number, state in ((1, "+14155550101", "answered"), (2, "+14155550102", "uncertain"))]
        await conn.execute("INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload) "
                           "VALUES ($1, $2, 'callback_terminal', 'uncertain', 'answered', true, $3)",
                           x, now, {"chunk_id": 1, "body": {}})
        assert await prove_unsettled(conn, now) == []
        assert await conn.fetchval("SELECT state FROM calls WHERE id = $1", y) == "uncertain"
        # a callback that names chunk 2 does prove it taken
        await conn.execute("INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload) "
                           "VALUES ($1, $2, 'callback_connect', 'uncertain', 'assigned', true, $3)",
                           x, now, {"chunk_id": 2, "body": {}})
        assert await prove_unsettled(conn, now) == [2]
        assert await conn.fetchval("SELECT state FROM calls WHERE id = $1", y) == "queued"
