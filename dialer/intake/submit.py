"""Batches posted over HTTP: validated and finalised in one transaction.

An API batch is bounded (``max_batch_leads``, ``max_body_mb``), so unlike a file it is
ingested atomically: the whole batch and its idempotency key commit together.
"""

from __future__ import annotations

import io
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg

from dialer import metrics
from dialer.clock import Clock
from dialer.config import Settings
from dialer.errors import Busy, Conflict, FileUnreadable, InvalidInput, TimedOut, TooLarge
from dialer.intake import batches
from dialer.intake.pipeline import Chunk, ParseJob, iter_chunks, rows_to_chunk
from dialer.store import limits
from dialer.store.queries import Q

log = logging.getLogger(__name__)


@dataclass
class Submission:
    target: str
    rows: list[dict[str, Any]] | None = None  # JSON leads
    csv: bytes | None = None  # or a text/csv body
    result_webhook_url: str | None = None
    idempotency_key: str | None = None
    request_sha256: str = ""


def _csv_chunks(body: bytes, job: ParseJob, limit: int) -> list[Chunk]:
    out: list[Chunk] = []
    rows = 0
    for chunk in iter_chunks(io.BytesIO(body), job):
        rows += chunk.rows
        if rows > limit:
            raise TooLarge(f"a batch holds at most {limit} leads", {"limit": limit})
        out.append(chunk)
    return out


async def submit(
    pool: asyncpg.Pool, settings: Settings, clock: Clock, sub: Submission
) -> tuple[int, dict[str, Any]]:
    if sub.target not in settings.targets:
        raise InvalidInput(
            f"target: unknown target {sub.target!r}",
            {"targets": sorted(settings.targets)},
        )
    tcfg = settings.targets[sub.target]
    key = sub.idempotency_key
    if key is not None:
        async with pool.acquire() as conn:
            prior = await conn.fetchrow(Q.idempotency_get, key)
        if prior is not None:
            return _replay(prior, sub)

    async with pool.acquire() as conn, conn.transaction():
        if key is not None:
            await conn.execute(Q.idempotency_lock, key)
            prior = await conn.fetchrow(Q.idempotency_get, key)
            if prior is not None:
                return _replay(prior, sub)
        now = clock.now()
        batch_id = await batches.create_batch(
            conn, target=sub.target, source="api", now=now,
            source_name="api" if sub.rows is not None else "api (text/csv)",
            result_webhook_url=sub.result_webhook_url,
        )
        job = ParseJob(
            fmt="csv", batch_id=str(batch_id), rules=batches.rules_for(sub.target, tcfg),
            chunk_rows=settings.ingest_commit_rows, max_line_bytes=settings.max_line_kb * 1024,
        )
        if sub.rows is not None:
            rows = sub.rows
            chunks = [await anyio.to_thread.run_sync(rows_to_chunk, rows, job)]
        else:
            assert sub.csv is not None
            try:
                chunks = await anyio.to_thread.run_sync(
                    _csv_chunks, sub.csv, job, settings.max_batch_leads
                )
            except FileUnreadable as e:
                raise InvalidInput(f"body: {e.message}") from None
        for chunk in chunks:
            if chunk.rows:
                await batches.copy_chunk(conn, batch_id, chunk)
        leads = sum(chunk.rows for chunk in chunks)
        try:
            counts = await batches.finalise(conn, batch_id, sub.target, tcfg, now, new_rows=leads)
            body = await _answer(conn, batch_id, sub, counts)
            if key is not None:
                await conn.execute(Q.idempotency_put, key, sub.request_sha256, 202, body, now)
        except asyncpg.LockNotAvailableError as e:
            # the target's dedupe lock, held by another batch's finalise past the wait allowed:
            # 503 and Retry-After, as when the database is away (nothing of this one is stored)
            raise Busy(f"target {sub.target!r} is busy settling another batch; retry shortly",
                       {"target": sub.target}) from e
        except asyncpg.QueryCanceledError as e:
            # a statement ran past the time the batch's size allows (store/limits.py): raised
            # in the transaction, which rolls back, so nothing of the batch is stored
            limit = limits.statement_limit_s(leads)
            log.warning("API batch stopped: it ran past its time limit", extra={
                "target": sub.target, "leads": leads, "limit_s": limit, "error": str(e)})
            raise TimedOut(f"settling the batch was stopped: one of its steps ran past the {limit:g} s "
                           f"its {leads} leads allow; nothing of it was stored: retry later, or send it "
                           "in smaller batches", {"target": sub.target, "limit_s": limit}) from e
    metrics.current().leads(sub.target, "api", counts)
    return 202, body


async def _answer(conn: asyncpg.Connection, batch_id: uuid.UUID, sub: Submission,
                  counts: dict[str, int]) -> dict[str, Any]:
    """The 202's body: the batch's counts, and each lead not accepted (or a number of it)."""
    rejected: list[dict[str, Any]] = []
    not_dialed: list[dict[str, Any]] = []  # duplicate and dnc leads: which ones, not only how many
    csv_body = sub.rows is None
    async for r in batches.rejected_rows(conn, batch_id, indexed=csv_body):
        # JSON: the lead's index (its "line"); CSV: the record's index and its file line
        at = {"index": r["index"], "line": r["line"]} if csv_body else {"index": r["line"]}
        if r["outcome"] == "invalid" or "field" in r:  # a lead's number left out: named by its field
            field = {"field": r["field"]} if "field" in r else {}
            rejected.append({**at, "reason": r["reason"], **field})
        else:
            not_dialed.append({**at, "outcome": r["outcome"], "reason": r["reason"]})
    return {
        "batch_id": str(batch_id),
        "target": sub.target,
        "accepted": counts["accepted"],
        "rejected": rejected,
        "duplicates": counts["duplicate"],
        "dnc": counts["dnc"],
        "not_dialed": not_dialed,
    }


def _replay(prior: asyncpg.Record, sub: Submission) -> tuple[int, dict[str, Any]]:
    if prior["request_sha256"] != sub.request_sha256:
        raise Conflict(
            "Idempotency-Key was already used with a different request body",
            {"batch_id": prior["response"].get("batch_id")},
        )
    return int(prior["status_code"]), dict(prior["response"])
