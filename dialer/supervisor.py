"""One supervisor for every background loop: a loop that fails is logged with its
traceback, counted (``dialer_task_restarts_total{task}``) and started again with a
backoff; the daemon itself never ends because a dependency failed.

A loop that *returns* is done (the drain stops loops by asking them to return);
cancellation passes through untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio

from dialer.store.retry import DB_DOWN

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a loop that ran this long before failing starts its backoff afresh

_on_restart: list[Callable[[str], None]] = []


def on_restart(fn: Callable[[str], None]) -> Callable[[], None]:
    """Be told the name of every loop that failed (metrics); returns an unsubscribe."""
    _on_restart.append(fn)
    return lambda: _on_restart.remove(fn) if fn in _on_restart else None


def failed(task: str, e: BaseException) -> None:
    """Log and count one failure of ``task`` (a loop, or one run of a periodic job)."""
    if _all(e, _filesystem):  # before DB_DOWN, which holds OSError
        paths = sorted({str(x.filename) for x in _leaves(e) if isinstance(x, OSError)})
        log.error("task failed: filesystem error", extra={"task": task, "error": str(e), "paths": paths})
    elif only(e, DB_DOWN):
        log.warning("task failed: database unreachable", extra={"task": task, "error": str(e)})
    else:
        log.error("task failed", exc_info=e, extra={"task": task})
    for fn in list(_on_restart):
        try:
            fn(task)
        except Exception:
            log.exception("restart observer failed")


def only(e: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """``e`` is one of ``kinds``, or an exception group of nothing else."""
    return _all(e, lambda x: isinstance(x, kinds))


def _all(e: BaseException, test: Callable[[BaseException], bool]) -> bool:
    return all(test(x) for x in _leaves(e))


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for x in e.exceptions for leaf in _leaves(x)]
    return [e]


def _filesystem(e: BaseException) -> bool:
    """An OSError about a path (an inbox dir missing or not writable, a full disk on open):
    it names its file. A database socket that is not there (FileNotFoundError on the
    embedded server's Unix socket) names none: that is an outage."""
    return isinstance(e, OSError) and e.filename is not None


async def supervise(task: str, loop: Callable[[], Awaitable[object]],
                    running: Callable[[], bool] = lambda: True,
                    initial_backoff_s: float = INITIAL_BACKOFF_S) -> None:
    """Run ``loop`` until it returns (or ``running()`` turns false), restarting it on failure."""
    delay = initial_backoff_s
    while running():
        started = time.monotonic()
        try:
            await loop()
            return
        except Exception as e:  # an ExceptionGroup of Exceptions included; cancellation is not
            failed(task, e)
        if time.monotonic() - started > HEALTHY_AFTER_S:
            delay = initial_backoff_s
        log.info("restarting task", extra={"task": task, "in_s": delay})
        await anyio.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF_S)
