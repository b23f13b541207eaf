"""The API in-process, for the route tests of this folder."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.http.app import create_app
from dialer.http.context import AppContext


@pytest.fixture
async def api(pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(AppContext(settings=settings, pool=pool, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c
