"""The running parts of one dialer instance, wired in one place.

``assemble`` builds them — HTTP app, Ryng client, providers, dispatcher, callbacks and
spool, completion, webhooks, inbox, jobs — for the daemon (which adds the listener, the
signals and the supervisor) and for the tests (which drive the same parts step by step).
A SIGHUP reload goes through ``Runtime.reconfigure``: one typed holder, no guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from fastapi import FastAPI
from starlette.routing import Route

from dialer import metrics as metrics_mod
from dialer.clock import Clock
from dialer.config import Settings
from dialer.dispatch import compliance
from dialer.dispatch.breaker import Breaker
from dialer.dispatch.dispatcher import Dispatcher
from dialer.dispatch.pacing import StaticAgents
from dialer.http import callbacks, hooks
from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.intake.files import FileIngestor
from dialer.intake.inbox import Inbox
from dialer.jobs import Job, Jobs
from dialer.lifecycle import observe
from dialer.lifecycle.dispositions import Dispositions
from dialer.lifecycle.events import Applied
from dialer.lifecycle.service import CallbackService
from dialer.lifecycle.spool import Spool
from dialer.providers.agents import Providers
from dialer.providers.ryng.client import RyngClient
from dialer.providers.stringee import StringeeRouter
from dialer.results.files import Completion
from dialer.results.webhooks import WebhookSender


@dataclass
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    clock: Clock
    ctx: AppContext
    app: FastAPI
    client: RyngClient
    providers: Providers
    dispatcher: Dispatcher
    spool: Spool
    completion: Completion
    service: CallbackService
    webhooks: WebhookSender
    ingestor: FileIngestor
    inbox: Inbox
    jobs: Jobs
    applied: list[Applied] = field(default_factory=list)  # kept only when asked (tests)
    _closers: list[Callable[[], None]] = field(default_factory=list)
    # the provider callbacks' routes, also in the app: served ahead of it (http/limits.py)
    edge: list[Route] = field(default_factory=list)

    def ingested(self) -> None:
        """A batch was ingested: dispatch it, and sweep for batches with nothing to dial."""
        self.dispatcher.wake()
        self.completion.sweep_soon()

    def reconfigure(self, new: Settings) -> None:
        """Swap in re-read targets (SIGHUP); every other key needs a restart."""
        update = {"targets": new.targets, "default_target": new.default_target}
        self.settings = self.settings.model_copy(update=update)
        for part in (self.ctx, self.dispatcher, self.service, self.inbox, self.ingestor, self.jobs,
                     self.providers):
            part.settings = part.settings.model_copy(update=update)  # type: ignore[union-attr]
        d = self.dispatcher
        # rules hold each target's holidays (global ones included): rebuilt so a target
        # added now obeys them too
        d.rules = compliance.Rules(d.settings)
        for name in new.targets:
            d.breakers.setdefault(name, Breaker(self.clock))
        if isinstance(d.agents, StaticAgents):
            d.agents.targets = new.targets
        self.inbox.ensure_dirs()
        self.ctx.wake_dispatch()

    async def aclose(self) -> None:
        for close in self._closers:
            close()
        self.jobs.shutdown()
        await self.client.close()
        await self.webhooks.close()
        await self.providers.aclose()
        self.spool.close()


def assemble(
    settings: Settings,
    pool: asyncpg.Pool,
    clock: Clock,
    *,
    secret: bytes,
    instance_id: str,
    ryng_url: str,
    ryng_token: str,
    metrics: metrics_mod.Metrics | None = None,
    keep_applied: bool = False,
    spool: Spool | None = None,
) -> Runtime:
    """Every part of an instance, wired; nothing started. ``metrics``: the daemon's (the
    tests leave it out and get a private registry per app); ``spool``: the daemon's, which
    took callbacks while it waited for the database."""
    s = settings
    ctx = AppContext(settings=s, pool=pool, clock=clock)
    if metrics is not None:
        ctx.extra["metrics"] = metrics
        metrics.watch_pool(pool)
    app = create_app(ctx)
    client = RyngClient(ryng_url, ryng_token, timeout=s.ryng_timeout_s)
    providers = Providers(s, clock, pool, instance_id=instance_id,
                          on_request=metrics.provider_request if metrics else None)
    dispatcher = Dispatcher(pool, s, clock, client, secret, instance_id,
                            on_send=metrics.on_send if metrics else None,
                            on_settled=metrics.chunk_settled if metrics else None,
                            agents=providers.selector)
    ctx.dispatcher = dispatcher
    spool = spool or Spool(s.state_dir / "spool")  # the daemon's: open since start-up
    completion = Completion(pool, clock)
    applied: list[Applied] = []

    def on_applied(r: Applied) -> None:
        if keep_applied:
            applied.append(r)
        if r.terminal:
            dispatcher.wake()
            completion.touch(r.batch_id)

    service = CallbackService(
        pool, clock, Dispositions(s.dispositions, s.compliance.dnc_dispositions), spool,
        on_applied=on_applied, settings=s, on_event=metrics.callback_event if metrics else None,
    )
    webhooks = WebhookSender(pool, secret, clock, on_result=metrics.webhook if metrics else None,
                             allow_private=s.webhooks_to_private)
    # first in the route table: the hot path should not walk the API's routes
    edge = callbacks.routes(lambda: service, secret, count=metrics.callback if metrics else None)
    app.router.routes[0:0] = edge
    app.router.routes.extend(hooks.routes(secret, providers.ringme, StringeeRouter(pool, s, clock)))
    ingestor = FileIngestor(pool, s, clock)
    inbox = Inbox(s, ingestor, clock)
    jobs = Jobs(pool, s, clock, instance_id)
    jobs.extra.append(Job("completion", 2, completion.check, singleton=False))
    rt = Runtime(s, pool, clock, ctx, app, client, providers, dispatcher, spool, completion, service,
                 webhooks, ingestor, inbox, jobs, applied, edge=edge)
    rt._closers.append(observe.subscribe(completion.on_ended))
    ctx.wake_dispatch = rt.ingested
    inbox.on_ingested = rt.ingested
    if metrics is not None:
        metrics.watch_dispatcher(dispatcher)
        metrics.watch_spool(spool)
    return rt
