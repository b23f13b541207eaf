"""Multipart forms read as a stream: small text fields in memory, the one file part
written straight to disk as it arrives (never held whole in memory), with a size limit
enforced while reading and a hook that vets the fields (the CSRF token) before a single
byte of the file is stored.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from dialer.intake.inbox import fit_name

MAX_FIELD_BYTES = 64 * 1024
MAX_NAME_BYTES = 200  # of a file's name: well inside a file system's 255, with room beside it
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


class FormError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class StreamedForm:
    fields: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    filename: str | None = None
    file_field: str | None = None
    size: int = 0

    def discard(self) -> None:
        if self.file_path is not None:
            with contextlib.suppress(OSError):
                self.file_path.unlink()
            self.file_path = None


def safe_filename(raw: str) -> str:
    """The base name only, without control characters or separators, at most
    ``MAX_NAME_BYTES`` bytes of UTF-8 (its extension kept)."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("", name).strip().lstrip(".")
    return fit_name(name, MAX_NAME_BYTES).strip() or "upload"


def _limit_text(limit: int) -> str:
    mb = limit / (1024 * 1024)
    return f"{mb:.0f} MB" if mb >= 1 else f"{limit // 1024} KB"


async def read_form(
    request: Request,
    incoming: Path,
    limit: int,
    *,
    before_file: Callable[[dict[str, str], str], None] | None = None,
    file_fields: tuple[str, ...] = ("file",),
) -> StreamedForm:
    """Read a ``multipart/form-data`` body; the file (if any) lands in ``incoming``.

    ``before_file(fields, filename)`` runs when a file part starts, with the fields read
    so far; it raises ``FormError`` to refuse. The caller owns (and must remove or move)
    ``form.file_path``.
    """
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data":
        raise FormError(415, "expected a multipart/form-data form")
    if not params.get(b"boundary"):
        raise FormError(400, "the form could not be read: its multipart/form-data type names no boundary")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MAX_FIELD_BYTES:
        raise FormError(413, f"the file is over the {_limit_text(limit)} limit")

    events: list[tuple[str, Any]] = []
    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": lambda: events.append(("begin", None)),
            "on_part_data": lambda d, s, e: events.append(("data", bytes(d[s:e]))),
            "on_part_end": lambda: events.append(("end", None)),
            "on_header_field": lambda d, s, e: events.append(("hfield", bytes(d[s:e]))),
            "on_header_value": lambda d, s, e: events.append(("hvalue", bytes(d[s:e]))),
            "on_header_end": lambda: events.append(("hend", None)),
            "on_headers_finished": lambda: events.append(("headers", None)),
        },
    )
    form = StreamedForm()
    out: anyio.AsyncFile[bytes] | None = None
    header_name = b""
    header_value = b""
    headers: dict[bytes, bytes] = {}
    part: str | None = None  # "field" | "file" | "skip"
    name = ""
    value = bytearray()
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + MAX_FIELD_BYTES:
                raise FormError(413, f"the file is over the {_limit_text(limit)} limit")
            try:
                parser.write(chunk)
            except FormParserError as e:
                raise FormError(400, f"the form could not be read: {e}") from None
            pending: list[bytes] = []
            for kind, data in events:
                if kind == "begin":
                    headers, header_name, header_value, part = {}, b"", b"", None
                elif kind == "hfield":
                    header_name += data
                elif kind == "hvalue":
                    header_value += data
                elif kind == "hend":
                    headers[header_name.lower()] = header_value
                    header_name, header_value = b"", b""
                elif kind == "headers":
                    _, opts = parse_options_header(headers.get(b"content-disposition"))
                    name = opts.get(b"name", b"").decode("utf-8", "replace")
                    raw_filename = opts.get(b"filename")
                    value = bytearray()
                    if raw_filename is None:
                        part = "field"
                    elif not raw_filename or name not in file_fields:
                        part = "skip"  # an empty file input, or a file where none belongs
                    else:
                        if form.file_path is not None:
                            raise FormError(400, "send one file at a time")
                        filename = safe_filename(raw_filename.decode("utf-8", "replace"))
                        if before_file is not None:
                            before_file(form.fields, filename)
                        form.filename, form.file_field = filename, name
                        await anyio.Path(incoming).mkdir(parents=True, exist_ok=True)
                        form.file_path = incoming / f"{secrets.token_hex(12)}.part"
                        out = await anyio.open_file(form.file_path, "wb")
                        part = "file"
                elif kind == "data":
                    if part == "file":
                        form.size += len(data)
                        if form.size > limit:
                            raise FormError(413, f"the file is over the {_limit_text(limit)} limit")
                        pending.append(data)
                    elif part == "field":
                        value += data
                        if len(value) > MAX_FIELD_BYTES:
                            raise FormError(413, f"the field {name!r} is too long")
                elif kind == "end":
                    if part == "file" and out is not None:
                        if pending:
                            await out.write(b"".join(pending))
                            pending = []
                        await out.aclose()
                        out = None
                    elif part == "field":
                        form.fields[name] = value.decode("utf-8", "replace")
                    part = None
            events.clear()
            if pending and out is not None:
                await out.write(b"".join(pending))
        parser.finalize()
        if out is not None:
            raise FormError(400, "the upload was cut short: try again")
    except ClientDisconnect:
        form.discard()
        raise FormError(400, "the browser stopped sending the file") from None
    except BaseException:
        form.discard()
        raise
    finally:
        if out is not None:
            with contextlib.suppress(Exception):
                await out.aclose()
            form.discard()
    return form
