"""Metrics of the provider rate budget and the abandon-rate guard (issue 16, points 3 and 4).

The wait is a histogram of this process's sends; the rest is shared state read from the
database at scrape time (equal across instances: aggregate with ``max``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from dialer.dispatch.abandon import LEVEL_VALUE, watched
from dialer.store.queries import Q

if TYPE_CHECKING:
    from dialer.http.context import AppContext

PROVIDERS = ("ryng",)
WAIT_BUCKETS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class _Lowered(Collector):
    def __init__(self, owner: BudgetMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily("dialer_rate_budget_lowered", "Times a provider's 429 lowered the "
                                "shared call-rate budget (AIMD decrease)", labels=["provider"])
        for p in PROVIDERS:
            c.add_metric([p], float(self.owner.lowered.get(p, 0)))
        yield c


class BudgetMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.wait = Histogram(
            "dialer_rate_budget_wait_seconds", "Time a chunk waited for the provider call-rate "
            "budget before its send (0 when it fitted at once)", ["provider"], buckets=WAIT_BUCKETS,
            registry=r)
        self.rate = Gauge(
            "dialer_rate_budget_calls_per_second", "Calls per second the shared budget allows now "
            "(max_calls_per_s, lowered after a 429 and recovering); absent without a budget",
            ["provider"], registry=r)
        self.factor = Gauge(
            "dialer_rate_budget_factor", "Share of the configured budget in force (1 = full; a 429 "
            "halves it, then it climbs back)", ["provider"], registry=r)
        self.hold = Gauge(
            "dialer_rate_budget_hold_seconds", "Seconds every instance still holds its sends after a "
            "429's Retry-After", ["provider"], registry=r)
        self.abandon_rate = Gauge(
            "dialer_abandon_rate", "Rolling 30-day abandon rate of a customer-first target: abandoned "
            "/ picked up (answered + abandoned), 0..1", ["target"], registry=r)
        self.abandon_level = Gauge(
            "dialer_abandon_guard_level", "Abandon-rate guard of a customer-first target: 0 normal, "
            "1 slowed to one call per ready agent, 2 paused itself", ["target"], registry=r)
        self.lowered: dict[str, int] = {}
        r.register(_Lowered(self))
        for p in PROVIDERS:
            self.wait.labels(p)

    def observe_wait(self, seconds: float) -> None:
        self.wait.labels("ryng").observe(max(0.0, seconds))

    async def refresh(self, ctx: AppContext, dispatcher: Any) -> None:
        budget = getattr(dispatcher, "budget", None)
        async with ctx.pool.acquire() as conn:
            if budget is not None and budget.enabled:
                snap = await budget.snapshot(conn)
                self.factor.labels("ryng").set(snap["factor"])
                self.hold.labels("ryng").set(snap["hold_s"])
                self.lowered["ryng"] = snap["lowered_total"]
                if snap["calls_per_s"] is not None:
                    self.rate.labels("ryng").set(snap["calls_per_s"])
            guards = {r["target"]: r for r in await conn.fetch(Q.abandon_guard_all)}
        for name, t in ctx.settings.targets.items():
            if not watched(t):
                continue
            g = guards.get(name)
            self.abandon_rate.labels(name).set(float(g["rate"]) if g else 0.0)
            self.abandon_level.labels(name).set(LEVEL_VALUE.get(g["level"], 0.0) if g else 0.0)
