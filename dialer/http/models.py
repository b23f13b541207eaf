"""Request and response shapes of the public API (they make ``/openapi.json``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from dialer.intake.columns import canonical
from dialer.intake.dnc_lines import parse_expiry

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


def _not_bool(v: Any) -> Any:
    if isinstance(v, bool):  # lax int would take true/false as 1/0; JSON Schema does not
        raise ValueError("a boolean is not an integer")
    return v


# an id given as a number (an integral 5.0 is one, as in JSON Schema; true is not). The bounds
# come before the validator: after it, pydantic writes them into the schema as "ge"/"le",
# which JSON Schema ignores (the fuzz test then sends 10**34, schema-valid yet refused).
StrictInt64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), BeforeValidator(_not_bool)]
# any integer: a CRM's id past 64 bits stays exact (the body is read exactly: bodies.loads)
FieldValue = str | int | float | bool | None


NumberList = Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=9)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LeadIn(BaseModel):
    """A lead, keyed as a file's columns are (SPEC §4): case-insensitive, with the aliases
    (``phone``, ``agentsAssigned``, ``lead_id``, ``alt_number``, ``number6``…); every other
    key is a custom field, as the keys of ``fields`` are."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, FieldValue] = Field(init=False)

    number: str = Field(min_length=1, max_length=64, description="Phone number, national or E.164")
    priority: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1,
                                 description="Bigger dials first")
    agents: list[str] | str | None = Field(
        default=None, description="Agent usernames (list, or ';' '|' ',' separated)"
    )
    external_id: str | StrictInt64 | None = Field(default=None, description="Your id for the lead")
    fields: dict[str, FieldValue] | None = Field(default=None, description="Custom fields")
    timezone: str | None = Field(default=None, description="IANA zone overriding the number's")
    # more numbers of the same lead: dialed in turn, each checked on its own
    number2: str | None = Field(default=None, max_length=64, description="Another number of the lead")
    number3: str | None = Field(default=None, max_length=64, description="Another number of the lead")
    number4: str | None = Field(default=None, max_length=64, description="Another number of the lead")
    number5: str | None = Field(default=None, max_length=64, description="Another number of the lead")
    numbers: NumberList | Annotated[str, Field(max_length=640)] | None = Field(
        default=None, description="More numbers of the lead, after number..number5: a list, or "
        "one string separated by ';' '|' ','")
    expires_at: str | None = Field(
        default=None, max_length=40,
        description="ISO 8601 date or time after which the lead is not dialed (ends expired); "
        "without an offset in the lead's local time, a date meaning the end of that day")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        """Each key to the field it names, so the field's own checks apply to it."""
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        named: dict[str, str] = {}
        for key, value in data.items():
            if isinstance(key, str) and key.lower() == "fields":
                field: str | None = "fields"  # custom fields, however the key is spelled
            else:
                field = canonical(key) if isinstance(key, str) else None
            name = field if field in cls.model_fields else key
            if field is not None:
                if field in named:
                    raise ValueError(f"keys {named[field]!r} and {key!r} both mean {field}")
                named[field] = key
            out[name] = value
        return out


class BatchIn(_Strict):
    target: str | None = Field(default=None, description="Target name; default_target if absent")
    leads: list[LeadIn]
    result_webhook_url: str | None = Field(
        default=None, pattern=r"^https?://[^/]", max_length=2000,
        description="Receives one signed POST per ended call: http(s), to a public address "
        "(loopback, private, link-local and other non-public addresses are refused)",
    )


class Rejected(_Strict):
    index: int | None = None
    line: int | None = None
    reason: str
    field: str | None = Field(default=None, description="number2…: one number of an accepted lead left out")


class NotDialed(_Strict):
    index: int
    line: int | None = None
    outcome: str = Field(description="duplicate | dnc")
    reason: str


class BatchAccepted(_Strict):
    batch_id: str
    target: str
    accepted: int
    rejected: list[Rejected]
    duplicates: int
    dnc: int
    not_dialed: list[NotDialed] = Field(
        default_factory=list,
        description="The leads counted in duplicates and dnc, each with its index and why (a valid "
                    "number that will not be dialed)")


class ErrorDetail(_Strict):
    code: str
    message: str
    details: Any = None


class ErrorOut(_Strict):
    error: ErrorDetail


class BatchOut(_Strict):
    batch_id: str
    target: str
    source: str
    source_name: str | None
    state: str
    created_at: datetime
    ingested_at: datetime | None
    counts: dict[str, int]
    calls_by_state: dict[str, int]
    calls_by_outcome: dict[str, int]
    error: str | None = None


