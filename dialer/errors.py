"""The one place where the daemon's error types live.

HTTP maps them to ``{"error": {"code", "message", "details"}}`` in ``http/errors.py``.
"""

from __future__ import annotations

from typing import Any


class DialerError(Exception):
    """Base class: a message meant for a human, and a stable machine code."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(DialerError):
    code = "config_error"


class NotFound(DialerError):
    code = "not_found"
    http_status = 404


class Conflict(DialerError):
    code = "conflict"
    http_status = 409


class InvalidInput(DialerError):
    """A request or file the daemon understood but cannot accept."""

    code = "invalid"
    http_status = 422


class TooLarge(DialerError):
    code = "too_large"
    http_status = 413


class Unauthorized(DialerError):
    code = "unauthorized"
    http_status = 401


class FileUnreadable(DialerError):
    """A lead file that cannot be read at all: it goes to ``INBOX/failed/``."""

    code = "unreadable"
    http_status = 422


class FileReplaced(FileUnreadable):
    """What a path names is no longer the file that was seen there (by the inbox's scan, or
    fingerprinted): another file, a symbolic link, or new content put in its place."""


class NotReady(DialerError):
    code = "not_ready"
    http_status = 503


class Busy(DialerError):
    """A lock the request needs stayed held past its wait (another batch of the target being
    finalised; for a do-not-call import, any batch's finalise): nothing was stored, the same
    request may succeed in a moment."""

    code = "busy"
    http_status = 503


class TimedOut(DialerError):
    """Work over a whole input (a batch's finalise, a do-not-call import's merge and cancel)
    ran past the time its size allows (``store/limits.py``) and was stopped: its transaction
    rolled back, nothing was stored. The same request may succeed on a less loaded database."""

    code = "timed_out"
    http_status = 503
