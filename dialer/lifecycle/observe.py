"""After-commit news of calls that ended, whatever ended them.

Every path that ends calls outside the callback fast path (provider rejection, the
re-check at send time, caps, DNC, cancels, the stale reaper, an uncertain give-up)
reports here *after its transaction committed*; metrics count the outcome and batch
completion looks at the batch. One way in, so nothing is counted twice or missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ended:
    target: str
    outcome: str  # the terminal state
    batch_id: Any  # uuid.UUID
    n: int = 1


Listener = Callable[[Sequence[Ended]], None]
_listeners: list[Listener] = []


def subscribe(fn: Listener) -> Callable[[], None]:
    """Add a listener; returns the function that removes it."""
    _listeners.append(fn)

    def remove() -> None:
        if fn in _listeners:
            _listeners.remove(fn)

    return remove


def from_rows(rows: Iterable[Any], outcome: str) -> list[Ended]:
    """Rows with ``target`` and ``batch_id`` (as the ending queries return them)."""
    return [Ended(r["target"], outcome, r["batch_id"]) for r in rows]


def ended(items: Sequence[Ended]) -> None:
    """Tell every listener; call only once the ending committed."""
    if not items:
        return
    for fn in list(_listeners):
        try:
            fn(items)
        except Exception:  # an observer's bug must not undo or hide the ending
            log.exception("ended-call observer failed")
