"""Files a batch page offers: report.json, results.csv and results.xlsx, and their routes.

Each is written to a temporary file under the state dir by the same code the inbox uses
(``FileIngestor.write_report``, ``write_results_csv``) or, for Excel, from the same
``batch_results`` rows through openpyxl's write-only mode; memory stays flat whatever
the batch size. The routes below stream it and remove it once sent. Text from leads and
CRMs shows as typed: results.csv neutralises what a spreadsheet would evaluate
(``results.cells.csv_text``), the workbook stores every such text as a string cell.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import asyncpg
import orjson
from fastapi import APIRouter
from openpyxl import Workbook
from openpyxl.cell import Cell, WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, Response

from dialer.intake import batches
from dialer.intake.files import FileIngestor, FileOutcome
from dialer.intake.readers import detect_format
from dialer.lifecycle import number_report
from dialer.results.files import COLUMNS, write_results_csv
from dialer.store.queries import Q
from dialer.ui.batches import find_batch
from dialer.ui.console import UI, Console, Sess

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_ROWS_PER_STEP = 2000
_WIDTHS = {"A": 18, "B": 18, "C": 14, "D": 16, "E": 10, "F": 14, "G": 21, "H": 18, "I": 36}

router = APIRouter(include_in_schema=False)


@router.get("/ui/batches/{batch_id}/report.json")
async def report(batch_id: str, ui: UI, s: Sess) -> Response:
    async with ui.ctx.pool.acquire() as conn:
        b = await find_batch(conn, batch_id)
    dest = temp_path(ui.state_dir, ".json")
    ing = FileIngestor(ui.ctx.pool, ui.ctx.settings, ui.ctx.clock)
    await report_json(ing, b, dest)
    return _file(dest, f"{base_name(b)}.report.json", "application/json")


@router.get("/ui/batches/{batch_id}/results.csv")
async def results_csv_file(batch_id: str, ui: UI, s: Sess) -> Response:
    return await _results(ui, batch_id, ".csv", "text/csv; charset=utf-8", results_csv)


@router.get("/ui/batches/{batch_id}/results.xlsx")
async def results_xlsx_file(batch_id: str, ui: UI, s: Sess) -> Response:
    return await _results(ui, batch_id, ".xlsx", XLSX_TYPE, results_xlsx)


async def _results(ui: Console, batch_id: str, ext: str, media_type: str,
                   write: Callable[[Any, uuid.UUID, Path], Awaitable[int]]) -> Response:
    dest = temp_path(ui.state_dir, ext)
    try:
        async with ui.ctx.pool.acquire() as conn:
            b = await find_batch(conn, batch_id)
            await write(conn, b["id"], dest)
    except BaseException:
        _unlink(dest)
        raise
    return _file(dest, f"{base_name(b)}.results{ext}", media_type)


def _file(path: Path, filename: str, media_type: str) -> Response:
    """Stream ``path`` as an attachment named ``filename``; it is removed once sent."""
    ascii_name = "".join(ch if 32 < ord(ch) < 127 and ch not in '"\\;' else "_" for ch in filename)
    disposition = f'attachment; filename="{ascii_name}"; filename*=UTF-8\'\'{quote(filename)}'
    return FileResponse(
        path, media_type=media_type,
        headers={"Content-Disposition": disposition, "Cache-Control": "no-store",
                 "X-Content-Type-Options": "nosniff"},
        background=BackgroundTask(_unlink, path),
    )


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def outgoing_dir(state_dir: Path) -> Path:
    d = state_dir / "uploads" / ".outgoing"
    d.mkdir(parents=True, exist_ok=True)
    return d


def temp_path(state_dir: Path, suffix: str) -> Path:
    return outgoing_dir(state_dir) / f"{secrets.token_hex(12)}{suffix}"


def base_name(batch: Any) -> str:
    name = batch["source_name"]
    if batch["source"] in ("inbox", "cli") or (name and name not in ("api", "api (text/csv)")):
        return str(name or f"batch-{batch['id']}")
    return f"batch-{batch['id']}"


async def report_json(ingestor: FileIngestor, batch: Any, dest: Path) -> dict[str, Any]:
    """The batch's report, as the inbox writes it beside a processed file."""
    name = base_name(batch)
    if batch["state"] == "failed":  # nothing was kept of it: say why, as the inbox's error.txt does
        head = {"file": name, "target": batch["target"], "sha256": batch["sha256"],
                "format": detect_format(name), "batch_id": str(batch["id"]), "result": "failed",
                "error": batch["error"], "counts": {}, "rejected": []}
        await anyio.Path(dest).write_bytes(orjson.dumps(head, option=orjson.OPT_INDENT_2))
        return head
    outcome = FileOutcome(
        kind="cancelled" if batches.cancelled_while_receiving(batch) else "ingested",
        name=name, target=batch["target"], batch_id=batch["id"],
        sha256=batch["sha256"], counts=dict(batch["counts"] or {}), fmt=detect_format(name),
    )
    return await ingestor.write_report(outcome, dest)