class CallSummary(_Strict):
    id: int
    number: str
    external_id: str | None
    state: str
    outcome: str | None
    attempt: int
    agent: str | None
    priority: int
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    number_reached: str | None = Field(default=None, description="The number that answered")
    numbers: list[str] | None = Field(default=None, description="Every usable number of the lead, in turn "
                                      "(several-number leads only)")
    attempts_per_number: dict[str, int] | None = Field(default=None, description="Attempts sent to each "
                                                       "number of the lead (several-number leads only)")


class CallsPage(_Strict):
    calls: list[CallSummary]
    next_cursor: str | None


class EventOut(_Strict):
    id: int
    at: datetime
    kind: str
    from_state: str | None
    to_state: str | None
    applied: bool
    payload: Any = None


class CallOut(CallSummary):
    batch_id: str
    target: str
    line: int
    fields: dict[str, Any] | None
    agents: list[str] | None
    timezone: str | None
    expires_at: datetime | None = Field(default=None, description="After this the lead is not dialed")
    events: list[EventOut]


class CallList(_Strict):
    calls: list[CallOut]


def _expiry_text(v: Any) -> Any:
    """An ISO 8601 date or time string, as ``dialer dnc import --expires-at`` takes (no
    offset: UTC). Not a number: pydantic would read ``0`` as 1970, a listing expired before
    it was made."""
    if v is None or isinstance(v, datetime):
        return v
    if not isinstance(v, str):
        raise ValueError("expected an ISO 8601 date or time string, like 2027-06-30 or 2027-06-30T18:00:00Z")
    try:
        return parse_expiry(v)
    except ValueError:
        raise ValueError(f"{v[:40]!r} is not an ISO 8601 date or time, like 2027-06-30 or "
                         "2027-06-30T18:00:00Z") from None


class DncIn(_Strict):
    numbers: list[str] = Field(max_length=100_000)
    region: str | None = Field(default=None, description="Region for national numbers")
    expires_at: Annotated[datetime | None, BeforeValidator(_expiry_text)] = Field(
        default=None, description="When the listing ends (ISO 8601 date or time; no offset: UTC). "
                                  "Must be in the future; omitted: never")


class DncInvalid(_Strict):
    index: int
    number: str
    reason: str


class DncOut(_Strict):
    added: int
    updated: int
    invalid: list[DncInvalid]


class Health(_Strict):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class TargetOut(_Strict):
    name: str
    kind: str
    paused: bool
    paused_reason: str | None
    breaker: dict[str, Any]
    ready_agents: int
    wrapup_agents: int
    agents_source: str
    calls_per_agent: int
    limit: int
    in_flight: int
    waiting: dict[str, int]
    calling_hours: str


class TargetList(_Strict):
    targets: list[TargetOut]


class CancelOut(_Strict):
    batch_id: str
    cancelled: int


# ISO 8601 date and time, with or without an offset (without: the lead's local time)
# The shape checked on input: anything else is "invalid"; a date or time out of range
# (month 13) gets the endpoint's own precise "invalid_time". The schema publishes the
# tighter ISO_TIME (month 01-12, day 01-31, hour 00-23; a day past its month's end,
# like 02-30, is still answered invalid_time).
ISO_SHAPE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?([Zz]|[+-]\d{2}:\d{2})?$"
ISO_TIME = (r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[T ]([01][0-9]|2[0-3]):[0-5][0-9]"
            r"(:[0-5][0-9](\.[0-9]{1,6})?)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?$")
# the header line of a text/csv batch: "," ";" or tab separated, one field (maybe quoted)
# naming the number column in any case (SPEC §4's aliases)
CSV_HEADER = (r"^\ufeff?([^\r\n]*[,;\t])?[ ]*\"?(?i:number|phone|phone_number|mobile)\"?[ ]*"
              r"([,;\t][^\r\n]*)?\r?\n")


class ScheduleIn(_Strict):
    at: str = Field(pattern=ISO_SHAPE, max_length=40, json_schema_extra={"pattern": ISO_TIME},
                    description="When to call back: ISO 8601; without an offset, in the lead's local time")
    agent: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[^\x00]+$",
                              description="The agent who owns the callback (default: the call's agent)")


class CallbackOut(_Strict):
    call_id: int = Field(description="The callback's attempt")
    lead_id: int
    from_call: int
    target: str
    owner: str | None
    number: str | None
    external_id: str | None
    state: str
    status: str = Field(description="upcoming | due | overdue | dialed | ended")
    asked_at: datetime
    due_at: datetime
    owner_grace_until: datetime
    source: str
    missed: int
    created_at: datetime


class CallbackList(_Strict):
    callbacks: list[CallbackOut]
