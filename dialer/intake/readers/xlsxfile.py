"""XLSX: the first worksheet of a workbook, read with openpyxl in read-only mode."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import Any, BinaryIO

from dialer.errors import FileUnreadable
from dialer.intake.readers.common import RawRow, RowReader, describe, dict_builder, unique_names


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


class XlsxReader(RowReader):
    def __init__(self, raw: BinaryIO, owned: bool, skip_rows: int) -> None:
        super().__init__("xlsx", raw, owned, skip_rows)
        import openpyxl  # heavy: only when a workbook comes

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._wb = openpyxl.load_workbook(raw, read_only=True, data_only=True)
        except Exception as e:
            raise FileUnreadable(f"not a readable .xlsx workbook: {describe(e)}") from e
        try:
            sheets = self._wb.worksheets
            if not sheets:
                raise FileUnreadable("not a readable .xlsx workbook: it has no worksheet")
            ws = sheets[0]
            ws.reset_dimensions()  # a stale <dimension> must not cut rows or columns
            self._sheet_rows: Iterator[tuple[int, tuple[Any, ...]]] = enumerate(
                ws.iter_rows(min_row=1, values_only=True), 1
            )
            for _, row in self._sheet_rows:
                names = ["" if v is None else str(_cell(v)).strip().lstrip("\ufeff").strip() for v in row]
                if any(names):
                    self.header = unique_names(names, "header row")
                    break
            else:
                raise FileUnreadable("no header row: the first worksheet is empty")
        except FileUnreadable:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise FileUnreadable(f"not a readable .xlsx workbook: {describe(e)}") from e

    def _rows(self) -> Iterator[RawRow]:
        assert self.header is not None
        w = len(self.header)
        build = dict_builder(self.header)
        skip = self._skip
        try:
            for line, row in self._sheet_rows:
                if all(map(_blank, row)):
                    continue
                if skip:
                    skip -= 1
                    continue
                n = len(row)
                while n > w and _blank(row[n - 1]):
                    n -= 1
                if n > w:
                    yield RawRow(line, None, f"{n} values but the header has {w} columns")
                    continue
                cells = [_cell(v) for v in row[:n]]
                if n < w:
                    cells += [None] * (w - n)
                yield RawRow(line, build(cells))
        except Exception as e:
            raise FileUnreadable(f"not a readable .xlsx workbook: {describe(e)}") from e

    def close(self) -> None:
        wb = getattr(self, "_wb", None)
        if wb is not None:
            self._wb = None
            try:
                wb.close()
            except Exception:  # noqa: S110 - a broken archive: nothing more to release
                pass
        super().close()
