"""``dialer_calls_waiting{target,reason}``: why isn't it dialing, read at scrape time.

Each target's waiting calls by what holds them (``dispatch/waiting.py``) cost one pass over
its waiting calls, so they are read at most every ``every_s`` (a scrape in between shows the
last reading). A failed read keeps the last numbers (and logs): it never fails a scrape.
Every reason has a sample (0 when none wait for it), so alerts see the series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import anyio
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dialer.dispatch import waiting
from dialer.store.queries import Q

if TYPE_CHECKING:
    from dialer.http.context import AppContext

log = logging.getLogger(__name__)


class WaitingGauges(Collector):
    def __init__(self, targets: Callable[[], list[str]], every_s: float = 30.0,
                 timeout_s: float = 10.0) -> None:
        self.targets = targets  # the known targets, read at each scrape
        self.every_s = every_s
        self.timeout_s = timeout_s
        self._read_at = float("-inf")
        self._waiting: dict[str, waiting.Waiting] = {}

    async def refresh(self, ctx: AppContext, dispatcher: object = None) -> None:
        if time.monotonic() - self._read_at < self.every_s:
            return
        now = ctx.clock.now()
        try:
            with anyio.fail_after(self.timeout_s):
                async with ctx.pool.acquire() as conn:
                    paused = {x["target"]: bool(x["paused"]) for x in await conn.fetch(Q.target_state_all)}
                    for name, t in ctx.settings.targets.items():
                        self._waiting[name] = await waiting.for_target(
                            conn, name, t, ctx.dispatcher or dispatcher, paused.get(name, False), now)
        except Exception as e:
            log.warning("metrics: waiting calls not read", extra={"error": type(e).__name__})
            return
        self._read_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "dialer_calls_waiting", "Waiting calls of a target by what holds them (GET "
            "/v1/targets/{name}/waiting): ready, pacing, paused, breaker, rate_budget, "
            "campaign_window, calling_hours, holiday, cap, scheduled_callback, recycle, receiving, "
            "other; expired_soon counts again those expiring within the hour", labels=["target", "reason"])
        clears = GaugeMetricFamily(
            "dialer_calls_waiting_clears_timestamp_seconds", "Unix time the first of a target's calls "
            "held for a reason is released (no sample when it cannot be told)", labels=["target", "reason"])
        for name in self.targets():
            w = self._waiting.get(name)
            if w is None:
                continue
            for r in w.reasons:
                g.add_metric([name, r.reason], r.count)
                if r.clears_at is not None:
                    clears.add_metric([name, r.reason], r.clears_at.timestamp())
        yield g
        yield clears
