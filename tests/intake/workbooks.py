"""Hand-built .xlsx files: a minimal workbook whose sheet uses a shared-strings table that
can be padded to any unpacked size, and a way to make a zip lie about a part's size."""

from __future__ import annotations

import io
import struct
import zipfile

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG = "http://schemas.openxmlformats.org/package/2006"
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"

_PARTS = {
    "[Content_Types].xml": (
        f'<Types xmlns="{_PKG}/content-types">'
        f'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_CT}.worksheet+xml"/>'
        f'<Override PartName="/xl/sharedStrings.xml" ContentType="{_CT}.sharedStrings+xml"/>'
        "</Types>"
    ),
    "_rels/.rels": (
        f'<Relationships xmlns="{_PKG}/relationships">'
        f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/>'
        "</Relationships>"
    ),
    "xl/workbook.xml": (
        f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}">'
        '<sheets><sheet name="Leads" sheetId="1" r:id="rId1"/></sheets></workbook>'
    ),
    "xl/_rels/workbook.xml.rels": (
        f'<Relationships xmlns="{_PKG}/relationships">'
        f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{_REL}/sharedStrings" Target="sharedStrings.xml"/>'
        "</Relationships>"
    ),
    "xl/worksheets/sheet1.xml": (
        f'<worksheet xmlns="{_MAIN}"><sheetData>'
        '<row r="1"><c r="A1" t="s"><v>0</v></c></row>'
        '<row r="2"><c r="A2" t="s"><v>1</v></c></row>'
        "</sheetData></worksheet>"
    ),
}

PADDING = b"<si><t>x</t></si>"  # one unused shared string


def workbook(padding_bytes: int = 0) -> bytes:
    """A one-column workbook (``number``, ``+14155550100``) whose xl/sharedStrings.xml
    carries about ``padding_bytes`` of unused strings, streamed into the zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in _PARTS.items():
            zf.writestr(name, text)
        with zf.open("xl/sharedStrings.xml", "w") as f:
            f.write(f'<sst xmlns="{_MAIN}"><si><t>number</t></si><si><t>+14155550100</t></si>'.encode())
            units = padding_bytes // len(PADDING)
            while units > 0:
                f.write(PADDING * min(units, 4096))
                units -= 4096
            f.write(b"</sst>")
    return buf.getvalue()


def declare_size(data: bytes, name: str, size: int) -> bytes:
    """The same archive, with ``name``'s uncompressed size declared as ``size`` in both its
    local header and the central directory (the bytes themselves are unchanged)."""
    out = bytearray(data)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    struct.pack_into("<I", out, info.header_offset + 22, size)
    encoded = name.encode()
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        if out[at + 46: at + 46 + len(encoded)] == encoded:
            struct.pack_into("<I", out, at + 24, size)
            return bytes(out)
        at = out.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name} is not in the central directory")
