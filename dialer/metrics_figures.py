"""Campaign figures as Prometheus gauges, read from the database at scrape time.

Each target's figures (``results/figures.py``: its open batches and those of the last
24 hours) cost a pass over those calls, so they are read at most every ``every_s``; the
exhaustion estimate is two index counts and is read at every refresh (a scrape waits for
them a bounded time: ``Metrics._slow_reads``). A failed read keeps
the last numbers (and logs): the figures never fail a scrape. A figure that cannot be told
(a rate with nothing to divide by, an exhaustion with no pace) has no sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import anyio
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dialer.results import figures

if TYPE_CHECKING:
    from dialer.http.context import AppContext

log = logging.getLogger(__name__)

HOURS = tuple(str(h) for h in range(24))


class FiguresGauges(Collector):
    def __init__(self, targets: Callable[[], list[str]], every_s: float = 30.0,
                 timeout_s: float = 10.0) -> None:
        self.targets = targets  # the known targets, read at each scrape
        self.every_s = every_s
        self.timeout_s = timeout_s
        self._read_at = float("-inf")
        self._figures: dict[str, figures.Figures] = {}
        self._exhaustion: dict[str, figures.Exhaustion] = {}

    async def refresh(self, ctx: AppContext) -> None:
        full = time.monotonic() - self._read_at >= self.every_s
        now = ctx.clock.now()
        try:
            with anyio.fail_after(self.timeout_s):
                async with ctx.pool.acquire() as conn:
                    for name in ctx.settings.targets:
                        if full:
                            self._figures[name] = await figures.for_target(conn, name, now)
                        self._exhaustion[name] = await figures.target_exhaustion(conn, name, now)
        except Exception as e:
            log.warning("metrics: campaign figures not read", extra={"error": type(e).__name__})
            return
        if full:
            self._read_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("target",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        scope = "the target's open batches and those of the last 24 hours"
        leads = gauge("dialer_target_leads", f"Leads of {scope}")
        attempts = gauge("dialer_target_attempts", f"Attempts (calls claimed for sending, re-dials "
                         f"included) of {scope}")
        answered = gauge("dialer_target_answered", f"Answered calls of {scope}")
        penetration = gauge("dialer_target_penetration_ratio", f"Leads attempted / leads, of {scope}")
        contact = gauge("dialer_target_contact_rate", f"Answered / attempts, of {scope}")
        per_lead = gauge("dialer_target_attempts_per_lead", f"Attempts / leads attempted, of {scope}")
        talk = gauge("dialer_target_talk_seconds_mean", f"Mean talk time of answered calls of {scope} "
                     "(those whose callback reported one)")
        hour_attempts = gauge("dialer_target_hour_attempts", f"Attempts of {scope} by hour of the "
                              "lead's local day", ("target", "hour"))
        hour_answered = gauge("dialer_target_hour_answered", f"Answered calls of {scope} by hour of "
                              "the lead's local day", ("target", "hour"))
        remaining = gauge("dialer_target_remaining_calls", "Calls of the target waiting to be sent "
                          "(pending, scheduled, retry_wait)")
        exhaustion = gauge("dialer_target_exhaustion_seconds", "Time until nothing is left to send at "
                           "the pace of the last 15 minutes (no sample when nothing was sent in them)")
        for name in self.targets():
            f = self._figures.get(name)
            if f is not None:
                leads.add_metric([name], f.leads)
                attempts.add_metric([name], f.attempts)
                answered.add_metric([name], f.answered)
                for g, v in ((penetration, f.penetration), (contact, f.contact_rate),
                             (per_lead, f.attempts_per_lead), (talk, f.talk_mean_s)):
                    if v is not None:
                        g.add_metric([name], v)
                for h in f.hours:
                    hour_attempts.add_metric([name, HOURS[h.hour]], h.attempts)
                    hour_answered.add_metric([name, HOURS[h.hour]], h.answered)
            e = self._exhaustion.get(name)
            if e is not None:
                remaining.add_metric([name], e.remaining)
                if e.seconds is not None:
                    exhaustion.add_metric([name], e.seconds)
        yield from (leads, attempts, answered, penetration, contact, per_lead, talk, hour_attempts,
                    hour_answered, remaining, exhaustion)
