"""Build the provider request for one chunk of calls.

Custom fields go to ``customField1..N`` through a per-target slot map kept in the
database (so a field keeps its slot across restarts and chunks); our call reference
always travels in ``customField<ref_field>``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dialer.config import Target

MAX_SLOTS = 50
REF_PREFIX = "dl"
_REF = re.compile(r"^dl(\d{1,18})$")


def call_ref(call_id: int) -> str:
    return f"{REF_PREFIX}{call_id}"


def parse_ref(value: object) -> int | None:
    if isinstance(value, str):
        m = _REF.match(value.strip())
        if m:
            return int(m.group(1))
    return None


@dataclass(slots=True)
class Row:
    call_id: int
    number: str
    priority: int
    agents: list[str] | None
    fields: dict[str, str] | None


@dataclass(slots=True)
class Built:
    kind: str  # queue | campaign | campaign_sheet
    body: dict[str, Any]  # JSON body, or the form fields for a sheet upload
    sheet: bytes | None = None


def assign_slots(existing: dict[str, int], names: Sequence[str], ref_field: int) -> dict[str, int]:
    """New slots for names not yet mapped (lowest free slot first, never ``ref_field``)."""
    used = set(existing.values()) | {ref_field}
    new: dict[str, int] = {}
    slot = 1
    for name in names:
        if name in existing or name in new:
            continue
        while slot in used and slot <= MAX_SLOTS:
            slot += 1
        if slot > MAX_SLOTS:
            break
        new[name] = slot
        used.add(slot)
    return new


def _row_json(row: Row, slots: dict[str, int], t: Target) -> dict[str, Any]:
    out: dict[str, Any] = {"number": row.number, "priority": row.priority}
    if t.agent_mapping == "inline":
        # Ryng reads each row's agents under inline mapping (a row without is refused): a
        # lead that names none goes to any of the target's agents
        agents = row.agents or list(t.agents)
        if agents:
            out["agentsAssigned"] = agents
    for name, value in (row.fields or {}).items():
        slot = slots.get(name)
        if slot is not None:
            out[f"customField{slot}"] = value
    out[f"customField{t.ref_field}"] = call_ref(row.call_id)
    return out


def _agents(t: Target, named: str | None) -> list[str] | None:
    if named:
        return [named]
    if t.agent_mapping == "global":
        return list(t.agents)
    return None


def build(
    name: str,
    t: Target,
    rows: Sequence[Row],
    slots: dict[str, int],
    connect_url: str,
    terminal_url: str,
    chunk_id: int,
    named_agent: str | None = None,
    agent_order: list[str] | None = None,
) -> Built:
    json_rows = [_row_json(r, slots, t) for r in rows]
    customer: dict[str, Any] = {
        "connectCallbackUrl": connect_url,
        "terminalCallbackUrl": terminal_url,
        "jsonData": json_rows,
    }
    mapping = "global" if (named_agent or agent_order) else t.agent_mapping
    agents = [named_agent] if named_agent else (agent_order or _agents(t, None))
    if t.kind == "queue":
        body: dict[str, Any] = {"agentMapping": mapping}
        if agents:
            body["agents"] = agents
        if t.leg_direction:
            body["legDirection"] = t.leg_direction
        if t.max_retries is not None:
            body["maxRetries"] = t.max_retries
        if t.retry_interval_min is not None:
            body["retryInterval"] = t.retry_interval_min
        if t.max_dispose_s is not None:
            body["maxDispose"] = t.max_dispose_s
        if t.campaign_id:
            customer["campaignID"] = int(t.campaign_id) if t.campaign_id.isdigit() else t.campaign_id
        body["customerData"] = customer
        return Built("queue", body)

    names = {f"customField{slot}Name": field for field, slot in sorted(slots.items(), key=lambda x: x[1])}
    names[f"customField{t.ref_field}Name"] = "dialer_ref"
    campaign_name = f"{t.campaign_name or name}-{chunk_id}"
    if t.upload == "sheet":
        buf = io.StringIO()
        slot_cols = sorted({k for r in json_rows for k in r if k.startswith("customField")},
                           key=lambda k: int(k[len("customField"):]))
        inline = ["agentsAssigned"] if t.agent_mapping == "inline" else []
        cols = ["number", "priority", *inline, *slot_cols]
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in json_rows:
            # agentsAssigned: "Comma separated list" (the campaign page); csv quotes the cell
            w.writerow([",".join(r[c]) if c == "agentsAssigned" and c in r else r.get(c, "") for c in cols])
        form = {
            "campaign-name": campaign_name,
            "agents": ",".join(agents) if agents else ("in-file" if t.agent_mapping == "inline" else ""),
            "connectCallbackUrl": connect_url,
            "terminalCallbackUrl": terminal_url,
        }
        return Built("campaign_sheet", {k: v for k, v in form.items() if v}, buf.getvalue().encode())
    body = {"name": campaign_name, "agentMapping": mapping, "customFieldNames": names,
            "customerData": customer}
    if agents:
        body["agents"] = agents
    return Built("campaign", body)


def without(request: dict[str, Any], ref_field: int, drop: set[int]) -> tuple[dict[str, Any], int]:
    """The recorded request minus the rows whose call reference is in ``drop``; returns
    (request, rows left). Used by the re-check just before a send."""
    key = f"customField{ref_field}"
    out = dict(request)
    if "sheet" in request:
        rows = list(csv.reader(io.StringIO(str(request["sheet"]))))
        if not rows:
            return out, 0
        header, data = rows[0], rows[1:]
        col = header.index(key) if key in header else -1
        kept = [r for r in data if col < 0 or parse_ref(r[col]) not in drop]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(kept)
        out["sheet"] = buf.getvalue()
        return out, len(kept)
    body = dict(request["body"])
    customer = dict(body["customerData"])
    kept_json = [r for r in customer.get("jsonData", []) if parse_ref(r.get(key)) not in drop]
    customer["jsonData"] = kept_json
    body["customerData"] = customer
    out["body"] = body
    return out, len(kept_json)
