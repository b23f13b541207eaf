"""CSV: the delimiter sniffed from the header line, a ``str.split`` fast path while the
file has no quotes, ``csv.reader`` from the first quote on.

Nothing is dropped silently: a row that runs over several lines and is rejected (a
quoted field never closed, or closed and followed by text, or past the field limit, or
the wrong number of cells) is reported on each of its lines, so a quote left open cannot
swallow the rows after it unseen.  A one-line row that a quote makes malformed is read
leniently, as spreadsheets do (``1,"Smith" Jr`` → ``Smith Jr``)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from itertools import chain, repeat
from operator import itemgetter
from typing import BinaryIO

from dialer.errors import FileUnreadable
from dialer.intake.readers.common import RawRow, RowBlock, RowReader, dict_builder, unique_names
from dialer.intake.readers.text import text_pieces

_QUOTED = re.compile(r'"[^"]*"')
# how the reason of each further line of a rejected multi-line row starts: that line is
# no record of its own (an API batch's rejects count records: batch_rejected_rows_indexed)
CONTINUED = ("inside the row of line ", "malformed CSV: inside the ")
_SENTINEL = "\x00"  # stands for an unreadable physical line inside the csv.reader feed
_OVERLONG, _NUL = "L", "N"
_EOF_IN_QUOTES = "unexpected end of data"  # csv's strict-mode error: a quote open at the end


class CsvReader(RowReader):
    def __init__(
        self, raw: BinaryIO, owned: bool, encoding: str, max_line_bytes: int, skip_rows: int
    ) -> None:
        super().__init__("csv", raw, owned, skip_rows)
        self._max = max_line_bytes
        self._overlong = f"line is longer than {max_line_bytes} bytes"
        # A quoted field may span lines: the field limit bounds what an unbalanced quote
        # can swallow.  It is process-wide; every reader sets it to its own line limit.
        csv.field_size_limit(max_line_bytes + 2)
        # csv.reader path: the lines of the piece being read and of the one before it (a
        # row that spans lines may begin there), and how many lines came before those
        self._lines: list[str] = []
        self._older: list[str] = []
        self._fed = 0
        pieces = text_pieces(raw, encoding, max_line_bytes)
        self._line = 0  # physical lines consumed
        seen_any = False
        for piece in pieces:
            seen_any = True
            if piece is None:
                raise FileUnreadable(
                    f"no CSV header: line {self._line + 1} is longer than {max_line_bytes} bytes"
                )
            pos = 0
            for text in io.StringIO(piece, newline=""):
                self._line += 1
                pos += len(text)
                names = self._parse_header(text.rstrip("\r\n"))
                if names is not None:
                    self.header = names
                    rest = piece[pos:]
                    self._pieces: Iterator[str | None] = chain((rest,), pieces) if rest else pieces
                    return
        if not seen_any:
            raise FileUnreadable("file is empty")
        raise FileUnreadable("no CSV header: the file has only empty lines")

    def _parse_header(self, text: str) -> list[str] | None:
        if not text.strip():
            return None
        if "\x00" in text:
            raise FileUnreadable(f"NUL byte in the header line (line {self._line})")
        bare = _QUOTED.sub("", text)
        counts = [bare.count(d) for d in (",", ";", "\t")]
        self._delim = (",", ";", "\t")[counts.index(max(counts))]
        cells = next(csv.reader([text], delimiter=self._delim), [])
        names = [c.strip().lstrip("\ufeff").strip() for c in cells]
        if not any(names):
            return None  # a line of bare delimiters is an empty line
        names = unique_names(names, "CSV header")
        self._width = len(names)
        self._build = dict_builder(names)
        return names

    # -- rows

    def _odd(self, line: int, row: list[str]) -> RawRow | None:
        """A row whose cell count differs from the header's (or whose first cell is
        empty): blank (every cell empty) → None; short → padded with ""; long → error
        unless only empty cells overflow (trailing delimiters, as spreadsheets write)."""
        w = self._width
        n = len(row)
        if n and row[0][:1] == _SENTINEL:
            code = row[0][1:2]
            return RawRow(line, None, self._overlong if code == _OVERLONG else "NUL byte in line")
        if not any(row):
            return None  # a blank line, or bare delimiters (spreadsheet padding)
        if n < w:
            return RawRow(line, self._build(row + [""] * (w - n)))
        if n > w:
            while n > w and not row[n - 1]:
                n -= 1
            if n > w:
                return RawRow(line, None, f"{n} values but the header has {w} columns")
            row = row[:w]
        return RawRow(line, self._build(row))

    def iter_blocks(self) -> Iterator[RawRow | RowBlock]:
        if self._it is None:
            self._it = iter(()) if self._closed else self._items(blocks=True)
        return self._it

    def _rows(self) -> Iterator[RawRow]:
        return self._items(blocks=False)  # type: ignore[return-value]  # no block without blocks=True

    def _items(self, blocks: bool) -> Iterator[RawRow | RowBlock]:
        w = self._width
        build = self._build
        odd = self._odd
        delim = self._delim
        split = str.split
        skip = self._skip
        line = self._line
        pieces = self._pieces
        first_cell = itemgetter(0)
        for piece in pieces:
            if piece is None:
                line += 1
                if skip:
                    skip -= 1
                else:
                    yield RawRow(line, None, self._overlong)
                continue
            if w > 1 and '"' not in piece and "\x00" not in piece:
                if "\r" in piece:
                    crlf = piece.count("\r\n")
                    if piece.count("\r") != crlf:
                        yield from self._csv_rows(chain((piece,), pieces), line, skip)
                        return
                    piece = piece.replace("\r\n", "\n")
                lines = piece.split("\n")
                if not lines[-1]:
                    lines.pop()
                rows = list(map(split, lines, repeat(delim)))
                if blocks and all(len(row) == w for row in rows) and all(map(first_cell, rows)):
                    n = len(rows)
                    if skip >= n:
                        skip -= n
                    else:
                        plain = "\\" not in piece and (delim == "\t" or "\t" not in piece)
                        yield RowBlock(line + skip + 1, rows[skip:] if skip else rows, plain)
                        skip = 0
                    line += n
                    continue
                for row in rows:
                    line += 1
                    if len(row) == w and row[0]:
                        if skip:
                            skip -= 1
                        else:
                            yield RawRow(line, build(row))
                    else:
                        raw_row = odd(line, row)
                        if raw_row is not None:
                            if skip:
                                skip -= 1
                            else:
                                yield raw_row
                continue
            yield from self._csv_rows(chain((piece,), pieces), line, skip)
            return

    def _feed(self, piece: str | None) -> list[str]:
        """Lines for csv.reader; an unreadable line becomes a sentinel line that parses
        into more cells than the header has, starting with NUL (never in real data).
        The current piece's lines are kept: a malformed one-line row is read again from them."""
        if piece is None:
            lines = [_SENTINEL + _OVERLONG + self._delim * self._width]
        elif "\x00" not in piece:
            lines = list(io.StringIO(piece, newline=""))
        else:
            nul = _SENTINEL + _NUL + self._delim * self._width
            lines = [nul if "\x00" in text else text for text in io.StringIO(piece, newline="")]
        self._fed += len(self._older)
        self._older, self._lines = self._lines, lines
        return lines

    def _csv_rows(self, pieces: Iterator[str | None], base: int, skip: int) -> Iterator[RawRow]:
        w = self._width
        build = self._build
        odd = self._odd
        # strict: a quoted field still open at the end of the file is an error, not a row
        # holding every line after the quote; so is a closing quote followed by text
        reader = csv.reader(
            chain.from_iterable(map(self._feed, pieces)), delimiter=self._delim, strict=True
        )
        end = 0  # reader.line_num after the previous record
        while True:
            try:
                for row in reader:
                    line = base + end + 1
                    end = reader.line_num
                    raw_row = RawRow(line, build(row)) if len(row) == w and row[0] else odd(line, row)
                    if raw_row is None:
                        continue
                    if raw_row.error is not None and base + end > line:
                        for item in _spanned(line, base + end, raw_row.error, "this row",
                                             f"{CONTINUED[0]}{line} ({raw_row.error})"):
                            if skip:
                                skip -= 1
                            else:
                                yield item
                        continue
                    if skip:
                        skip -= 1
                    else:
                        yield raw_row
                return
            except csv.Error as e:
                line = base + end + 1
                end = reader.line_num
                last = base + end
                items: Iterable[RawRow]
                if str(e) == _EOF_IN_QUOTES:
                    items = _spanned(line, last, "malformed CSV: a quoted field opened here is never "
                                     "closed", "it", f"{CONTINUED[1]}quoted field opened "
                                     f"on line {line}, which is never closed")
                elif (lax := self._lenient(end - (last - line), end)) is not None:
                    raw_row = RawRow(line, build(lax)) if len(lax) == w and lax[0] else odd(line, lax)
                    items = () if raw_row is None else (raw_row,)
                else:
                    cause = f"{e} on line {last}" if last > line else str(e)
                    items = _spanned(line, last, f"malformed CSV: {cause}", "this row",
                                     f"{CONTINUED[1]}row of line {line} ({cause})")
                for item in items:
                    if skip:
                        skip -= 1
                    else:
                        yield item

    def _lenient(self, first: int, last: int) -> list[str] | None:
        """The cells of the row on lines ``first``-``last`` (csv.reader's count) read again,
        leniently, or None. One line: as before strict mode, a closing quote followed by
        text keeps the text (``"Smith" Jr``, as spreadsheets read it). Several lines: only
        blanks between a closing quote and the next delimiter are forgiven (a multi-line
        address written ``"12 Main St\nApt 4" ,``); other text there is as likely a stray
        quote that swallowed rows, so it stays an error. None too if the row's lines are no
        longer at hand (it began in an earlier block) or, read again, it does not end at
        ``last``."""
        lo, hi = first - self._fed - 1, last - self._fed
        window = self._older + self._lines
        if lo < 0 or hi > len(window):
            return None
        lines = window[lo:hi]
        if len(lines) > 1:
            text = _without_blanks_after_quotes("".join(lines), self._delim)
            if text is None:
                return None
            lines = list(io.StringIO(text, newline=""))
        reader = csv.reader((*lines, ""), delimiter=self._delim, strict=len(lines) > 1)
        try:
            row = next(reader, [])
        except csv.Error:
            return None
        return row if reader.line_num == len(lines) else None


