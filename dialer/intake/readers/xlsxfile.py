"""XLSX: the first worksheet of a workbook, read with openpyxl in read-only mode.

openpyxl streams the worksheet but reads every other part whole, the shared-strings
table above all, and a small zip can declare parts many times its own size. So the
archive's directory is checked before openpyxl opens anything: each part's declared
size against a limit, and against its compressed size (a zip bomb). Declared sizes are a
real bound: ``zipfile`` never reads past one (a part that holds more fails its CRC).
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from dialer.errors import FileUnreadable
from dialer.intake.readers.common import RawRow, RowReader, describe, dict_builder, unique_names

MAX_SHARED_STRINGS_BYTES = 64 << 20  # held whole, as Python strings: several times this in memory
MAX_SHEET_BYTES = 1 << 30  # streamed: this bounds the parse time, not memory
MAX_PART_BYTES = 16 << 20  # any other XML part (workbook, styles, theme, relationships...)
MAX_RATIO = 100  # real workbooks unpack 5-15 times their compressed size; deflate can reach ~1000
_RATIO_FLOOR = 1 << 20  # below this, a part may compress as well as it likes

_UNREADABLE = "not a readable .xlsx workbook"


def unpacked_size(source: Path | BinaryIO) -> int:
    """The sum of the parts' declared sizes: what a parser would see (0 if it is no zip).
    ``source``: a path, or an open file (read from its start, left open)."""
    try:
        if not isinstance(source, Path):
            source.seek(0)
        with zipfile.ZipFile(source) as zf:
            return sum(p.file_size for p in zf.infolist())
    except (OSError, EOFError, ValueError, zipfile.BadZipFile):
        return 0  # the reader says what is wrong with it


def check_archive(raw: BinaryIO) -> None:
    """Raise ``FileUnreadable`` for a part that would unpack past its limit or its ratio."""
    from openpyxl.packaging.manifest import Manifest
    from openpyxl.xml.constants import ARC_CONTENT_TYPES, SHARED_STRINGS, WORKSHEET_TYPE
    from openpyxl.xml.functions import fromstring

    with zipfile.ZipFile(raw) as zf:  # a file object passed in stays open
        parts = zf.infolist()
        types: dict[str, set[str]] = {}
        strings = None
        for p in parts:
            if p.filename == ARC_CONTENT_TYPES:
                _check_part(p, MAX_PART_BYTES, p.filename)
        try:
            listed = zf.read(ARC_CONTENT_TYPES)  # by name, as openpyxl reads it (the last one wins)
        except KeyError:
            listed = None  # openpyxl will say what is missing
        if listed is not None:
            manifest = Manifest.from_tree(fromstring(listed))
            for o in manifest.Override:
                types.setdefault(o.PartName[1:], set()).add(o.ContentType)
            found = manifest.find(SHARED_STRINGS)  # the part openpyxl will load whole
            strings = found.PartName[1:] if found is not None else None
    for p in parts:
        name = p.filename
        if name == strings:
            _check_part(p, MAX_SHARED_STRINGS_BYTES, f"its shared-strings table ({name})",
                        ": save the sheet as CSV, or split it into smaller workbooks")
        elif types.get(name) == {WORKSHEET_TYPE}:
            _check_part(p, MAX_SHEET_BYTES, f"worksheet {name}")
        elif name.lower().endswith((".xml", ".rels")):
            _check_part(p, MAX_PART_BYTES, f"part {name}")
        else:  # media and the like: openpyxl does not parse them in read-only mode
            _check_part(p, None, f"part {name}")


def _check_part(p: zipfile.ZipInfo, limit: int | None, what: str, hint: str = "") -> None:
    size, packed = p.file_size, p.compress_size
    if limit is not None and size > limit:
        raise FileUnreadable(
            f"{_UNREADABLE}: {what} unpacks to {size:,} bytes, over the {limit:,}-byte limit{hint}"
        )
    if size > _RATIO_FLOOR and size > MAX_RATIO * packed:
        raise FileUnreadable(
            f"{_UNREADABLE}: {what} unpacks to {size:,} bytes from {packed:,} "
            f"({size // max(packed, 1):,} times), past the {MAX_RATIO} times of a real workbook: "
            "refused as a zip bomb"
        )


def _cell(value: Any) -> Any:
    if type(value) is float:
        return int(value) if value.is_integer() else value
    if isinstance(value, datetime):
        if value.time() == time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return value


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# A sheet stores only the cells it has, each with its own address, so width costs no bytes:
# a header wider than this is refused rather than every row being built that wide
MAX_COLUMNS = 2_000
MAX_ROWS = 1_048_576  # a worksheet's last row (ECMA-376, as Excel): a higher number is no workbook


def _stored_rows(ws: Any) -> Iterator[tuple[int, list[tuple[int, Any]]]]:
    """The worksheet's rows as the file stores them: ``(row number, [(column, value), ...])``.
    Not ``iter_rows``: it makes up every row missing in between and pads each row out to
    its last cell's column, so a 5 KB sheet whose second row is numbered 999,999,999,999
    (or a cell in column ZZZ) took days."""
    from openpyxl.worksheet._reader import WorkSheetParser

    wb = ws.parent
    with ws._get_source() as src:
        parser = WorkSheetParser(src, ws._shared_strings, data_only=wb.data_only, epoch=wb.epoch,
                                 date_formats=wb._date_formats, timedelta_formats=wb._timedelta_formats)
        for idx, cells in parser.parse():
            if idx > MAX_ROWS:
                raise FileUnreadable(f"{_UNREADABLE}: row {idx:,} is past a worksheet's last row "
                                     f"({MAX_ROWS:,})")
            yield idx, [(c["column"], c["value"]) for c in cells if c["value"] is not None]


class XlsxReader(RowReader):
    def __init__(self, raw: BinaryIO, owned: bool, skip_rows: int) -> None:
        super().__init__("xlsx", raw, owned, skip_rows)
        import openpyxl  # heavy: only when a workbook comes

        try:
            check_archive(raw)
            raw.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._wb = openpyxl.load_workbook(raw, read_only=True, data_only=True)
        except FileUnreadable:
            raise
        except Exception as e:
            raise FileUnreadable(f"{_UNREADABLE}: {describe(e)}") from e
        try:
            sheets = self._wb.worksheets
            if not sheets:
                raise FileUnreadable(f"{_UNREADABLE}: it has no worksheet")
            self._sheet_rows = _stored_rows(sheets[0])  # no <dimension>: it may be stale
            for _, cells in self._sheet_rows:
                named = [(col, name) for col, v in cells
                         if (name := str(_cell(v)).strip().lstrip("\ufeff").strip())]
                if named:
                    width = max(col for col, _ in named)
                    if width > MAX_COLUMNS:
                        raise FileUnreadable(f"the header row reaches column {width:,}, past the "
                                             f"{MAX_COLUMNS:,} columns a lead file may have")
                    names = [""] * width
                    for col, name in named:
                        names[col - 1] = name
                    self.header = unique_names(names, "header row")
                    break
            else:
                raise FileUnreadable("no header row: the first worksheet is empty")
        except FileUnreadable:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise FileUnreadable(f"{_UNREADABLE}: {describe(e)}") from e

    def _rows(self) -> Iterator[RawRow]:
        assert self.header is not None
        w = len(self.header)
        build = dict_builder(self.header)
        skip = self._skip
        try:
            for line, stored in self._sheet_rows:
                kept = [(col, v) for col, v in stored if not _blank(v)]
                if not kept:
                    continue
                if skip:
                    skip -= 1
                    continue
                n = max(col for col, _ in kept)
                if n > w:
                    yield RawRow(line, None, f"{n} values but the header has {w} columns")
                    continue
                cells: list[Any] = [None] * w
                for col, v in stored:
                    if col <= w:
                        cells[col - 1] = _cell(v)
                yield RawRow(line, build(cells))
        except FileUnreadable:
            raise
        except Exception as e:
            raise FileUnreadable(f"{_UNREADABLE}: {describe(e)}") from e

    def close(self) -> None:
        wb = getattr(self, "_wb", None)
        if wb is not None:
            self._wb = None
            try:
                wb.close()
            except Exception:  # noqa: S110 - a broken archive: nothing more to release
                pass
        super().close()
