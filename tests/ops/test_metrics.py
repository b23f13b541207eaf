"""Metrics in-process: bounded labels, no double counting, state gauges rebuilt from the
database (a restarted daemon reports what the rows say), and sd_notify datagrams.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dialer import metrics
from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.lifecycle import observe
from dialer.lifecycle.events import Applied
from dialer.notify import Notifier
from dialer.providers.ryng.client import SendResult

# Every label value a series may carry, by label name (targets come from the config).
BOUNDED = {
    "source": set(metrics.SOURCES), "reason": set(metrics.REJECT_REASONS) | set(metrics.RECYCLE_REASONS),
    "state": set(metrics.LIVE_STATES), "outcome": set(metrics.OUTCOMES), "provider": {"ryng"},
    "endpoint": {"queue_append", "campaign", "campaign_sheet", "unknown"},
    "status": set(metrics.STATUS_CLASSES) | set(metrics.CALLBACK_STATUSES), "kind": set(metrics.CALLBACK_KINDS),
    "result": (set(metrics.INBOX_RESULTS) | set(metrics.CHUNK_RESULTS) | set(metrics.CALLBACK_RESULTS)
               | set(metrics.EVENT_RESULTS) | set(metrics.WEBHOOK_RESULTS) | {"ok", "other"}),
    "task": set(metrics.TASKS),
}


def text(m: metrics.Metrics) -> str:
    return generate_latest(m.registry).decode()


def values(m: metrics.Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(text(m)):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(m: metrics.Metrics, name: str, **labels: str) -> float:
    return values(m, name)[tuple(sorted(labels.items()))]


def applied(result: str, to_state: str | None, terminal: bool, target: str = "sales", **kw: object) -> Applied:
    return Applied(result, 1, "queued", to_state, target, terminal, **kw)  # type: ignore[arg-type]


def test_labels_stay_bounded_whatever_comes_in() -> None:
    m = metrics.Metrics(["sales"])
    m.leads("+14155550100", "api", {"accepted": 3, "invalid": 1, "duplicate": 2, "dnc": 1})
    m.leads("sales", "weird-source", {"accepted": 1})
    m.inbox_file("9f1c2e7a-batch", "failed")
    m.inbox_file("sales", "not-a-result")
    m.provider_request("ryng", "queue_append", 503, 0.2)
    m.provider_request("ryng", "queue_append", None, 1.0)
    m.provider_request("ryng", "queue_append", 429, 0.1)
    m.callback("connect", "stored", 0.01)
    m.callback("terminal", "something-new", 0.01)
    m.callback("../../etc", "stored", 0.01)
    m.callback_event("terminal", 7, applied("applied", "answered", True, target="chunk-42"))
    m.callback_event("terminal", 7, applied("weird", None, False))
    m.call_ended("sales", "expired", 2)
    m.call_ended("sales", "not-an-outcome", 2)
    m.webhook("delivered")
    m.webhook("exploded")
    for fam in text_string_to_metric_families(text(m)):
        assert fam.name.startswith("dialer_"), fam.name
        for s in fam.samples:
            for k, v in s.labels.items():
                if k in ("le", "version"):
                    continue
                allowed = {"sales", "other"} if k == "target" else BOUNDED.get(k)
                assert allowed is not None, f"unexpected label {k} on {s.name}"
                assert v in allowed, f"{s.name}{{{k}={v!r}}}"
                assert not re.search(r"\d{5,}", v), f"an id-like label value: {s.name} {v}"
    assert value(m, "dialer_leads_ingested_total", target="other", source="api") == 3
    assert value(m, "dialer_leads_rejected_total", target="other", reason="duplicate") == 2
    assert value(m, "dialer_provider_requests_total", provider="ryng", endpoint="queue_append",
                 status="4xx") == 1
    assert value(m, "dialer_provider_requests_total", provider="ryng", endpoint="queue_append",
                 status="error") == 1
    assert value(m, "dialer_call_outcomes_total", target="sales", outcome="expired") == 2


def test_every_known_series_exists_before_anything_happens() -> None:
    m = metrics.Metrics({"sales": SimpleNamespace(kind="queue"), "camp": SimpleNamespace(kind="campaign")})
    outcomes = values(m, "dialer_call_outcomes_total")
    assert len(outcomes) == 2 * len(metrics.OUTCOMES) and set(outcomes.values()) == {0}
    endpoints = {dict(k)["endpoint"] for k in values(m, "dialer_provider_requests_total")}
    assert endpoints == {"queue_append", "campaign", "campaign_sheet"}
    assert len(values(m, "dialer_calls")) == 2 * len(metrics.LIVE_STATES)


def test_outcomes_count_once_per_call_and_never_for_duplicates() -> None:
    m = metrics.Metrics(["sales"])
    c = SimpleNamespace(id=11, target="sales", rows=2)
    m.chunk_settled(c, SendResult("ok", 200, None), "sent")  # type: ignore[arg-type]
    m.callback_event("connect", 11, applied("applied", "assigned", False))
    m.callback_event("terminal", 11, applied("applied", "answered", True))
    m.callback_event("terminal", 11, applied("duplicate", "answered", False))  # Ryng's retry
    m.callback_event("terminal", 11, applied("duplicate", "no_answer", False))  # a late one
    m.callback_event("terminal", 11, applied("unmatched", None, False, target=None))  # type: ignore[arg-type]
    assert value(m, "dialer_call_outcomes_total", target="sales", outcome="answered") == 1
    assert sum(values(m, "dialer_call_outcomes_total").values()) == 1
    assert value(m, "dialer_callback_events_total", kind="terminal", result="duplicate") == 2
    assert value(m, "dialer_callback_events_total", kind="terminal", result="unmatched") == 1
    assert value(m, "dialer_calls_submitted_total", target="sales") == 2
    assert value(m, "dialer_call_submit_to_end_seconds_count", target="sales") == 1
    # a rejected chunk: the chunk is counted here; its calls' ends come once, after commit,
    # through observe.ended (as every ending outside a callback does)
    m.chunk_settled(SimpleNamespace(id=12, target="sales", rows=5), SendResult("rejected", 400, None),  # type: ignore[arg-type]
                    "rejected")
    assert value(m, "dialer_chunks_total", target="sales", result="rejected") == 1
    assert value(m, "dialer_call_outcomes_total", target="sales", outcome="rejected_by_provider") == 0
    metrics.install(m)
    try:
        observe.ended([observe.Ended("sales", "rejected_by_provider", None, 5)])
    finally:
        metrics._current = None
    assert value(m, "dialer_call_outcomes_total", target="sales", outcome="rejected_by_provider") == 5


def test_effects_of_an_end_count_recycles_and_dnc_cancels() -> None:
    m = metrics.Metrics(["sales"])
    eff = SimpleNamespace(recycled_to=99, cancelled=[], dnc_added=False, webhook=False)
    m.callback_event("terminal", 1, applied("applied", "no_answer", True, effects=eff))
    assert value(m, "dialer_recycles_total", target="sales", reason="no_answer") == 1
    # the calls a DNC disposition cancelled are not counted here (they may belong to other
    # targets): the callback service tells observe.ended, once, under their own targets
    eff = SimpleNamespace(recycled_to=None, ended=[observe.Ended("other", "cancelled", None, 2)],
                          dnc_added=True, webhook=False)
    m.callback_event("terminal", 2, applied("applied", "failed", True, effects=eff))
    assert value(m, "dialer_call_outcomes_total", target="sales", outcome="cancelled") == 0


async def _insert_calls(pool: asyncpg.Pool, clock: FakeClock, rows: list[tuple[str, str, str | None, int]]) -> None:
    """(target, state, agent, minutes since last update) per call."""
    batch = uuid.uuid4()
    now = clock.now()
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO batches (id, target, source, state) VALUES ($1, 'sales', 'api', 'ingested')",
                           batch)
        for i, (target, state, agent, age) in enumerate(rows):
            at = now - timedelta(minutes=age)
            await conn.execute(
                "INSERT INTO calls (batch_id, target, line, e164, state, agent, created_at, updated_at, "
                "submitted_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7)",
                batch, target, i + 1, f"+1415555{i:04d}", state, agent, at)


async def test_state_gauges_are_rebuilt_from_the_database(pool: asyncpg.Pool, settings: Settings,
                                                          clock: FakeClock) -> None:
    await _insert_calls(pool, clock, [
        ("sales", "queued", None, 40), ("sales", "queued", None, 2), ("sales", "assigned", "alice", 5),
        ("sales", "connected", "bob", 1), ("sales", "pending", None, 0), ("sales", "pending", None, 0),
        ("sales", "answered", "carol", 0), ("sales", "invalid", None, 0),
    ])
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO target_state (target, paused) VALUES ('sales', true)")
    for _ in range(2):  # a fresh Metrics each time: what a restarted daemon reports
        m = metrics.Metrics(settings.targets)
        ctx = AppContext(settings=settings, pool=pool, clock=clock)
        await m.refresh(ctx)
        assert value(m, "dialer_calls_in_flight", target="sales") == 4
        assert value(m, "dialer_calls", target="sales", state="queued") == 2
        assert value(m, "dialer_calls", target="sales", state="pending") == 2
        assert value(m, "dialer_calls", target="sales", state="submitting") == 0
        assert value(m, "dialer_target_paused", target="sales") == 1
        assert value(m, "dialer_callback_wait_seconds", target="sales") == pytest.approx(40 * 60, abs=1)
        agents = len(settings.targets["sales"].agents)
        assert value(m, "dialer_ready_agents", target="sales") + value(m, "dialer_wrapup_agents",
                                                                       target="sales") == agents
        assert value(m, "dialer_pacing_limit", target="sales") == (
            value(m, "dialer_ready_agents", target="sales") * settings.targets["sales"].calls_per_agent)
        assert value(m, "dialer_db_up") == 1
        assert value(m, "dialer_webhook_backlog") == 0


async def test_a_failed_database_read_keeps_the_scrape_alive(settings: Settings, clock: FakeClock) -> None:
    class DownPool:
        def acquire(self) -> object:
            raise OSError("connection refused")

    m = metrics.Metrics(settings.targets)
    await m.refresh(AppContext(settings=settings, pool=DownPool(), clock=clock))  # type: ignore[arg-type]
    assert value(m, "dialer_db_up") == 0


async def test_each_app_serves_its_own_registry(pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> None:
    bodies = []
    for _ in range(2):
        app = create_app(AppContext(settings=settings, pool=pool, clock=clock))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            bodies.append(r.text)
            assert "/metrics" not in (await c.get("/openapi.json")).json()["paths"]
    for body in bodies:
        assert "dialer_calls_in_flight{target=\"sales\"} 0.0" in body
        assert "dialer_db_up 1.0" in body


# -- sd_notify -------------------------------------------------------------------------------
def _listen(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    return s


def test_notifier_sends_datagrams_and_unsets_the_environment(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    with _listen(path) as sock:
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "OTHER": "x"}
        n = Notifier(env)
        assert env == {"OTHER": "x"}
        assert n.enabled and n.watchdog_s == 4.0
        assert n.ready("running:  listening\non 1.2.3.4")
        assert sock.recv(4096) == b"READY=1\nSTATUS=running: listening on 1.2.3.4"
        assert n.stopping()
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"
        assert n.reloading()
        assert sock.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        n.close()


def test_notifier_abstract_socket_and_foreign_watchdog_pid() -> None:
    name = f"dialer-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    with _listen("\0" + name) as sock:
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
        assert n.watchdog_s is None  # the watchdog is someone else's
        assert n.status("hello")
        assert sock.recv(4096) == b"STATUS=hello"


def test_notifier_without_socket_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready()
    n2 = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify.sock"})
    assert not n2.ready()  # a missing socket is logged once, never raised
