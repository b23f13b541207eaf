"""Parsing and validation of Ryng API request bodies for the sandbox.

Everything here is pure: a body (JSON value, or form fields plus a CSV sheet) goes
in, a :class:`Submission` comes out, or :class:`RequestError` with the HTTP status
and a message naming the field (and row) at fault. See ``sandbox.py`` for the rules.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

AGENT_MAPPINGS = ("global", "inline", "all-agents")
LEG_DIRECTIONS = ("agent-first", "customer-first")
CUSTOM_FIELD_RE = re.compile(r"^customField([1-9][0-9]*)$")
CUSTOM_FIELD_NAME_RE = re.compile(r"^customField([1-9][0-9]*)Name$")
NUMBER_RE = re.compile(r"^\+?[0-9]{4,16}$")

_COMMON_KEYS = ("agentMapping", "agents", "legDirection", "maxRetries", "retryInterval", "maxDispose",
                "customerData")
QUEUE_KEYS = frozenset(_COMMON_KEYS)
CAMPAIGN_KEYS = frozenset((*_COMMON_KEYS, "name", "customFieldNames"))
QUEUE_DATA_KEYS = frozenset(("campaignID", "connectCallbackUrl", "terminalCallbackUrl", "jsonData"))
CAMPAIGN_DATA_KEYS = frozenset(("connectCallbackUrl", "terminalCallbackUrl", "jsonData"))
FORM_KEYS = frozenset(("campaign-sheet", "agents", "agent", "campaign-name", "connectCallbackUrl",
                       "terminalCallbackUrl", "legDirection", "maxRetries", "retryInterval", "maxDispose",
                       "customFieldNames"))


class RequestError(Exception):
    """A request the sandbox refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class Row:
    """One call object (a ``jsonData`` element or a sheet line)."""

    number: str
    priority: float | int = 0
    agents_assigned: list[str] | None = None
    custom: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Submission:
    """A validated append or campaign, ready to become calls."""

    kind: Literal["queue", "campaign"]
    queue_id: str | None = None
    campaign_id: int | None = None
    name: str | None = None
    agent_mapping: str = "all-agents"
    agents: list[str] = field(default_factory=list)
    leg_direction: str = "agent-first"
    max_retries: int = 0
    retry_interval_min: float = 0.0
    max_dispose_s: float = 0.0
    connect_url: str | None = None
    terminal_url: str | None = None
    custom_field_names: dict[str, str] = field(default_factory=dict)
    source_campaign_id: int | None = None
    rows: list[Row] = field(default_factory=list)

    @property
    def target_key(self) -> str:
        return "queueId" if self.kind == "queue" else "campaignId"

    @property
    def target_id(self) -> str | int | None:
        return self.queue_id if self.kind == "queue" else self.campaign_id


