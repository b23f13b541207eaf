"""An in-process dialer against a real Ryng sandbox, both on loopback ports.

The pieces the daemon wires together, driven step by step from tests: a real
PostgreSQL, the sandbox serving the Ryng API over HTTP, our callback endpoints over
HTTP, the dispatcher and the callback service.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from starlette.applications import Starlette

from dialer.clock import Clock, SystemClock
from dialer.config import Settings
from dialer.dispatch.dispatcher import Dispatcher
from dialer.intake.submit import Submission, submit
from dialer.providers.ryng.sandbox import RyngSandbox, SandboxConfig
from dialer.runtime import assemble
from tests.conftest import free_port
from tests.fakes.server import serve


class Stack:
    """The daemon's parts (``dialer.runtime.assemble``) without its loops: tests drive them."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, sandbox: RyngSandbox, ryng_url: str,
                 clock: Clock, instance: str = "test-1") -> None:
        self.pool = pool
        self.settings = settings
        self.sandbox = sandbox
        self.clock = clock
        self.secret = settings.secret()
        self.rt = assemble(settings, pool, clock, secret=self.secret, instance_id=instance,
                           ryng_url=ryng_url, ryng_token=sandbox.config.token, keep_applied=True)
        self.client = self.rt.client
        self.dispatcher = self.rt.dispatcher
        self.spool = self.rt.spool
        self.completion = self.rt.completion
        self.service = self.rt.service
        self.webhooks = self.rt.webhooks
        self.applied = self.rt.applied

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
        await self.rt.aclose()


@contextlib.asynccontextmanager
async def running_stack(pool: asyncpg.Pool, make_settings: Any, *, clock: Clock | None = None,
                        sandbox_config: SandboxConfig | None = None,
                        **overrides: Any) -> AsyncIterator[Stack]:
    app_port, ryng_port = free_port(), free_port()
    settings = make_settings(public_url=f"http://127.0.0.1:{app_port}", **{"ryng_timeout_s": 5, **overrides})
    sandbox = RyngSandbox(sandbox_config or SandboxConfig(time_scale=0.001, seed=7, ring_s=(1, 2),
                                                          talk_s=(5, 10)))
    stack = Stack(pool, settings, sandbox, f"http://127.0.0.1:{ryng_port}", clock or SystemClock())
    async with serve(stack.rt.app, app_port), serve(sandbox.app, ryng_port):
        await sandbox.start()
        try:
            yield stack
        finally:
            stack.dispatcher.running = False
            await sandbox.stop()
            await stack.close()


__all__ = ["SandboxConfig", "Stack", "Starlette", "free_port", "running_stack", "serve"]
