"""The kind of rule that holds a waiting call, as ``calls.hold_reason`` records it
(migration 0013) and ``GET /v1/targets/{name}/waiting`` reports it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HOLD_REASONS = ("calling_hours", "holiday", "cap", "campaign_window", "other")


def hold_reason(rule: str | None) -> str:
    """A hold's rule name (dispatch/compliance.py, dispatch/windows.py) → its kind."""
    if rule is None:
        return "other"
    if rule.startswith("calling_hours"):  # calling_hours, calling_hours_by_region.<region>...
        return "calling_hours"
    if rule == "holidays":
        return "holiday"
    if rule == "max_attempts_per_number":
        return "cap"
    if rule in ("active_from", "blocked"):
        return "campaign_window"
    return "other"


def of_detail(detail: Mapping[str, Any] | None) -> str:
    return hold_reason((detail or {}).get("rule"))
