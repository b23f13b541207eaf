"""Prometheus metrics: one ``Metrics`` per daemon, on its own ``CollectorRegistry``.

Every name starts with ``dialer_``; every label is bounded (target, provider, endpoint,
status class, kind, result, outcome, reason, state, source) — never a number, lead,
call or batch id. Targets not in the configuration are reported as ``other``.

Two kinds of numbers:

* **Counters and histograms** of things that happened in this process (leads taken,
  provider requests, callbacks, call outcomes…), incremented where they happen. Outcome
  counters only move on an *applied* terminal transition, so a duplicate or late
  callback never counts twice.
* **Gauges of state** (calls by state, in flight, pacing limit, ready agents, paused,
  webhook and results file backlogs, callback wait) are rebuilt from the database at scrape time by
  :meth:`Metrics.refresh`, so they are right after a restart and equal across instances
  sharing one database (aggregate them with ``max``, not ``sum``).

Deep call sites (intake) reach the daemon's instance through :func:`current`; the
daemon wires the rest through the hooks its components already offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dialer import __version__, supervisor
from dialer.lifecycle import observe
from dialer.lifecycle.observe import Ended
from dialer.lifecycle.states import LIVE, TERMINAL, sql_list
from dialer.metrics_budgets import BudgetMetrics
from dialer.metrics_figures import FiguresGauges
from dialer.metrics_waiting import WaitingGauges

if TYPE_CHECKING:
    from dialer.dispatch.outbox import Claimed
    from dialer.http.context import AppContext
    from dialer.lifecycle.events import Applied
    from dialer.lifecycle.spool import Spool
    from dialer.providers.ryng.client import SendResult

log = logging.getLogger(__name__)

# no *_created series: they double the output and nobody queries them
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Label values: closed sets, pre-initialised so every series exists from the first scrape.
LIVE_STATES = tuple(sql_list(LIVE))
OUTCOMES = tuple(sql_list(TERMINAL))
SOURCES = ("inbox", "api", "cli")
REJECT_REASONS = ("invalid", "duplicate", "dnc")
INBOX_RESULTS = ("ingested", "duplicate", "cancelled", "failed", "retry")
CHUNK_RESULTS = ("sent", "retry", "failed", "rejected", "uncertain")
STATUS_CLASSES = ("2xx", "4xx", "5xx", "error")
CALLBACK_KINDS = ("connect", "terminal")
CALLBACK_RESULTS = ("stored", "spooled", "forged", "bad_payload", "too_large", "unavailable")
EVENT_RESULTS = ("applied", "duplicate", "unmatched")
CALLBACK_STATUSES = ("upcoming", "due", "overdue")  # agent-scheduled callbacks not yet dialed
RECYCLE_REASONS = ("no_answer", "busy", "unreachable", "abandoned")
WEBHOOK_RESULTS = ("delivered", "retry", "failed")
SUPERVISED_TASKS = ("dispatch", "inbox", "spool_replayer", "webhooks", "providers", "watchdog")
TASKS = (*SUPERVISED_TASKS, "job_heartbeat", "job_orphans", "job_uncertain", "job_reaper", "job_completion",
         "job_embedded_postgres", "other")
RYNG_ENDPOINTS = {"queue": ("queue_append",), "campaign": ("campaign", "campaign_sheet")}



LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CALLBACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SUBMIT_TO_END_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800, 3600, 7200, 14400)


def status_class(status: int | None) -> str:
    """``2xx``/``4xx``/``5xx`` for an HTTP answer, ``error`` when none came back."""
    if status is None or not 100 <= status < 600:
        return "error"
    if status < 300:
        return "2xx"
    if status < 500:
        return "4xx"
    return "5xx"


class _Breakers(Collector):
    """Circuit-breaker openings, read from the dispatcher's breakers at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily("dialer_breaker_opens", "Times a target's circuit breaker opened "
                                "after repeated provider failures", labels=["target"])
        g = GaugeMetricFamily("dialer_target_breaker_open", "1 while a target's circuit breaker is "
                              "open or half-open (sending paused by repeated provider failures)",
                              labels=["target"])
        breakers = getattr(self.m.dispatcher, "breakers", None) or {}
        for name in self.m.targets:
            b = breakers.get(name)
            c.add_metric([name], float(b.opened_total if b is not None else 0))
            g.add_metric([name], 1.0 if b is not None and b.state != "closed" else 0.0)
        yield c
        yield g


