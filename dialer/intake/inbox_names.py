"""Which names in the inbox are not lead files: the inbox's own folders, and the names
it ignores; and how a name is shown.  Apart from ``inbox.py`` so that the configuration
can refuse a target whose folder would never be scanned without importing the intake."""

from __future__ import annotations

import os

RESERVED = frozenset({"processed", "failed"})


def ignored(name: str) -> bool:
    """Dotfiles, and files still being written: ``*.tmp``, ``*.part`` in any case (a
    Windows tool writes ``BIG.TMP``, then renames it).  Nothing else: our own outputs
    (reports, error notes, results) are written under ``processed/`` and ``failed/``,
    which are never scanned, so ``customers.results.csv`` dropped in is a lead file."""
    return name.startswith(".") or name.lower().endswith((".tmp", ".part"))


def shown(name: str | os.PathLike[str]) -> str:
    """A file's name (or path) as text anything takes (PostgreSQL, JSON, a note): a Linux name
    is bytes, and one that is not UTF-8 (a Latin-1 client's ``é``, ``b'\\xe9'``) comes as a
    lone surrogate, which no encoder takes; each such byte is shown ``\\xNN`` instead, so
    the name reads whole. The file itself keeps its own bytes."""
    text = os.fspath(name)
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
