"""What request handlers need, hung on ``app.state`` once at start-up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request

from dialer.clock import Clock
from dialer.config import Settings


@dataclass
class AppContext:
    settings: Settings
    pool: asyncpg.Pool
    clock: Clock
    draining: bool = False
    migrations_current: bool = True
    dispatcher: Any = None  # dialer.dispatch.dispatcher.Dispatcher, when dispatching
    wake_dispatch: Callable[[], None] = lambda: None
    extra: dict[str, object] = field(default_factory=dict)


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]