async def results_csv(conn: asyncpg.Connection, batch_id: uuid.UUID, dest: Path) -> int:
    return await write_results_csv(conn, batch_id, dest)


def xlsx_row(r: Any) -> list[Any]:
    """One lead, exactly the columns and values of results.csv (times as Excel dates, UTC)."""
    ended = r["ended_at"]
    if isinstance(ended, datetime):
        ended = ended.astimezone(UTC).replace(tzinfo=None)
    return [
        r["e164"] or r["raw_number"] or "", r["external_id"] or "", r["state"], r["outcome"] or "",
        r["attempts"], r["agent"] or "", ended, *number_report.result_cells(r),
    ]


_ENDED = COLUMNS.index("ended_at")


def _text_cell(ws: WriteOnlyWorksheet, value: str) -> Cell:
    """``value`` as a string cell. openpyxl stores a str starting with ``=`` as a formula
    (and one spelled like an error, ``#N/A``, as an error): an external id of
    ``=HYPERLINK(...)`` would be a live link in the user's Excel."""
    c = WriteOnlyCell(ws, value=value)
    c.data_type = "s"
    return c


def _append(ws: WriteOnlyWorksheet, rows: Sequence[list[Any]]) -> None:
    for row in rows:
        # only the text openpyxl would not take as a string gets a cell of its own (a cell
        # per text costs a fifth more time on a large batch)
        cells: list[Any] = [_text_cell(ws, v) if isinstance(v, str) and v[:1] in ("=", "#") else v
                            for v in row]
        if row[_ENDED] is not None:
            c = WriteOnlyCell(ws, value=row[_ENDED])
            c.number_format = "yyyy-mm-dd hh:mm:ss"
            cells[_ENDED] = c
        ws.append(cells)


async def results_xlsx(conn: asyncpg.Connection, batch_id: uuid.UUID, dest: Path) -> int:
    """results.csv's rows as a real workbook (write-only mode: rows go to disk as added)."""
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("results")
    for col, width in _WIDTHS.items():
        ws.column_dimensions[col].width = width
    ws.freeze_panes = "A2"
    header = []
    for name in COLUMNS:
        c = WriteOnlyCell(ws, value="ended_at (UTC)" if name == "ended_at" else name)
        c.font = Font(bold=True)
        header.append(c)
    ws.append(header)
    n = 0
    buf: list[list[Any]] = []
    async with conn.transaction():
        async for r in conn.cursor(Q.batch_results, batch_id, prefetch=_ROWS_PER_STEP):
            buf.append(xlsx_row(r))
            n += 1
            if len(buf) >= _ROWS_PER_STEP:
                rows, buf = buf, []
                await anyio.to_thread.run_sync(_append, ws, rows)
    await anyio.to_thread.run_sync(_append, ws, buf)
    tmp = dest.with_name(dest.name + ".tmp")
    await anyio.to_thread.run_sync(wb.save, str(tmp))
    await anyio.Path(tmp).replace(dest)
    return n
