"""Templates, filters, the progress bar's state groups, and the outcomes chart (inline SVG)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from dialer.lifecycle.states import LIVE, TERMINAL

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")


@dataclass(frozen=True, slots=True)
class Group:
    key: str
    label: str
    states: tuple[str, ...]
    colour: str


# The progress bar's segments, in the order a call moves through them.
GROUPS: tuple[Group, ...] = (
    Group("answered", "answered", ("answered",), "#1f7a3a"),
    Group("not_reached", "not reached", ("no_answer", "busy", "unreachable", "abandoned"), "#b86e00"),
    Group("failed", "failed", ("failed", "rejected_by_provider", "expired", "capped"), "#b3261e"),
    Group("cancelled", "cancelled", ("cancelled",), "#4b5563"),
    Group("on_call", "on a call", ("assigned", "connected"), "#1d4ed8"),
    Group("sent", "sent, ringing", ("submitting", "uncertain", "queued"), "#60a5fa"),
    Group("waiting", "waiting", ("pending", "scheduled", "retry_wait"), "#cbd5e1"),
)
_GROUP_OF = {s: g for g in GROUPS for s in g.states}
_ENDED = frozenset(s.value for s in TERMINAL)
_LIVE = frozenset(s.value for s in LIVE)

STATE_LABELS = {
    "pending": "waiting", "scheduled": "waiting for calling hours", "retry_wait": "waiting to re-dial",
    "submitting": "sending", "uncertain": "sent, unconfirmed", "queued": "queued at provider",
    "assigned": "agent assigned", "connected": "connected", "answered": "answered",
    "no_answer": "no answer", "busy": "busy", "unreachable": "unreachable", "failed": "failed",
    "rejected_by_provider": "rejected by provider", "cancelled": "cancelled", "expired": "expired",
    "capped": "capped (attempt limit)", "abandoned": "abandoned (no agent came)", "invalid": "invalid",
    "duplicate": "duplicate", "dnc": "on do-not-call list",
}

BATCH_STATES = {
    "receiving": "reading file", "ingested": "dialing", "failed": "failed",
    "cancelled": "cancelled", "done": "done",
}


@dataclass(frozen=True, slots=True)
class Segment:
    key: str
    label: str
    colour: str
    n: int
    pct: float


@dataclass(frozen=True, slots=True)
class Progress:
    total: int
    ended: int
    live: int
    segments: tuple[Segment, ...]

    @property
    def pct_ended(self) -> int:
        return int(100 * self.ended / self.total) if self.total else 0

    def summary(self) -> str:
        if not self.total:
            return "no calls"
        return f"{self.ended:,} of {self.total:,} calls ended ({self.pct_ended}%)"


def progress(by_state: Mapping[str, int]) -> Progress:
    total = sum(by_state.values())
    counts = {g.key: 0 for g in GROUPS}
    for state, n in by_state.items():
        g = _GROUP_OF.get(state)
        if g is not None:
            counts[g.key] += n
    segs = tuple(
        Segment(g.key, g.label, g.colour, counts[g.key], 100.0 * counts[g.key] / total if total else 0.0)
        for g in GROUPS
    )
    ended = sum(n for s, n in by_state.items() if s in _ENDED)
    live = sum(n for s, n in by_state.items() if s in _LIVE)
    return Progress(total=total, ended=ended, live=live, segments=segs)


def batch_active(state: str, by_state: Mapping[str, int]) -> bool:
    """Worth polling: rows still arriving, or calls that have not ended yet."""
    if state in ("receiving", "ingested"):
        return True
    return state == "cancelled" and any(n and s in _LIVE for s, n in by_state.items())


def outcome_chart(by_state: Mapping[str, int], title: str = "Outcomes of ended calls") -> Markup:
    """A horizontal bar chart of ended calls by final state, as accessible inline SVG."""
    rows = [(s, n) for s, n in by_state.items() if s in _ENDED and n]
    order = [s for g in GROUPS for s in g.states]
    rows.sort(key=lambda x: order.index(x[0]) if x[0] in order else 99)
    if not rows:
        return Markup('<p class="empty">No call has ended yet: the chart appears with the first result.</p>')
    total = sum(n for _, n in rows)
    top = max(n for _, n in rows)
    label_w, bar_w, row_h, pad = 190, 330, 28, 6
    width = label_w + bar_w + 110
    height = row_h * len(rows) + pad * 2
    desc = ", ".join(f"{STATE_LABELS.get(s, s)}: {n}" for s, n in rows)
    out = [
        Markup(
            '<svg class="chart" viewBox="0 0 {} {}" width="{}" role="img" '
            'aria-labelledby="chart-title chart-desc" preserveAspectRatio="xMinYMin meet">'
            '<title id="chart-title">{}</title><desc id="chart-desc">{}</desc>'
        ).format(width, height, width, title, desc)
    ]
    for i, (state, n) in enumerate(rows):
        y = pad + i * row_h
        w = max(2.0, bar_w * n / top)
        g = _GROUP_OF.get(state)
        out.append(Markup(
            '<text x="{}" y="{:.1f}" text-anchor="end" class="chart-label">{}</text>'
            '<rect x="{}" y="{}" width="{:.1f}" height="{}" rx="3" fill="{}"></rect>'
            '<text x="{:.1f}" y="{:.1f}" class="chart-value">{:,} ({:.0f}%)</text>'
        ).format(
            label_w - 8, y + row_h / 2 + 5, STATE_LABELS.get(state, state),
            label_w, y + 4, w, row_h - 8, g.colour if g else "#6b7280",
            label_w + w + 8, y + row_h / 2 + 5, n, 100.0 * n / total,
        ))
    out.append(Markup("</svg>"))
    return Markup("").join(out)


def time_tag(value: datetime | None, empty: str = "\u2014") -> Markup:
    """A ``<time>`` in UTC; the page's script shows it in the browser's zone, UTC on hover."""
    if value is None:
        return escape(empty)
    utc = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    iso = utc.isoformat().replace("+00:00", "Z")
    text = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}" title="{}" data-local>{}</time>').format(iso, text, text)


def number(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def source_label(source: str, name: str | None) -> str:
    if source == "inbox":
        return f"inbox · {name}" if name else "inbox"
    if source == "cli":
        return f"command line · {name}" if name else "command line"
    if name and name not in ("api", "api (text/csv)"):  # what the JSON/CSV API records
        return f"upload · {name}"
    return "API"


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = time_tag
    env.filters["number"] = number
    env.filters["state_label"] = lambda s: STATE_LABELS.get(s, s)
    env.filters["batch_state"] = lambda s: BATCH_STATES.get(s, s)
    env.globals["GROUPS"] = GROUPS
    return env


def as_dict(x: Any) -> dict[str, Any]:
    return dict(x) if x is not None else {}