class Metrics:
    def __init__(self, targets: Iterable[str] = (), *, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.targets: list[str] = []
        self.dispatcher: Any = None
        self._kinds: dict[str, str] = {}
        self._lock = anyio.Lock()
        self._refreshed = 0.0
        self.min_refresh_s = 0.5
        self.refresh_timeout_s = 3.0
        self.slow_wait_s = 2.0  # how long a scrape waits for the figures and waiting calls
        self._slow: asyncio.Task[None] | None = None
        self._chunk_sent: OrderedDict[int, float] = OrderedDict()  # chunk id -> monotonic send time

        # -- intake ------------------------------------------------------------------
        self.leads_ingested = Counter(
            "dialer_leads_ingested", "Leads accepted for dialing at intake", ["target", "source"],
            registry=r)
        self.leads_rejected = Counter(
            "dialer_leads_rejected", "Leads rejected at intake, by reason class (invalid number, "
            "duplicate, do-not-call)", ["target", "reason"], registry=r)
        self.inbox_files = Counter(
            "dialer_inbox_files", "Inbox files handled, by result (retry: an internal error, the "
            "file is tried again)", ["target", "result"], registry=r)
        # -- dispatch ----------------------------------------------------------------
        self.chunks = Counter(
            "dialer_chunks", "Chunk send attempts to the provider, by result", ["target", "result"],
            registry=r)
        self.calls_submitted = Counter(
            "dialer_calls_submitted", "Calls handed to the provider (in chunks it accepted)",
            ["target"], registry=r)
        self.provider_requests = Counter(
            "dialer_provider_requests", "HTTP requests to providers, by status class (error: no "
            "answer)", ["provider", "endpoint", "status"], registry=r)
        self.provider_latency = Histogram(
            "dialer_provider_request_duration_seconds", "Provider request latency",
            ["provider", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        # -- callbacks -----------------------------------------------------------------
        self.callbacks = Counter(
            "dialer_callbacks", "Provider callbacks received, by what we answered: stored "
            "(committed), spooled (fsync'd locally), bad_payload (a body that cannot be read, kept "
            "as bytes), or refused", ["kind", "result"], registry=r)
        self.callback_latency = Histogram(
            "dialer_callback_duration_seconds", "Time to make a callback durable and answer it",
            ["kind"], buckets=CALLBACK_BUCKETS, registry=r)
        self.callback_events = Counter(
            "dialer_callback_events", "Callbacks applied to calls in the database (also after a "
            "spool replay): applied, duplicate/late (recorded only), unmatched", ["kind", "result"],
            registry=r)
        self.last_callback = Gauge(
            "dialer_last_callback_timestamp_seconds", "Unix time of the last callback received",
            registry=r)
        # -- lifecycle -------------------------------------------------------------------
        self.outcomes = Counter(
            "dialer_call_outcomes", "Calls that reached a terminal state, by outcome (counted once "
            "per call)", ["target", "outcome"], registry=r)
        self.submit_to_end = Histogram(
            "dialer_call_submit_to_end_seconds", "Time from handing a call to the provider to its "
            "end", ["target"], buckets=SUBMIT_TO_END_BUCKETS, registry=r)
        self.recycles = Counter(
            "dialer_recycles", "Re-dials scheduled by a target's recycle rule", ["target", "reason"],
            registry=r)
        self.webhooks = Counter(
            "dialer_webhook_deliveries", "Result webhook delivery attempts, by result",
            ["result"], registry=r)
        # -- state, rebuilt from the database at scrape time ------------------------------
        self.calls = Gauge("dialer_calls", "Live calls by state", ["target", "state"], registry=r)
        self.in_flight = Gauge(
            "dialer_calls_in_flight", "Calls handed to the provider and not ended", ["target"],
            registry=r)
        self.pacing_limit = Gauge(
            "dialer_pacing_limit", "Calls allowed in flight: ready agents x calls_per_agent",
            ["target"], registry=r)
        self.ready_agents = Gauge(
            "dialer_ready_agents", "Agents ready for a target's calls (not in wrap-up)", ["target"],
            registry=r)
        self.wrapup_agents = Gauge(
            "dialer_wrapup_agents", "Agents in wrap-up (max_dispose_s after a call)", ["target"],
            registry=r)
        self.queue_depth = Gauge(
            "dialer_provider_queue_depth",
            "Callers waiting in the target's provider queue (PortSIP /waiting, ringme waiting_members);"
            " no sample when no provider reports it", ["target"], registry=r)
        self.paused = Gauge(
            "dialer_target_paused", "1 while a target is paused through the API", ["target"],
            registry=r)
        self.callback_wait = Gauge(
            "dialer_callback_wait_seconds", "Age of the oldest call waiting for its next callback "
            "(queued at the provider or ringing an agent); 0 when none", ["target"], registry=r)
        self.scheduled_callbacks = Gauge(
            "dialer_scheduled_callbacks", "Agent-scheduled callbacks not yet dialed, by status: "
            "upcoming, due (the owner's grace runs), overdue (grace passed)", ["target", "status"],
            registry=r)
        self.webhook_backlog = Gauge(
            "dialer_webhook_backlog", "Result webhooks waiting to be delivered", registry=r)
        self.results_file_backlog = Gauge(
            "dialer_results_file_backlog", "Results files of done inbox batches not yet written "
            "(a failed write is retried with backoff)", registry=r)
        self.db_up = Gauge(
            "dialer_db_up", "1 when the last scrape-time database read succeeded", registry=r)
        self.refresh_seconds = Gauge(
            "dialer_metrics_refresh_seconds", "Time the last scrape-time database read took",
            registry=r)
        # -- process and resources ------------------------------------------------------------
        self.spool_depth = Gauge(
            "dialer_spool_depth", "Callbacks in the local spool waiting for the database", registry=r)
        self.spool_quarantined = Counter(
            "dialer_spool_quarantined", "Spooled callbacks the database refused on replay (not for "
            "being unreachable), moved to the spool's quarantine file", registry=r)
        self.pool_size = Gauge("dialer_db_pool_size", "Database pool connections open", registry=r)
        self.pool_idle = Gauge("dialer_db_pool_idle", "Database pool connections idle", registry=r)
        self.pool_max = Gauge("dialer_db_pool_max", "Database pool size limit", registry=r)
        self.draining = Gauge("dialer_draining", "1 while the daemon drains for shutdown", registry=r)
        self.task_restarts = Counter(
            "dialer_task_restarts", "Background loops (and periodic job runs) that failed and were "
            "started again", ["task"], registry=r)
        self.reloads = Counter(
            "dialer_config_reloads", "Configuration reloads (SIGHUP), by result", ["result"],
            registry=r)
        self.build_info = Gauge("dialer_build_info", "Build information", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        self.start_time = Gauge("dialer_start_time_seconds", "Unix time the daemon started",
                                registry=r)
        self.start_time.set(time.time())
        for result in WEBHOOK_RESULTS:
            self.webhooks.labels(result)
        for task in SUPERVISED_TASKS:  # the series exist (at 0) before anything fails
            self.task_restarts.labels(task)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        for kind in CALLBACK_KINDS:
            self.callback_latency.labels(kind)
            for result in CALLBACK_RESULTS:
                self.callbacks.labels(kind, result)
            for result in EVENT_RESULTS:
                self.callback_events.labels(kind, result)
        r.register(_Breakers(self))
        self.figures = FiguresGauges(lambda: list(self.targets))  # campaign figures (own refresh)
        r.register(self.figures)
        self.waiting = WaitingGauges(lambda: list(self.targets))  # why isn't it dialing (own refresh)
        r.register(self.waiting)
        self.budgets = BudgetMetrics(r)  # rate budget and abandon guard (issue 16)
        ProcessCollector(namespace="dialer", registry=r)
        self.set_targets(targets)

    # -- wiring -------------------------------------------------------------------------
    def set_targets(self, targets: Iterable[str] | Mapping[str, Any]) -> None:
        """Known targets (their series exist from the first scrape); again after a reload."""
        items = targets.items() if isinstance(targets, Mapping) else ((t, None) for t in targets)
        for name, cfg in items:
            kind = str(getattr(cfg, "kind", "queue"))
            self._kinds[name] = kind
            if name in self.targets:
                continue
            self.targets.append(name)
            for source in SOURCES:
                self.leads_ingested.labels(name, source)
            for reason in REJECT_REASONS:
                self.leads_rejected.labels(name, reason)
            for result in INBOX_RESULTS:
                self.inbox_files.labels(name, result)
            for result in CHUNK_RESULTS:
                self.chunks.labels(name, result)
            self.calls_submitted.labels(name)
            for outcome in OUTCOMES:
                self.outcomes.labels(name, outcome)
            self.submit_to_end.labels(name)
            for reason in RECYCLE_REASONS:
                self.recycles.labels(name, reason)
            for state in LIVE_STATES:
                self.calls.labels(name, state)
            for status in CALLBACK_STATUSES:
                self.scheduled_callbacks.labels(name, status)
            for g in (self.in_flight, self.pacing_limit, self.ready_agents, self.wrapup_agents,
                      self.paused, self.callback_wait):
                g.labels(name)
        for kind in set(self._kinds.values()):
            for endpoint in RYNG_ENDPOINTS.get(kind, ()):
                self.provider_latency.labels("ryng", endpoint)
                for status in STATUS_CLASSES:
                    self.provider_requests.labels("ryng", endpoint, status)

    def target(self, name: str | None) -> str:
        return name if name in self._kinds else "other"

    def watch_pool(self, pool: Any) -> None:
        """An asyncpg pool: size and idle connections, read at scrape time."""
        self.pool_size.set_function(lambda: float(pool.get_size()))
        self.pool_idle.set_function(lambda: float(pool.get_idle_size()))
        self.pool_max.set_function(lambda: float(pool.get_max_size()))

    def watch_spool(self, spool: Spool) -> None:
        self.spool_depth.set_function(lambda: float(spool.depth))

    def spool_quarantine(self) -> None:
        self.spool_quarantined.inc()

    def watch_dispatcher(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        if getattr(dispatcher, "budget", None) is not None:
            dispatcher.budget.on_wait = self.budgets.observe_wait

    # -- intake -------------------------------------------------------------------------
    def leads(self, target: str, source: str, counts: Mapping[str, int]) -> None:
        """A batch finalised: ``counts`` as intake reports them (accepted, invalid, …)."""
        t = self.target(target)
        src = source if source in SOURCES else "api"
        if counts.get("accepted"):
            self.leads_ingested.labels(t, src).inc(counts["accepted"])
        for reason in REJECT_REASONS:
            if counts.get(reason):
                self.leads_rejected.labels(t, reason).inc(counts[reason])

    def inbox_file(self, target: str, result: str) -> None:
        if result in INBOX_RESULTS:
            self.inbox_files.labels(self.target(target), result).inc()

    # -- providers ----------------------------------------------------------------------
    def provider_request(self, provider: str, endpoint: str, status: int | None, seconds: float) -> None:
        self.provider_requests.labels(provider, endpoint, status_class(status)).inc()
        self.provider_latency.labels(provider, endpoint).observe(seconds)

    def on_send(self, target: str, r: SendResult) -> None:
        """``Dispatcher.on_send``: one request to Ryng."""
        self.provider_request("ryng", r.endpoint or "unknown", r.status, r.elapsed_s)

    def chunk_settled(self, c: Claimed, r: SendResult, result: str) -> None:
        """``Dispatcher.on_settled``: a chunk's send attempt is committed with this result."""
        t = self.target(c.target)
        if result in CHUNK_RESULTS:
            self.chunks.labels(t, result).inc()
        if result == "sent":
            self.calls_submitted.labels(t).inc(c.rows)
            self._chunk_sent[c.id] = time.monotonic()
            while len(self._chunk_sent) > 200_000:
                self._chunk_sent.popitem(last=False)

    # -- callbacks ----------------------------------------------------------------------
    def callback(self, kind: str, result: str, seconds: float | None = None) -> None:
        """What the callback endpoint answered (``routes(count=...)``)."""
        if kind not in CALLBACK_KINDS:
            return
        self.callbacks.labels(kind, result if result in CALLBACK_RESULTS else "other").inc()
        if seconds is not None:
            self.callback_latency.labels(kind).observe(seconds)
        if result in ("stored", "spooled"):
            self.last_callback.set(time.time())

    def callback_event(self, kind: str, chunk_id: int, a: Applied) -> None:
        """``CallbackService.on_event``: a callback reached the database."""
        if kind in CALLBACK_KINDS:
            self.callback_events.labels(kind, a.result if a.result in EVENT_RESULTS else "other").inc()
        if a.result != "applied" or not a.terminal or a.to_state is None:
            return  # duplicates and late callbacks never count twice
        t = self.target(a.target)
        self.outcomes.labels(t, a.to_state).inc()
        if a.submitted_at is not None:
            took = (datetime.now(UTC) - a.submitted_at).total_seconds()
            self.submit_to_end.labels(t).observe(max(0.0, took))
        elif chunk_id in self._chunk_sent:  # until Applied carries submitted_at
            self.submit_to_end.labels(t).observe(time.monotonic() - self._chunk_sent[chunk_id])
        nxt = getattr(a.effects, "recycled_to", None)
        if nxt is not None and a.to_state in RECYCLE_REASONS:
            self.recycles.labels(t, a.to_state).inc()
        # the calls a DNC disposition cancelled are counted once, under their own targets,
        # by the callback service (calls_ended)

    def call_ended(self, target: str, outcome: str, n: int = 1) -> None:
        """Calls ended outside a callback (reaper, cancel, caps): count them here."""
        if n > 0 and outcome in OUTCOMES:
            self.outcomes.labels(self.target(target), outcome).inc(n)

    def task_restarted(self, task: str) -> None:
        self.task_restarts.labels(task if task in TASKS else "other").inc()

    # -- results / ops ------------------------------------------------------------------
    def webhook(self, result: str) -> None:
        if result in WEBHOOK_RESULTS:
            self.webhooks.labels(result).inc()

    def config_reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "failed").inc()

    # -- scrape -------------------------------------------------------------------------
    async def refresh(self, ctx: AppContext) -> None:
        """Rebuild the state gauges from the database (at most every ``min_refresh_s``)."""
        async with self._lock:
            if time.monotonic() - self._refreshed < self.min_refresh_s:
                return
            start = time.perf_counter()
            self.draining.set(1 if ctx.draining else 0)
            try:
                with anyio.fail_after(self.refresh_timeout_s):
                    await self._read_db(ctx)
            except Exception as e:
                self.db_up.set(0)
                log.warning("metrics: database read failed", extra={"error": type(e).__name__})
            else:
                self.db_up.set(1)
            self._refreshed = time.monotonic()
            self.refresh_seconds.set(time.perf_counter() - start)
            await self._slow_reads(ctx)

    async def _slow_reads(self, ctx: AppContext) -> None:
        """The campaign figures and the waiting calls each cost a pass over a target's calls:
        seconds a scrape with millions waiting (12-44 s measured with 3.8 M), past
        Prometheus's 10 s scrape timeout, which loses the whole scrape. A scrape waits for them
        at most ``slow_wait_s``, then answers with their last readings while they finish in
        the background (one read at a time; each keeps its own cadence and time limit)."""
        if self._slow is None or self._slow.done():
            self._slow = asyncio.create_task(self._read_slow(ctx))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._slow), self.slow_wait_s)

    async def _read_slow(self, ctx: AppContext) -> None:
        await self.figures.refresh(ctx)
        await self.waiting.refresh(ctx, self.dispatcher)

    async def _read_db(self, ctx: AppContext) -> None:
        from dialer import metrics_state  # reads the database; this module only sets numbers

        self.set_targets(ctx.settings.targets)
        r = await metrics_state.read(ctx, ctx.dispatcher or self.dispatcher, ctx.clock.now())
        for name in self.targets:
            for state in LIVE_STATES:
                self.calls.labels(name, state).set(r.by_state.get((name, state), 0))
            self.paused.labels(name).set(1 if r.paused.get(name) else 0)
            self.callback_wait.labels(name).set(r.callback_wait_s.get(name, 0.0))
            for status in CALLBACK_STATUSES:
                self.scheduled_callbacks.labels(name, status).set(r.callbacks.get((name, status), 0))
            pace = r.paces.get(name)
            if pace is not None:
                self.in_flight.labels(name).set(pace.in_flight)
                self.pacing_limit.labels(name).set(pace.limit)
                self.ready_agents.labels(name).set(pace.ready_agents)
                self.wrapup_agents.labels(name).set(pace.wrapup_agents)
            depth = r.queue_depth.get(name)
            if depth is not None:
                self.queue_depth.labels(name).set(depth)
            else:
                with contextlib.suppress(KeyError):  # never reported, or no longer
                    self.queue_depth.remove(name)
        self.webhook_backlog.set(r.webhook_backlog)
        self.results_file_backlog.set(r.results_file_backlog)
        await self.budgets.refresh(ctx, ctx.dispatcher or self.dispatcher)

    async def exposition(self, ctx: AppContext | None = None) -> bytes:
        if ctx is not None:
            await self.refresh(ctx)
        return generate_latest(self.registry)


_current: Metrics | None = None
_fallback: Metrics | None = None


def install(m: Metrics) -> Metrics:
    """Make ``m`` the process's metrics (the daemon does this once at start-up)."""
    global _current
    _current = m
    return m


def _count_ended(items: Sequence[Ended]) -> None:
    m = current()
    for e in items:
        m.call_ended(e.target, e.outcome, e.n)


# every call ended outside a callback reaches the outcome counter this one way
observe.subscribe(_count_ended)
supervisor.on_restart(lambda task: current().task_restarted(task))


def current() -> Metrics:
    """The daemon's metrics; outside a daemon, a private instance nobody scrapes."""
    global _fallback
    if _current is not None:
        return _current
    if _fallback is None:
        _fallback = Metrics()
    return _fallback


def for_context(ctx: AppContext) -> Metrics:
    """The metrics an app serves: the daemon's, else one per app (tests build many)."""
    m = ctx.extra.get("metrics")
    if not isinstance(m, Metrics):
        m = Metrics(ctx.settings.targets)
        ctx.extra["metrics"] = m
    return m
