"""An in-process dialer against a real Ryng sandbox, both on loopback ports.

The pieces the daemon wires together, driven step by step from tests: a real
PostgreSQL, the sandbox serving the Ryng API over HTTP, our callback endpoints over
HTTP, the dispatcher and the callback service.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from starlette.applications import Starlette

from dialer.clock import Clock, SystemClock
from dialer.config import Settings
from dialer.dispatch.dispatcher import Dispatcher
from dialer.http import callbacks
from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.intake.submit import Submission, submit
from dialer.lifecycle.dispositions import Dispositions
from dialer.lifecycle.service import CallbackService
from dialer.lifecycle.spool import Spool
from dialer.providers.ryng.client import RyngClient
from dialer.providers.ryng.sandbox import RyngSandbox, SandboxConfig
from dialer.results.files import Completion
from dialer.results.webhooks import WebhookSender
from tests.conftest import free_port
from tests.fakes.server import serve


class Stack:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, sandbox: RyngSandbox, ryng_url: str,
                 clock: Clock, instance: str = "test-1") -> None:
        self.pool = pool
        self.settings = settings
        self.sandbox = sandbox
        self.clock = clock
        self.secret = settings.secret()
        self.client = RyngClient(ryng_url, sandbox.config.token, timeout=5)
        self.dispatcher = Dispatcher(pool, settings, clock, self.client, self.secret, instance)
        self.spool = Spool(Path(settings.state_dir) / "spool")
        self.completion = Completion(pool, clock)
        self.applied: list[Any] = []

        def on_applied(r: Any) -> None:
            self.applied.append(r)
            if r.terminal:
                self.dispatcher.wake()
                self.completion.touch(r.batch_id)

        self.service = CallbackService(
            pool, clock, Dispositions(settings.dispositions, settings.compliance.dnc_dispositions),
            self.spool, on_applied=on_applied, settings=settings,
        )
        self.webhooks = WebhookSender(pool, self.secret, clock, allow_private=settings.webhooks_to_private)

    def another_dispatcher(self, instance: str) -> Dispatcher:
        return Dispatcher(self.pool, self.settings, self.clock, self.client, self.secret, instance)

    async def post(self, numbers: list[str], target: str | None = None, webhook: str | None = None,
                   **lead: Any) -> str:
        rows = [{"number": n, **lead} for n in numbers]
        _, out = await submit(self.pool, self.settings, self.clock,
                              Submission(target=target or self.settings.default_target, rows=rows,
                                         result_webhook_url=webhook))
        return str(out["batch_id"])

    async def states(self) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT state, count(*)::int AS n FROM calls "
                                    "WHERE state NOT IN ('invalid', 'duplicate', 'dnc') GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    async def close(self) -> None:
        await self.client.close()
        await self.webhooks.close()
        self.spool.close()


@contextlib.asynccontextmanager
async def running_stack(pool: asyncpg.Pool, make_settings: Any, *, clock: Clock | None = None,
                        sandbox_config: SandboxConfig | None = None,
                        **overrides: Any) -> AsyncIterator[Stack]:
    app_port, ryng_port = free_port(), free_port()
    settings = make_settings(public_url=f"http://127.0.0.1:{app_port}", **overrides)
    sandbox = RyngSandbox(sandbox_config or SandboxConfig(time_scale=0.001, seed=7, ring_s=(1, 2),
                                                          talk_s=(5, 10)))
    stack = Stack(pool, settings, sandbox, f"http://127.0.0.1:{ryng_port}", clock or SystemClock())
    app = create_app(AppContext(settings=settings, pool=pool, clock=stack.clock))
    app.router.routes.extend(callbacks.routes(lambda: stack.service, stack.secret))
    async with serve(app, app_port), serve(sandbox.app, ryng_port):
        await sandbox.start()
        try:
            yield stack
        finally:
            stack.dispatcher.running = False
            await sandbox.stop()
            await stack.close()


__all__ = ["SandboxConfig", "Stack", "Starlette", "free_port", "running_stack", "serve"]
