"""What results say about a lead with several numbers: the number reached and the
attempts per number (results files, the API, result webhooks). One-number leads carry
only ``number_reached`` (their row's number when answered): no list and no query."""

from __future__ import annotations

from typing import Any

import asyncpg

from dialer.store.queries import Q


async def attempts(conn: asyncpg.Connection, lead: int) -> dict[str, int]:
    """Attempts per number of the lead (its first row's id), in E.164."""
    return {r["e164"]: r["n"] for r in await conn.fetch(Q.lead_number_attempts, lead)}


def reached(row: Any, per_number: dict[str, int] | None) -> dict[str, Any]:
    """``number_reached`` (the number that answered, else None) and ``attempts_per_number``."""
    return {
        "number_reached": row["e164"] if row["state"] == "answered" else None,
        "numbers": list(row["numbers"]),
        "attempts_per_number": {n: (per_number or {}).get(n, 0) for n in row["numbers"]},
    }


def result_cells(r: Any) -> list[str]:
    """A ``batch_results`` row's ``number_reached`` and ``attempts_per_number`` cells
    (``+14155550100:2;+14155550101:1``, in the lead's order)."""
    reached_ = (r["e164"] or "") if r["state"] == "answered" else ""
    if r["numbers"] is None:
        return [reached_, f"{r['e164']}:{r['attempts']}" if r["e164"] else ""]
    per = r["per_number"] or {}
    return [reached_, ";".join(f"{n}:{per.get(n, 0)}" for n in r["numbers"])]