@dataclass(slots=True)
class Defaults:
    """Queue-level settings used when a request leaves a parameter out."""

    leg_direction: str
    max_dispose_s: float
    max_retries: int
    retry_interval_min: float
    max_calls: int


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _url(v: Any, where: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise RequestError(f"{where} must be a string (got {_type_name(v)})")
    try:
        parts = urlsplit(v)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestError(f"{where} must be an absolute http or https URL (got {v!r})")
    return v


def _non_negative(v: Any, where: str, *, whole: bool = False) -> float:
    if not _is_number(v):
        raise RequestError(f"{where} must be a number (got {_type_name(v)})")
    if v < 0:
        raise RequestError(f"{where} must be >= 0 (got {v})")
    if whole and float(v) != int(v):
        raise RequestError(f"{where} must be a whole number (got {v})")
    return float(v)


def _choice(v: Any, where: str, allowed: Sequence[str]) -> str:
    if not isinstance(v, str) or v not in allowed:
        shown = repr(v) if isinstance(v, str) else _type_name(v)
        raise RequestError(f"{where} must be one of {', '.join(allowed)} (got {shown})")
    return v


def _agent_list(v: Any, where: str, known: Sequence[str]) -> list[str]:
    if not isinstance(v, list):
        raise RequestError(f"{where} must be an array of agent usernames (got {_type_name(v)})")
    out: list[str] = []
    for i, a in enumerate(v):
        if not isinstance(a, str) or not a.strip():
            raise RequestError(f"{where}[{i}] must be a non-empty string (got {_type_name(a)})")
        name = a.strip()
        if name not in known:
            raise RequestError(f"{where}[{i}]: unknown agent {name!r}")
        if name not in out:
            out.append(name)
    return out


def _custom_field_names(v: Any, where: str) -> dict[str, str]:
    if not isinstance(v, dict):
        raise RequestError(f"{where} must be an object (got {_type_name(v)})")
    out: dict[str, str] = {}
    for k, name in v.items():
        if not CUSTOM_FIELD_NAME_RE.match(k):
            raise RequestError(f"{where}.{k}: keys must have the form customField{{N}}Name")
        if not isinstance(name, str):
            raise RequestError(f"{where}.{k} must be a string (got {_type_name(name)})")
        out[k] = name
    return out


def _row(obj: Any, where: str, known: Sequence[str]) -> Row:
    if not isinstance(obj, dict):
        raise RequestError(f"{where} must be an object (got {_type_name(obj)})")
    number = obj.get("number")
    if number is None or (isinstance(number, str) and not number.strip()):
        raise RequestError(f"{where}.number is required")
    if not isinstance(number, str):
        raise RequestError(f"{where}.number must be a string (got {_type_name(number)})")
    if not NUMBER_RE.match(number.strip()):
        raise RequestError(f"{where}.number {number!r} is not a phone number")
    row = Row(number=number.strip())
    for key, value in obj.items():
        if key == "number":
            continue
        if key == "priority":
            if value is not None:
                if not _is_number(value):
                    raise RequestError(f"{where}.priority must be a number (got {_type_name(value)})")
                row.priority = value
        elif key == "agentsAssigned":
            if value is not None:
                row.agents_assigned = _agent_list(value, f"{where}.agentsAssigned", known)
        elif CUSTOM_FIELD_RE.match(key):
            if value is not None:
                if not isinstance(value, str):
                    raise RequestError(f"{where}.{key} must be a string (got {_type_name(value)})")
                row.custom[key] = value
        else:
            raise RequestError(f"{where}: unknown field {key!r} (allowed: number, priority, "
                               "agentsAssigned, customField{N})")
    return row


def _settings(body: Mapping[str, Any], sub: Submission, known: Sequence[str], d: Defaults) -> None:
    """The parameters shared by both endpoints (``null`` counts as absent)."""
    if body.get("agentMapping") is not None:
        sub.agent_mapping = _choice(body["agentMapping"], "agentMapping", AGENT_MAPPINGS)
    if body.get("agents") is not None:
        sub.agents = _agent_list(body["agents"], "agents", known)
    if sub.agent_mapping == "global" and not sub.agents:
        raise RequestError("agents is required (a non-empty array of usernames) when agentMapping is global")
    sub.leg_direction = d.leg_direction
    if body.get("legDirection") is not None:
        sub.leg_direction = _choice(body["legDirection"], "legDirection", LEG_DIRECTIONS)
    sub.max_retries = d.max_retries
    if body.get("maxRetries") is not None:
        sub.max_retries = int(_non_negative(body["maxRetries"], "maxRetries", whole=True))
    sub.retry_interval_min = d.retry_interval_min
    if body.get("retryInterval") is not None:
        sub.retry_interval_min = _non_negative(body["retryInterval"], "retryInterval")
    sub.max_dispose_s = d.max_dispose_s
    if body.get("maxDispose") is not None:
        sub.max_dispose_s = _non_negative(body["maxDispose"], "maxDispose")


def _check_inline(sub: Submission, copied: int) -> None:
    """Under inline mapping every row needs agentsAssigned (``copied`` rows came from a campaign)."""
    if sub.agent_mapping != "inline":
        return
    for i, row in enumerate(sub.rows):
        if row.agents_assigned:
            continue
        if i < copied:
            raise RequestError(f"customerData.campaignID {sub.source_campaign_id}: row {i} has no "
                               "agentsAssigned (required when agentMapping is inline)")
        raise RequestError(f"customerData.jsonData[{i - copied}].agentsAssigned is required "
                           "when agentMapping is inline")


def parse_json(body: Any, kind: Literal["queue", "campaign"], known: Sequence[str], d: Defaults,
               campaign_rows: Mapping[int, list[Row]] | None = None) -> Submission:
    """Validate a JSON append (``kind="queue"``) or campaign body."""
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object (got {_type_name(body)})")
    allowed = QUEUE_KEYS if kind == "queue" else CAMPAIGN_KEYS
    for key in body:
        if key not in allowed:
            raise RequestError(f"unknown parameter {key!r} (allowed: {', '.join(sorted(allowed))})")
    sub = Submission(kind=kind)
    _settings(body, sub, known, d)
    if kind == "campaign":
        if body.get("name") is not None:
            if not isinstance(body["name"], str):
                raise RequestError(f"name must be a string (got {_type_name(body['name'])})")
            sub.name = body["name"]
        if body.get("customFieldNames") is not None:
            sub.custom_field_names = _custom_field_names(body["customFieldNames"], "customFieldNames")
    data = body.get("customerData")
    if data is None:
        raise RequestError("customerData is required")
    if not isinstance(data, dict):
        raise RequestError(f"customerData must be an object (got {_type_name(data)})")
    data_keys = QUEUE_DATA_KEYS if kind == "queue" else CAMPAIGN_DATA_KEYS
    for key in data:
        if key not in data_keys:
            raise RequestError(f"customerData: unknown parameter {key!r} "
                               f"(allowed: {', '.join(sorted(data_keys))})")
    sub.connect_url = _url(data.get("connectCallbackUrl"), "customerData.connectCallbackUrl")
    sub.terminal_url = _url(data.get("terminalCallbackUrl"), "customerData.terminalCallbackUrl")
    if kind == "queue" and data.get("campaignID") is not None:
        cid = data["campaignID"]
        if not _is_number(cid) or float(cid) != int(cid):
            raise RequestError(f"customerData.campaignID must be a whole number (got {_type_name(cid)})")
        rows = (campaign_rows or {}).get(int(cid))
        if rows is None:
            raise RequestError(f"customerData.campaignID {int(cid)}: no such campaign")
        sub.source_campaign_id = int(cid)
        sub.rows.extend(Row(r.number, r.priority, list(r.agents_assigned) if r.agents_assigned else None,
                            dict(r.custom)) for r in rows)
    copied = len(sub.rows)
    json_data = data.get("jsonData")
    if json_data is None:
        if sub.source_campaign_id is None:
            need = "customerData.jsonData is required" + (
                " (or customerData.campaignID)" if kind == "queue" else "")
            raise RequestError(need)
    else:
        if not isinstance(json_data, list):
            raise RequestError(f"customerData.jsonData must be an array (got {_type_name(json_data)})")
        if not json_data and sub.source_campaign_id is None:
            raise RequestError("customerData.jsonData must contain at least one call")
        if len(json_data) > d.max_calls:
            raise RequestError(f"customerData.jsonData has {len(json_data)} calls; "
                               f"at most {d.max_calls} per request")
        sub.rows.extend(_row(obj, f"customerData.jsonData[{i}]", known) for i, obj in enumerate(json_data))
    _check_inline(sub, copied)
    return sub


def _form_agents(text: str, where: str, known: Sequence[str], ids: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for part in re.split(r"[,;|]", text):
        token = part.strip()
        if not token:
            continue
        name = token if token in known else ids.get(token)
        if name is None:
            raise RequestError(f"{where}: unknown agent {token!r}")
        if name not in out:
            out.append(name)
    return out


def parse_form(fields: Mapping[str, str], sheet: bytes | None, known: Sequence[str],
               ids: Mapping[str, str], d: Defaults) -> Submission:
    """Validate a form-data campaign: ``campaign-sheet`` CSV plus text fields.

    ``ids`` maps agent ids (as text, e.g. ``"10"``) to usernames: the campaign page's
    case study names agents by id in form-data.
    """
    for key in fields:
        if key not in FORM_KEYS:
            raise RequestError(f"unknown form field {key!r} (allowed: {', '.join(sorted(FORM_KEYS))})")
    if sheet is None:
        raise RequestError("campaign-sheet is required (a .csv file sent as multipart/form-data)")
    sub = Submission(kind="campaign")
    agents_text = fields.get("agents", fields.get("agent", "")).strip()
    if agents_text.lower() == "in-file":
        sub.agent_mapping = "inline"
    elif agents_text:
        where = "agents" if "agents" in fields else "agent"
        sub.agent_mapping = "global"
        sub.agents = _form_agents(agents_text, where, known, ids)
        if not sub.agents:
            raise RequestError(f"{where} names no agent")
    numbers: dict[str, Any] = {}
    for key in ("maxRetries", "retryInterval", "maxDispose"):
        if fields.get(key, "").strip():
            try:
                numbers[key] = float(fields[key])
            except ValueError:
                raise RequestError(f"{key} must be a number (got {fields[key]!r})") from None
    settings: dict[str, Any] = {"agentMapping": sub.agent_mapping, **numbers}
    if fields.get("legDirection", "").strip():
        settings["legDirection"] = fields["legDirection"].strip()
    _settings(settings, sub, known, d)
    name = fields.get("campaign-name", "").strip()
    sub.name = name or None
    sub.connect_url = _url(fields.get("connectCallbackUrl") or None, "connectCallbackUrl")
    sub.terminal_url = _url(fields.get("terminalCallbackUrl") or None, "terminalCallbackUrl")
    if fields.get("customFieldNames", "").strip():
        try:
            names = orjson.loads(fields["customFieldNames"])
        except orjson.JSONDecodeError:
            raise RequestError("customFieldNames must be a JSON object") from None
        sub.custom_field_names = _custom_field_names(names, "customFieldNames")
    sub.rows = _sheet_rows(sheet, sub, known, ids, d.max_calls)
    return sub


def _sheet_rows(sheet: bytes, sub: Submission, known: Sequence[str], ids: Mapping[str, str],
                max_calls: int) -> list[Row]:
    try:
        text = sheet.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RequestError("campaign-sheet must be UTF-8 encoded CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise RequestError(f"campaign-sheet line 1: {e}") from None
    if header is None or not any(h.strip() for h in header):
        raise RequestError("campaign-sheet has no header row")
    header = [h.strip() for h in header]
    slots: list[str] = []  # per column: "number", "priority", "agentsAssigned", "customFieldN"
    seen: set[str] = set()
    explicit = {int(m.group(1)) for h in header if (m := re.match(r"^customfield([1-9][0-9]*)$", h.lower()))}
    next_free = 1
    for col, h in enumerate(header, start=1):
        if not h:
            raise RequestError(f"campaign-sheet: column {col} has an empty header")
        if h.lower() in seen:
            raise RequestError(f"campaign-sheet: column {col} repeats the header {h!r}")
        seen.add(h.lower())
        low = h.lower()
        m = re.match(r"^customfield([1-9][0-9]*)$", low)
        if low == "number":
            slots.append("number")
        elif low == "priority":
            slots.append("priority")
        elif low == "agentsassigned":
            slots.append("agentsAssigned")
        elif m:
            slots.append(f"customField{m.group(1)}")
        else:
            while next_free in explicit:
                next_free += 1
            free = f"customField{next_free}"
            explicit.add(next_free)
            sub.custom_field_names.setdefault(f"{free}Name", h)
            slots.append(free)
    if "number" not in slots:
        raise RequestError(f"campaign-sheet: the header has no 'number' column (got {', '.join(header)})")
    if sub.agent_mapping == "inline" and "agentsAssigned" not in slots:
        raise RequestError("campaign-sheet: agents is 'in-file' but the sheet has no agentsAssigned column")
    rows: list[Row] = []
    index = 0
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as e:
            raise RequestError(f"campaign-sheet line {reader.line_num}: {e}") from None
        if cells is None:
            break
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(slots):
            raise RequestError(f"campaign-sheet row {index} (line {line}): expected {len(slots)} columns, "
                               f"got {len(cells)}")
        where = f"campaign-sheet row {index} (line {line})"
        row = Row(number="")
        for slot, cell in zip(slots, cells, strict=True):
            if slot == "number":
                row.number = cell.strip()
            elif slot == "priority":
                if cell.strip():
                    try:
                        p = float(cell)
                    except ValueError:
                        raise RequestError(f"{where}: priority must be a number (got {cell!r})") from None
                    if not math.isfinite(p):
                        raise RequestError(f"{where}: priority must be a number (got {cell!r})")
                    row.priority = int(p) if p.is_integer() else p
            elif slot == "agentsAssigned":
                if sub.agent_mapping == "inline":
                    row.agents_assigned = _form_agents(cell, f"{where}: agentsAssigned", known, ids)
                    if not row.agents_assigned:
                        raise RequestError(f"{where}: agentsAssigned is required when agents is 'in-file'")
            else:
                row.custom[slot] = cell
        if not row.number:
            raise RequestError(f"{where}: number is required")
        if not NUMBER_RE.match(row.number):
            raise RequestError(f"{where}: number {row.number!r} is not a phone number")
        rows.append(row)
        index += 1
        if index > max_calls:
            raise RequestError(f"campaign-sheet has more than {max_calls} rows; "
                               f"at most {max_calls} per request")
    if not rows:
        raise RequestError("campaign-sheet has no data rows")
    return rows
