"""Settings: one typed object from a TOML file plus ``DIALER_*`` environment variables.

Environment variables win over the file. Unknown keys and bad values stop start-up
with a message naming the key (``ConfigError``). Secrets come only from the
environment or files and are redacted whenever the config is shown.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import secrets
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from dialer.errors import ConfigError
from dialer.intake.inbox_names import RESERVED, ignored

_HOURS = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-(([01]\d|2[0-3]):[0-5]\d|24:00)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_dates(v: list[str]) -> list[str]:
    from datetime import date

    for d in v:
        try:
            date.fromisoformat(d)
        except ValueError:
            raise ValueError(f"{d!r} is not a date like 2026-12-25") from None
    return v


def _check_http_url(v: str | None) -> str | None:
    """An http(s) URL with a host: a bare host name or a typo would only fail at the first
    request (every chunk uncertain, every callback URL broken), long after start-up."""
    if v is None:
        return v
    from urllib.parse import urlsplit

    try:
        u = urlsplit(v.strip())
        port_ok = u.port is None or u.port > 0
    except ValueError:
        port_ok = False
        u = urlsplit("")
    if u.scheme not in ("http", "https") or not u.hostname or not port_ok:
        raise ValueError(f"{v!r} is not an http(s) URL with a host, like https://host.example")
    return v.strip()


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


def _check_ics(v: str | None) -> str | None:
    """Parsed here, by the parser the dispatcher uses: a broken calendar would otherwise
    pass check-config and stop ``dialer run`` with a traceback."""
    if v is None:
        return v
    if not Path(v).is_file():
        raise ValueError(f"{v!r} is not a readable file")
    from dialer.dispatch.compliance import load_ics

    try:
        load_ics(v)
    except Exception as e:  # icalendar raises ValueError and its subclasses; OSError too
        raise ValueError(f"{v!r} is not a readable iCalendar (.ics) file: {str(e)[:200]}") from None
    return v


def _check_dsn(v: SecretStr | None) -> SecretStr | None:
    """A DSN asyncpg can use, checked without ever echoing it (it holds the password)."""
    if v is None:
        return v
    from urllib.parse import urlsplit

    dsn = v.get_secret_value()
    scheme, sep, _ = dsn.partition("://")
    if not sep or scheme.lower() not in ("postgres", "postgresql"):
        raise ValueError("must be a postgresql:// or postgres:// URL, like "
                         "postgresql://user:password@host:5432/dialer")
    try:
        netloc = urlsplit(dsn).netloc
    except ValueError:
        raise ValueError("is not a valid URL (the value is not shown: it may hold a password)") from None
    for host in netloc.rpartition("@")[2].split(","):  # asyncpg takes host1:port1,host2:port2
        port = host.rpartition("]")[2] if host.startswith("[") else host
        port = port.rpartition(":")[2] if ":" in port else ""
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("has a port that is not a number from 1 to 65535")
    return v


class RecycleRule(_Strict):
    after_min: float = Field(gt=0)
    max: int = Field(ge=0)


class CallbackMissedRule(_Strict):
    """A scheduled callback that missed (the customer not reached): tried again after
    ``retry_after_min``, up to ``max`` times, then the lead ends."""

    retry_after_min: float = Field(gt=0)
    max: int = Field(ge=0)


class Target(_Strict):
    kind: Literal["queue", "campaign"] = "queue"
    queue_id: str | None = None
    campaign_id: str | None = None
    campaign_name: str | None = None
    upload: Literal["json", "sheet"] = "json"
    agent_mapping: Literal["global", "inline", "all-agents"] = "all-agents"
    agents: list[str] = Field(default_factory=list)
    leg_direction: Literal["agent-first", "customer-first"] | None = None
    max_retries: int | None = Field(default=None, ge=0)
    retry_interval_min: int | None = Field(default=None, ge=0)
    max_dispose_s: int | None = Field(default=None, ge=0)
    chunk_size: int = Field(default=500, ge=1, le=10_000)
    calls_per_agent: int = Field(default=2, ge=1)
    calling_hours: str = "09:00-20:00"
    ref_field: int = Field(default=10, ge=1, le=100)
    dedupe_window_h: float = Field(default=24, ge=0)
    default_region: str = "US"
    recycle: dict[Literal["no_answer", "busy", "unreachable", "abandoned"], RecycleRule] = Field(
        default_factory=dict
    )
    holidays: list[str] = Field(default_factory=list)  # on top of [compliance] holidays
    holidays_ics: str | None = None
    # agent-scheduled callbacks: the owner alone this long after the due time, then anyone
    callback_owner_grace_min: float = Field(default=15, ge=0)
    callback_missed: CallbackMissedRule | None = None
    # who is ready (see [portsip]/[ringme]); silent longer than this -> the static `agents` list
    # auto: the best source configured for the target (ringme, then PortSIP, then agents)
    agents_source: Literal["auto", "static", "portsip", "ringme"] = "auto"
    agents_silence_s: float | None = Field(default=None, gt=0)
    # abandon-rate guard, customer-first targets only (dispatch/abandon.py)
    abandon_slowdown_pct: float = Field(default=2.5, ge=0, le=100)
    abandon_max_pct: float = Field(default=3.0, gt=0, le=100)
    abandon_redial_min: float = Field(default=4320, ge=0)
    # lead expiry and campaign windows (dispatch/windows.py): naive dates and times are in
    # window_timezone; a lead ends expired lead_ttl_h after its batch came in
    lead_ttl_h: float | None = Field(default=None, gt=0)
    active_from: str | None = None
    active_until: str | None = None
    blocked: list[str] = Field(default_factory=list)
    window_timezone: str = "UTC"

    @field_validator("active_from", "active_until", mode="before")
    @classmethod
    def _instant(cls, v: Any) -> Any:
        from datetime import date, datetime

        from dialer.dispatch import windows

        if isinstance(v, (date, datetime)):  # a bare TOML date or datetime
            v = v.isoformat()
        if isinstance(v, str):
            try:
                windows.instant(v, "UTC")
            except ValueError:
                raise ValueError(f"{v!r} is not an ISO 8601 date or time like 2026-12-01 or "
                                 "2026-12-01T09:00") from None
        return v

    @field_validator("blocked", mode="before")
    @classmethod
    def _periods(cls, v: Any) -> Any:
        from datetime import date, datetime

        from dialer.dispatch import windows

        if not isinstance(v, list):
            return v
        out = []
        for i, p in enumerate(v):
            if isinstance(p, (date, datetime)):
                p = p.isoformat()
            if isinstance(p, str):
                try:
                    windows.period(p, "UTC")
                except ValueError as e:
                    raise ValueError(f"[{i}] {p!r}: {e}; expected a date (2026-12-24) or an ISO 8601 "
                                     "interval (2026-12-24/2026-12-26, 2026-12-24T12:00/PT6H)") from None
            out.append(p)
        return out

    @field_validator("window_timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone") from None
        return v

    @field_validator("calling_hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        if not _HOURS.match(v):
            raise ValueError("must look like 09:00-20:00")
        if v[:5] == v[6:]:
            raise ValueError(f"{v!r} is an empty window: no call would ever go out")
        return v

    _dates = field_validator("holidays")(_check_dates)
    _ics = field_validator("holidays_ics")(_check_ics)

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        import phonenumbers

        if v.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {v!r}")
        return v.upper()

    @model_validator(mode="after")
    def _kind_fields(self) -> Target:
        if self.kind == "queue" and not self.queue_id:
            raise ValueError("queue_id is required when kind = 'queue'")
        if self.agent_mapping == "global" and not self.agents:
            raise ValueError("agents must list usernames when agent_mapping = 'global'")
        if self.abandon_slowdown_pct > self.abandon_max_pct:
            raise ValueError("abandon_slowdown_pct must not exceed abandon_max_pct")
        if self.active_from and self.active_until:
            from dialer.dispatch import windows

            z = self.window_timezone
            if windows.instant(self.active_until, z, end_of_day=True) <= windows.instant(self.active_from, z):
                raise ValueError("active_until must be after active_from")
        return self


class CapRule(_Strict):
    count: int = Field(ge=1)
    window_h: float = Field(gt=0)


class Compliance(_Strict):
    max_attempts_per_number: list[CapRule] = Field(default_factory=list)
    holidays: list[str] = Field(default_factory=list)
    holidays_ics: str | None = None
    dnc_dispositions: list[str] = Field(default_factory=lambda: ["DNC", "DO_NOT_CALL"])
    calling_hours_by_region: dict[str, str] = Field(default_factory=dict)

    _dates = field_validator("holidays")(_check_dates)
    _ics = field_validator("holidays_ics")(_check_ics)

    @field_validator("calling_hours_by_region")
    @classmethod
    def _regions(cls, v: dict[str, str]) -> dict[str, str]:
        for region, hours in v.items():
            if not re.match(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$", region):
                raise ValueError(f"{region!r} is not an ISO 3166 country or subdivision like US-TX")
            if not _HOURS.match(hours):
                raise ValueError(f"{region}: {hours!r} must look like 09:00-20:00")
            if hours[:5] == hours[6:]:
                raise ValueError(f"{region}: {hours!r} is an empty window: no call would ever go out")
        return v


def _default_targets() -> dict[str, Target]:
    # The zero-config target: calls flow at any hour so `make run` shows them end to end.
    return {
        "sales": Target(
            kind="queue",
            queue_id="42",
            agent_mapping="global",
            agents=["alice", "bob", "carol"],
            calling_hours="00:00-24:00",
            max_dispose_s=5,
        )
    }


class SandboxSettings(_Strict):
    """The built-in Ryng simulator used when no ``ryng_base_url`` is set."""

    time_scale: float = Field(default=0.05, gt=0, le=10)
    agents: list[str] | None = None  # default: every agent named by a target
    answer_rate: float = Field(default=0.6, ge=0)
    no_answer_rate: float = Field(default=0.2, ge=0)
    busy_rate: float = Field(default=0.1, ge=0)
    unreachable_rate: float = Field(default=0.1, ge=0)
    # share of answered calls that end CALLBACK with a callbackAt this far ahead (vendor
    # seconds, times time_scale)
    callback_rate: float = Field(default=0.0, ge=0, le=1)
    callback_after_s: float = Field(default=60.0, gt=0)
    abandon_rate: float = Field(default=0.0, ge=0, le=1)  # of answered customer-first calls


class RyngLimits(_Strict):
    """``[providers.ryng]``: the call-rate budget shared by every instance (dispatch/budget.py)."""

    max_calls_per_s: float | None = Field(default=None, gt=0)
    max_requests_per_s: float | None = Field(default=None, gt=0)
    rate_recover_s: float = Field(default=60.0, gt=0)  # AIMD: from nothing back to the full rate


class Providers(_Strict):
    ryng: RyngLimits = Field(default_factory=RyngLimits)


# ==== providers: agent readiness and routing (PortSIP, ringme, Stringee) ====================
# Secrets are top-level Settings fields read only from the environment:
# DIALER_PORTSIP_TOKEN, DIALER_RINGME_TOKEN, DIALER_STRINGEE_KEY_SECRET.


def _secret_not_here(data: Any, key: str, env: str) -> Any:
    if isinstance(data, dict) and key in data:
        raise ValueError(f"{key}: secrets are read from the environment ({env}), not from the config file")
    return data


class PortSipQueue(_Strict):
    """The PortSIP call queue whose READY agents are a target's ready agents."""

    queue: str = Field(min_length=1)  # call queue id, name or extension number
    agents: dict[str, str] = Field(default_factory=dict)  # extension number -> agent username


