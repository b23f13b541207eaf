"""Lenient reading of provider callback bodies.

The vendor page does not document the callback body, so we accept JSON or form-encoded
bodies (``application/x-www-form-urlencoded``, or ``multipart/form-data``: the encoding
Ryng's own API takes its requests in) and read, case-insensitively in camelCase or
snake_case: ``event``, ``disposition``/``status``, ``agent``, ``callId``, ``attempts``,
``startTime``, ``endTime``, ``talkTime``/``duration``, ``recordingUrl``, ``number`` and
every ``customField*``.

Decoded strings are made storable: PostgreSQL refuses NUL in text and jsonb, and a lone
surrogate cannot be encoded at all, so both become U+FFFD before anything reaches SQL
(a ``%00`` in a form field would otherwise fail the callback on every path, forever).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from dialer.dispatch.chunker import parse_ref


class BadPayload(ValueError):
    pass


def _key(k: str) -> str:
    return k.replace("_", "").replace("-", "").lower()


@dataclass(slots=True)
class CallbackData:
    raw: dict[str, Any]
    event: str | None = None
    disposition: str | None = None
    agent: str | None = None
    call_id: str | None = None
    attempts: int | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    talk_time_s: float | None = None
    recording_url: str | None = None
    number: str | None = None
    refs: list[int] = field(default_factory=list)  # best first: see read()
    ref_slots: dict[int, int] = field(default_factory=dict)  # ref -> the customField slot it came in


def storable(s: str) -> str:
    """``s`` with NUL and lone surrogates replaced by U+FFFD (PostgreSQL accepts the rest)."""
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # surrogates: pairs are joined, lone ones replaced
        s = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return s


# The audit row keeps the body inside a few levels of its own, as jsonb written by orjson
# (at most 255 levels): a body nested deeper is unreadable, kept as bytes
MAX_DEPTH = 200


def _storable(v: Any, depth: int = 1) -> Any:
    if isinstance(v, str):
        return storable(v)
    if isinstance(v, dict | list) and depth > MAX_DEPTH:
        raise BadPayload(f"JSON body is nested more than {MAX_DEPTH} levels deep")
    if isinstance(v, dict):
        return {storable(str(k)): _storable(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list):
        return [_storable(x, depth + 1) for x in v]
    return v


def decode(body: bytes, content_type: str) -> dict[str, Any]:
    """The body as a dict whose every key and string is storable in PostgreSQL."""
    data: dict[str, Any] = _storable(_decode(body, content_type))
    return data


def _decode(body: bytes, content_type: str) -> dict[str, Any]:
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError as e:
            raise BadPayload(f"form body is not UTF-8: {e}") from None
    if not body.strip():
        return {}
    if ctype == "multipart/form-data":
        return _multipart(body, content_type)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        if ctype in ("", "text/plain") and b"=" in body:
            return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        raise BadPayload("body is neither JSON nor form-encoded") from None
    if isinstance(data, dict) and isinstance(data.get("data"), dict) and "event" not in data:
        data = data["data"]  # tolerate an envelope
    if not isinstance(data, dict):
        raise BadPayload("JSON body is not an object")
    return data


def _multipart(body: bytes, content_type: str) -> dict[str, Any]:
    """Each part's content by its name, the last of a repeated name winning (as in a form).
    A part with a file name is read like any other: a callback has no file to keep. The
    body is whole already (the endpoint's size limit), so it is parsed in one go."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise BadPayload("multipart body has no boundary")
    parts: list[tuple[bytes, bytearray]] = []  # (Content-Disposition, content)
    header: list[bytes] = [b"", b""]  # the header being read: name, value

    def header_end() -> None:
        if header[0].lower() == b"content-disposition":
            parts[-1] = (header[1], parts[-1][1])
        header[:] = [b"", b""]

    def add(i: int) -> Any:
        def on(data: bytes, start: int, end: int) -> None:
            header[i] += data[start:end]
        return on

    parser = MultipartParser(boundary, {
        "on_part_begin": lambda: parts.append((b"", bytearray())),
        "on_header_field": add(0),
        "on_header_value": add(1),
        "on_header_end": header_end,
        "on_part_data": lambda data, start, end: parts[-1][1].extend(data[start:end]),
    })
    try:
        parser.write(body)
    except FormParserError as e:
        raise BadPayload(f"multipart body could not be read: {e}") from None
    if parser.state != MultipartState.END:
        raise BadPayload("multipart body is cut short (no closing boundary)")
    out: dict[str, Any] = {}
    for disposition, content in parts:
        name = parse_options_header(disposition.decode("latin-1"))[1].get(b"name")
        if name is None:
            continue  # not a form field
        try:
            out[name.decode("utf-8")] = content.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadPayload(f"multipart field is not UTF-8: {e}") from None
    return out


def _text(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s[:500] or None


def _int(v: Any) -> int | None:
    try:
        return int(float(str(v)))
    except (TypeError, ValueError, OverflowError):  # OverflowError: "inf", "1e400"
        return None


def _float(v: Any) -> float | None:
    try:
        f = float(str(v))
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) < 1e9 else None


def _time(v: Any) -> datetime | None:
    if v is None or v == "":
        return None
    if isinstance(v, (int, float)) or (isinstance(v, str) and v.replace(".", "", 1).isdigit()):
        f = float(v)
        if f > 1e11:  # milliseconds
            f /= 1000
        try:
            return datetime.fromtimestamp(f, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    try:
        dt = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _slot(key: str) -> int | None:
    rest = key[len("customfield"):]
    return int(rest) if rest.isdigit() and len(rest) <= 3 else None


def read(data: dict[str, Any], ref_fields: Collection[int] = ()) -> CallbackData:
    """``ref_fields``: the configured targets' ``ref_field`` slots. A reference found in one
    of them comes first in ``refs``; other ``customField*`` values that look like a
    reference (a CRM may store one of ours in its own field) are only a fallback."""
    keyed = {_key(str(k)): v for k, v in data.items()}
    out = CallbackData(raw=data)
    # the value read as the keys are (customerAnswered, customer_answered, CUSTOMER-ANSWERED)
    out.event = _key(_text(keyed.get("event")) or "") or None
    out.disposition = _text(keyed.get("disposition") or keyed.get("status"))
    out.agent = _text(keyed.get("agent") or keyed.get("agentusername") or keyed.get("agentname"))
    out.call_id = _text(keyed.get("callid"))
    out.attempts = _int(keyed.get("attempts"))
    out.start_time = _time(keyed.get("starttime"))
    out.end_time = _time(keyed.get("endtime"))
    out.talk_time_s = _float(keyed.get("talktime", keyed.get("duration")))
    out.recording_url = _text(keyed.get("recordingurl"))
    out.number = _text(keyed.get("number") or keyed.get("customernumber") or keyed.get("phone"))
    found: list[tuple[int | None, int]] = []
    for k, v in keyed.items():
        if k.startswith("customfield"):
            ref = parse_ref(v)
            if ref is not None:
                found.append((_slot(k), ref))
    found.sort(key=lambda f: f[0] not in ref_fields)  # stable: body order within each group
    for slot, ref in found:
        if ref not in out.refs:
            out.refs.append(ref)
            if slot is not None:
                out.ref_slots[ref] = slot
    return out
