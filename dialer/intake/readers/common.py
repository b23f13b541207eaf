"""What every lead-file reader shares: the formats, the row and fingerprint types, the
``RowReader`` base class and the header helpers."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple, Self

from dialer.errors import FileUnreadable

FORMATS = ("csv", "json", "ndjson", "xlsx")
TEXT_FORMATS = frozenset({"csv", "json", "ndjson"})

_EXTENSIONS = {
    ".csv": "csv",
    ".txt": "csv",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".xlsx": "xlsx",
}

_MAX_GENERATED_COLUMNS = 1000  # past this, a header's dict builder is not generated


def detect_format(name: str) -> str | None:
    """By extension, case-insensitive: .csv/.txt→csv, .json→json, .ndjson/.jsonl→ndjson,
    .xlsx→xlsx; else None."""
    dot = name.rfind(".")
    if dot < 0:
        return None
    return _EXTENSIONS.get(name[dot:].lower())


@dataclass(slots=True)
class RawRow:
    """One input row as read, before any validation."""

    line: int
    values: dict[str, Any] | None
    error: str | None = None


@dataclass(slots=True)
class RowBlock:
    """Consecutive well-formed CSV rows, as lists of cells (the header's width, first cell
    not empty), read from lines ``first_line`` on. ``plain``: no cell holds a backslash
    or a tab (nor, as in every block, a newline, carriage return or NUL)."""

    first_line: int
    rows: list[list[str]]
    plain: bool


class FileId(NamedTuple):
    """Which file, in which version: a copy over a file (cp, scp, SMB) keeps its inode, not
    its size and modification time."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(slots=True)
class Fingerprint:
    sha256: str
    size: int
    encoding: str | None
    file: FileId | None = None  # the file hashed, as it was opened: the parse reads only it


class RowReader(ABC):
    """Iterate for ``RawRow``s; close (or use as a context manager) when done."""

    fmt: str
    header: list[str] | None

    def __init__(self, fmt: str, raw: BinaryIO, owned: bool, skip_rows: int) -> None:
        self.fmt = fmt
        self.header = None
        self._raw = raw
        self._owned = owned
        self._skip = max(0, skip_rows)
        self._it: Iterator[Any] | None = None  # rows, or blocks and rows (iter_blocks)
        self._closed = False

    @abstractmethod
    def _rows(self) -> Iterator[RawRow]: ...

    def __iter__(self) -> Iterator[RawRow]:
        if self._it is None:
            self._it = iter(()) if self._closed else self._rows()
        return self._it

    def iter_blocks(self) -> Iterator[RawRow | RowBlock]:
        """The same rows, where the reader can, as ``RowBlock``s of many rows at once (a
        hot path for the intake worker); read either this way or by ``__iter__``."""
        return iter(self)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        it = self._it
        if it is not None and hasattr(it, "close"):
            it.close()
        if self._owned:
            self._raw.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def unique_names(names: list[str], what: str) -> list[str]:
    """Trailing unnamed columns are dropped (spreadsheet padding); an unnamed column in
    the middle is called ``column_<n>``; duplicates make the file unreadable."""
    while names and not names[-1]:
        names.pop()
    names = [n or f"column_{i}" for i, n in enumerate(names, 1)]
    dups = [n for n, c in Counter(names).items() if c > 1]
    if dups:
        listed = ", ".join(repr(n) for n in dups)
        raise FileUnreadable(f"duplicate column names in the {what}: {listed}")
    return names


def dict_builder(names: Sequence[str]) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """``row -> {names[0]: row[0], ...}``, generated for the header: a dict display is
    about twice as fast as ``dict(zip(names, row))``.  Only indices are interpolated into
    the source; the names themselves are passed as variables."""
    if len(names) > _MAX_GENERATED_COLUMNS:
        keys = tuple(names)
        return lambda row: dict(zip(keys, row, strict=False))
    items = ", ".join(f"_k{i}: row[{i}]" for i in range(len(names)))
    namespace: dict[str, Any] = {f"_k{i}": n for i, n in enumerate(names)}
    exec(f"def build(row):\n    return {{{items}}}\n", namespace)  # noqa: S102
    builder: Callable[[Sequence[Any]], dict[str, Any]] = namespace["build"]
    return builder



def describe(e: BaseException) -> str:
    text = str(e).strip().split("\n", 1)[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
