"""Which names in the inbox are not lead files: the inbox's own folders, and the names
it ignores.  Apart from ``inbox.py`` so that the configuration can refuse a target
whose folder would never be scanned without importing the intake."""

from __future__ import annotations

RESERVED = frozenset({"processed", "failed"})


def ignored(name: str) -> bool:
    """Dotfiles, and files still being written: ``*.tmp``, ``*.part`` in any case (a
    Windows tool writes ``BIG.TMP``, then renames it).  Nothing else: our own outputs
    (reports, error notes, results) are written under ``processed/`` and ``failed/``,
    which are never scanned, so ``customers.results.csv`` dropped in is a lead file."""
    return name.startswith(".") or name.lower().endswith((".tmp", ".part"))