class PortSipSettings(_Strict):
    base_url: HttpUrl | None = None  # e.g. https://pbx.example.com:8887 (the API is under /api)
    poll_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    queues: dict[str, PortSipQueue] = Field(default_factory=dict)  # target -> call queue

    @model_validator(mode="before")
    @classmethod
    def _no_token(cls, data: Any) -> Any:
        return _secret_not_here(data, "token", "DIALER_PORTSIP_TOKEN")


class RingmeSettings(_Strict):
    base_url: HttpUrl | None = None  # API root for the optional counters poll, e.g. https://host/api/ver1.0
    poll_s: float = Field(default=30.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    agents: dict[str, str] = Field(default_factory=dict)  # agent_id/extension_name/agent_number -> username
    queues: dict[str, str] = Field(default_factory=dict)  # target -> queue extension id (counters poll)

    @model_validator(mode="before")
    @classmethod
    def _no_token(cls, data: Any) -> Any:
        return _secret_not_here(data, "token", "DIALER_RINGME_TOKEN")


class StringeeAgent(_Strict):
    user_id: str | None = None  # stringee_user_id (default: the agent's username)
    phone_number: str | None = None
    routing_type: Literal[1, 2] | None = None  # default: [stringee] routing_type
    answer_timeout: int | None = Field(default=None, ge=3)


class StringeeQueue(_Strict):
    """Queue settings sent by `dialer stringee sync-queue` (unset: Stringee's default)."""

    name: str = Field(default="dialer", min_length=1)
    record_calls: bool | None = None
    agent_wrap_up_after_calls: bool | None = None
    wrap_up_time_limit: int | None = Field(default=None, ge=0)
    schedule: Literal[1, 2] | None = None
    wait_agent_answer_timeout: int | None = Field(default=None, ge=3)
    wait_greeting: str | None = None
    hold_greeting: str | None = None
    maximum_queue_size: int | None = Field(default=None, ge=0)
    maximum_queue_wait_time: int | None = Field(default=None, ge=0)
    from_number_callout_to_agent: str | None = None
    cond_routing: Literal[1, 2] | None = None


class StringeeSettings(_Strict):
    api_base: HttpUrl = "https://icc-api.stringee.com"
    key_sid: str | None = None
    queue_id: str | None = None  # unset: found by queue.name, else created
    routing_type: Literal[1, 2] = 1
    answer_timeout: int = Field(default=15, ge=3)
    targets: list[str] = Field(default_factory=list)  # whose leads the queue routes (empty: all)
    agents: dict[str, StringeeAgent] = Field(default_factory=dict)  # username -> Stringee identity
    queue: StringeeQueue = Field(default_factory=StringeeQueue)
    timeout_s: float = Field(default=15.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_secret(cls, data: Any) -> Any:
        return _secret_not_here(data, "key_secret", "DIALER_STRINGEE_KEY_SECRET")


def _check_providers(s: Settings) -> None:
    for name, t in s.targets.items():
        if t.agents_source == "portsip":
            if not s.portsip.base_url:
                raise ValueError(f"targets.{name}.agents_source = 'portsip' needs portsip.base_url")
            if name not in s.portsip.queues:
                raise ValueError(f"targets.{name}.agents_source = 'portsip' needs [portsip.queues.{name}]")
    for section, names in (("portsip.queues", s.portsip.queues), ("ringme.queues", s.ringme.queues),
                           ("stringee.targets", s.stringee.targets)):
        for name in names:
            if name not in s.targets:
                raise ValueError(f"{section}: {name!r} is not one of the targets")
    for user, a in s.stringee.agents.items():
        if (a.routing_type or s.stringee.routing_type) == 2 and not a.phone_number:
            raise ValueError(f"stringee.agents.{user}: routing_type 2 (phone) needs a phone_number")


# ==== end of providers block ==================================================================


class Settings(_Strict):
    database_url: SecretStr | None = None
    state_dir: Path = Path("./var")
    inbox_dir: Path | None = None
    http_listen: str = "127.0.0.1:8080"
    public_url: HttpUrl | None = None
    ryng_base_url: HttpUrl | None = None
    ryng_token: SecretStr | None = None
    api_tokens: list[SecretStr] = Field(default_factory=list)
    callback_secret: SecretStr | None = None
    log_format: Literal["json", "console"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    default_target: str = "sales"
    targets: dict[str, Target] = Field(default_factory=_default_targets)
    compliance: Compliance = Field(default_factory=Compliance)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    dispositions: dict[str, str] = Field(default_factory=dict)
    portsip: PortSipSettings = Field(default_factory=PortSipSettings)
    ringme: RingmeSettings = Field(default_factory=RingmeSettings)
    stringee: StringeeSettings = Field(default_factory=StringeeSettings)
    providers: Providers = Field(default_factory=Providers)
    portsip_token: SecretStr | None = None
    ringme_token: SecretStr | None = None
    stringee_key_secret: SecretStr | None = None

    settle_s: float = Field(default=2.0, ge=0)
    inbox_poll_s: float = Field(default=0.5, gt=0)
    max_body_mb: float = Field(default=50, gt=0)
    max_batch_leads: int = Field(default=100_000, ge=1)
    max_line_kb: int = Field(default=1024, ge=1)
    ingest_commit_rows: int = Field(default=20_000, ge=1)
    # parallel COPY connections of a file's ingest; less than db_pool_size, checked below.
    # 1 by default: on two cores a second stream costs more CPU than it saves (bench/README.md)
    ingest_copy_streams: int = Field(default=1, ge=1, le=16)
    stale_after_h: float = Field(default=6, gt=0)
    uncertain_after_min: float = Field(default=30, gt=0)
    db_pool_size: int = Field(default=10, ge=2)
    dispatch_interval_s: float = Field(default=1.0, gt=0)
    instance_stale_s: float = Field(default=20.0, gt=0)
    # SIGTERM → exit within 30 s (SPEC §8; systemd's TimeoutStopSec): the drain's steps get
    # this long, cancelling what is left (a file mid-ingest included) takes the rest
    drain_s: float = Field(default=25.0, gt=0, le=25)
    ryng_timeout_s: float = Field(default=30.0, gt=0)
    # a request's head must arrive within this of the connection opening or of the last
    # answer; connections past the limit are closed as they come (http/connections.py;
    # None: half the descriptors the process may open). Read at start-up.
    http_head_timeout_s: float = Field(default=15.0, gt=0, le=300)
    http_max_connections: int | None = Field(default=None, ge=16)
    # result webhooks to loopback/private/link-local addresses; unset: only in sandbox mode
    webhook_allow_private: bool | None = None

    # found while loading, for the CLI to show: logging is not set up yet at that point
    _warnings: tuple[str, ...] = PrivateAttr(default=())

    _dsn = field_validator("database_url")(_check_dsn)

    @field_validator("dispositions")
    @classmethod
    def _dispositions(cls, v: dict[str, str]) -> dict[str, str]:
        from dialer.lifecycle.dispositions import Dispositions

        Dispositions(v)
        return v

    @field_validator("http_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8080")
        return v

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    @model_validator(mode="after")
    def _default_target_exists(self) -> Settings:
        if self.default_target not in self.targets:
            raise ValueError(
                f"default_target {self.default_target!r} is not one of the targets "
                f"({', '.join(sorted(self.targets)) or 'none'})"
            )
        return self

    @model_validator(mode="after")
    def _target_names_fit_the_inbox(self) -> Settings:
        # each target has its folder INBOX/<name>/: one the inbox never scans would take
        # no file ever, and nothing would say why
        for name in self.targets:
            if not name or "/" in name or "\\" in name or "\0" in name:
                raise ValueError(f"targets.{name}: a target's name is its inbox folder's name and "
                                 "part of its API paths (/v1/targets/<name>): no '/', '\\' or NUL")
            if name in RESERVED:
                raise ValueError(f"targets.{name}: the inbox keeps its own {name}/ folder, so no "
                                 "file could be dropped for this target; choose another name")
            if ignored(name):
                raise ValueError(f"targets.{name}: the inbox ignores a folder of that name "
                                 "(dotfiles, *.tmp, *.part), so no file could be dropped for this "
                                 "target; choose another name")
        return self

    @model_validator(mode="after")
    def _inbox_is_not_the_state_dir(self) -> Settings:
        # the inbox reads every file at its top: the callback secret, the API token file and
        # the rest of the state would be taken for lead files and moved to failed/
        # (nor the folder the state directory is in: the scan takes its subfolders as target
        # folders; nor a folder of the state's own, such as the database's)
        if self.inbox_dir is not None:
            inbox, state = self.inbox_dir.resolve(), self.state_dir.resolve()
            what = ("the state directory" if inbox == state
                    else "the folder the state directory is in" if inbox == state.parent
                    else "inside the state directory's own folders"
                    if state in inbox.parents and inbox.relative_to(state).parts[0] != "inbox"
                    else None)
            if what is not None:
                raise ValueError(f"inbox_dir: {str(self.inbox_dir)!r} is {what}; the inbox must be a "
                                 "folder of its own (by default STATE_DIR/inbox)")
        return self

    @model_validator(mode="after")
    def _copy_streams_fit_the_pool(self) -> Settings:
        if self.ingest_copy_streams >= self.db_pool_size:
            raise ValueError(
                f"ingest_copy_streams ({self.ingest_copy_streams}) must be less than "
                f"db_pool_size ({self.db_pool_size}): the rest of the daemon needs connections too"
            )
        return self

    @model_validator(mode="after")
    def _providers(self) -> Settings:
        _check_providers(self)
        return self

    # -- derived -------------------------------------------------------------
    @property
    def warnings(self) -> tuple[str, ...]:
        """What loading noticed but did not refuse (a misspelled ``DIALER_*`` variable)."""
        return self._warnings

    @property
    def inbox(self) -> Path:
        return self.inbox_dir or self.state_dir / "inbox"

    @property
    def listen_host(self) -> str:
        return self.http_listen.rpartition(":")[0]

    @property
    def listen_port(self) -> int:
        return int(self.http_listen.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.http_listen}").rstrip("/")

    @property
    def sandbox_mode(self) -> bool:
        return not self.ryng_base_url

    @property
    def webhooks_to_private(self) -> bool:
        """May result webhooks go to non-public addresses? As configured; by default only in
        sandbox mode, where the receiver is usually on 127.0.0.1."""
        return self.sandbox_mode if self.webhook_allow_private is None else self.webhook_allow_private

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def target(self, name: str) -> Target:
        return self.targets[name]

    def secret(self) -> bytes:
        """The HMAC key: configured, else generated once and kept in the state dir."""
        if self.callback_secret is not None:
            return self.callback_secret.get_secret_value().encode()
        path = self.state_dir / "callback_secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip().encode()

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data with every secret replaced."""
        data = self.model_dump(mode="json")
        for key in ("database_url", "ryng_token", "callback_secret", "portsip_token", "ringme_token",
                    "stringee_key_secret"):
            if data.get(key):
                data[key] = "***"
        data["api_tokens"] = ["***" for _ in data.get("api_tokens", [])]
        data["inbox_dir"] = str(self.inbox)
        data["public_url"] = self.base_url
        return data


# Top-level keys that may come from DIALER_<KEY>.
_ENV_KEYS = {
    name: f"DIALER_{name.upper()}" for name in Settings.model_fields if name not in {"targets"}
}
for _nested in ("compliance", "sandbox", "dispositions", "portsip", "ringme", "stringee", "providers"):
    _ENV_KEYS.pop(_nested)
# DIALER_* variables read by something other than Settings (the CLI, tests, benchmarks).
_OTHER_ENV = frozenset({
    "DIALER_CONFIG", "DIALER_TEST_DATABASE_URL", "DIALER_SLOW", "DIALER_FAULT_SEED",
    "DIALER_OUTAGE_S", "DIALER_UI_SCREENSHOTS", "DIALER_FUZZ_EXAMPLES",
})
_SECRET_KEYS = {"ryng_token", "callback_secret", "api_tokens", "database_url", "portsip_token",
                "ringme_token", "stringee_key_secret"}


def _format_errors(err: ValidationError | list[Any], source: str,
                   from_env: frozenset[str] = frozenset()) -> str:
    lines = []
    for e in err.errors() if isinstance(err, ValidationError) else err:
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["loc"] and e["loc"][0] in from_env:  # where the operator has to look
            loc = f"{loc} (from {_ENV_KEYS[str(e['loc'][0])]})"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return f"invalid configuration ({source}):\n" + "\n".join(lines)


def load_settings(
    path: Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read TOML (``--config``, ``$DIALER_CONFIG`` or ``./dialer.toml``), then env, then overrides."""
    env = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and env.get("DIALER_CONFIG"):
        path = Path(env["DIALER_CONFIG"])
    if path is None and Path("dialer.toml").exists():
        path = Path("dialer.toml")
    if path is not None:
        try:
            data = tomllib.loads(_read_config(path).decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory, not a file") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text: byte {e.object[e.start]:#04x} "
                              f"at offset {e.start}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        source = str(path)
        for key in _SECRET_KEYS:
            if key in data:
                raise ConfigError(
                    f"{key}: secrets are read from the environment "
                    f"({_ENV_KEYS[key]}), not from the config file"
                )
    settings = settings_from(data, source, env, overrides)
    settings._warnings = (*unknown_env(env), *ignored_for_campaigns(settings))
    return settings


MAX_CONFIG_BYTES = 1 << 20


def _read_config(path: Path) -> bytes:
    """The config file's bytes. Only a regular file, of at most ``MAX_CONFIG_BYTES``: a
    SIGHUP reads it on the event loop, and a FIFO there (blocking) or /dev/zero (endless)
    would have stopped the daemon."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            raise ConfigError(f"config file {path} is not a regular file")
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes")
    return data


# Queue-append parameters the campaign page does not have: set on a campaign target they
# never reach Ryng (pacing still reads max_dispose_s as the agents' wrap-up).
_QUEUE_ONLY = {"max_retries": "maxRetries", "retry_interval_min": "retryInterval",
               "leg_direction": "legDirection"}


def ignored_for_campaigns(settings: Settings) -> list[str]:
    """A warning for each queue-only key set on a ``kind = "campaign"`` target."""
    out = []
    for name, t in settings.targets.items():
        if t.kind != "campaign":
            continue
        for key, param in _QUEUE_ONLY.items():
            if key in t.model_fields_set and getattr(t, key) is not None:
                note = (" (customer-first still turns on the abandon-rate guard)"
                        if key == "leg_direction" and t.leg_direction == "customer-first" else "")
                out.append(f"targets.{name}.{key} is not sent: Ryng campaigns take no {param}, "
                           f"only queue appends (kind = \"queue\") do{note}")
    return out


def unknown_env(env: dict[str, str]) -> list[str]:
    """A warning for each ``DIALER_*`` variable nothing reads: a typo (DIALER_RYNG_BASEURL)
    would otherwise leave its setting at the default unnoticed. Not an error: a harness may
    set variables of its own. Values are not shown (they may be secrets)."""
    known = sorted({*_ENV_KEYS.values(), *_OTHER_ENV})
    out = []
    for var in sorted(env):
        if var.startswith("DIALER_") and var not in known:
            near = difflib.get_close_matches(var, known, n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            out.append(f"{var} is not a dialer setting and is ignored{hint}")
    return out


def settings_from(
    from_file: dict[str, Any],
    source: str,
    env: dict[str, str],
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Settings from a parsed TOML document, the environment (wins) and overrides (win)."""
    data = dict(from_file)
    replaced: set[str] = set()
    for key, var in _ENV_KEYS.items():
        value = env.get(var)
        if value is not None and value != "":
            data[key] = value
            replaced.add(key)
    if overrides:
        data.update(overrides)
        replaced.update(overrides)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as e:
        env_keys = frozenset(k for k in replaced if k in _ENV_KEYS and k not in (overrides or {}))
        raise ConfigError(_format_errors(e, source, env_keys)) from None
    if from_file:
        _check_file_types(from_file, settings, replaced, source)
    return settings


def _check_file_types(from_file: dict[str, Any], settings: Settings, replaced: set[str],
                      source: str) -> None:
    """TOML values have types: ``chunk_size = true`` or ``calls_per_agent = "2"`` is a mistake
    that the lax validation (which must turn environment strings into numbers) would accept as
    1 and 2. So the file's values are validated again strictly, with what the environment
    replaced taken from the validated settings."""
    dumped = settings.model_dump(mode="json")
    data = {k: v for k, v in from_file.items() if k not in replaced}
    # secrets dump masked ("**********"): left out, none comes from the file anyway
    data.update({k: dumped[k] for k in replaced if k in dumped and k not in _SECRET_KEYS})
    try:
        Settings.model_validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as e:
        # only what a TOML writer gets wrong: a boolean or a quoted value where a number (or
        # a boolean) goes; 5.0 for a whole number is the number (as the lax pass reads it)
        wrong = [x for x in e.errors() if isinstance(x.get("input"), bool | str)]
        if wrong:
            raise ConfigError(_format_errors(wrong, source)) from None