def _without_blanks_after_quotes(text: str, delim: str) -> str | None:
    """``text`` (a row's lines) with the blanks between each closing quote and the next
    delimiter or line end taken out; None when other text follows a closing quote. Text
    inside quotes is left as it is."""
    blanks = " \t".replace(delim, "")
    out: list[str] = []
    i, n = 0, len(text)
    start = 0  # where the text not yet copied begins
    quoted = False
    field_start = True
    while i < n:
        c = text[i]
        if quoted:
            if c == '"':
                if text[i + 1 : i + 2] == '"':  # an escaped quote
                    i += 2
                    continue
                quoted = False
                i += 1
                out.append(text[start:i])
                j = i
                while j < n and text[j] in blanks:
                    j += 1
                if j < n and text[j] not in (delim, "\r", "\n"):
                    return None
                start = i = j
                continue
        elif c == '"' and field_start:
            quoted = True
        field_start = not quoted and c in (delim, "\r", "\n")
        i += 1
    out.append(text[start:])
    return "".join(out)


def _spanned(first: int, last: int, reason: str, whole: str, inside: str) -> Iterator[RawRow]:
    """A rejected row that runs from line ``first`` to ``last``: each of its lines is in
    the report (the rows a stray quote swallowed too), and none of them is dialed."""
    if last == first:
        yield RawRow(first, None, reason)
        return
    yield RawRow(first, None, f"{reason}; lines {first}-{last} are inside {whole}")
    for n in range(first + 1, last + 1):
        yield RawRow(n, None, inside)
