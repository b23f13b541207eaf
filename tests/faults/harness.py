"""Shared pieces for the fault and scale tests: a Ryng sandbox on its own thread and
event loop (so tests drive real daemon processes synchronously), plain SQL, lead
files and a target config."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg

from dialer.providers.ryng.sandbox import RyngSandbox, SandboxConfig
from tests.conftest import DaemonProcess
from tests.stack import free_port, serve

SLOW = os.environ.get("DIALER_SLOW") == "1"
TERMINAL = ("answered", "no_answer", "busy", "unreachable", "failed", "rejected_by_provider", "cancelled",
            "expired", "capped")
INTAKE = ("invalid", "duplicate", "dnc")


class SandboxThread:
    """A ``RyngSandbox`` served over HTTP from a background thread."""

    def __init__(self, config: SandboxConfig) -> None:
        self.sandbox = RyngSandbox(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="ryng-sandbox", daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with serve(self.sandbox.app, self.port):
                await self.sandbox.start()
                self._ready.set()
                try:
                    await self._stop.wait()
                finally:
                    await self.sandbox.stop()

        try:
            asyncio.run(run())
        except BaseException as e:  # surfaced by __enter__ / stop()
            self._error = e
            self._ready.set()

    def __enter__(self) -> SandboxThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # thin, thread-tolerant reads (dict copies under the GIL)
    def stats(self) -> dict[str, Any]:
        return self.sandbox.stats()

    def configure(self, **changes: Any) -> None:
        self.sandbox.configure(**changes)


def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def sql_value(dsn: str, query: str, *args: Any) -> Any:
    rows = sql(dsn, query, *args)
    return rows[0][0] if rows else None


def number(i: int, base: int = 3_000_000, area: int = 415) -> str:
    """A valid US number in E.164, distinct for each ``i`` (< 1,000,000)."""
    return f"+1{area}{base + i:07d}"


def target_toml(path: Path, agents: list[str], *, chunk_size: int = 100, calls_per_agent: int = 10,
                max_retries: int = 0, mapping: str = "global") -> Path:
    names = ", ".join(f'"{a}"' for a in agents)
    path.write_text(
        'default_target = "sales"\n\n[targets.sales]\nkind = "queue"\nqueue_id = "1"\n'
        f'agent_mapping = "{mapping}"\nagents = [{names}]\ncalling_hours = "00:00-24:00"\n'
        f"calls_per_agent = {calls_per_agent}\nchunk_size = {chunk_size}\nmax_dispose_s = 0\n"
        f"max_retries = {max_retries}\nretry_interval_min = 0\ndedupe_window_h = 0\n")
    return path


def instance_env(base: dict[str, str], root: Path, name: str, **extra: str) -> tuple[dict[str, str], Path]:
    """A daemon env of its own (HTTP port, state dir, cwd) sharing the rest of ``base``."""
    cwd = root / name
    cwd.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**base, "DIALER_HTTP_LISTEN": f"127.0.0.1:{port}", "DIALER_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "DIALER_STATE_DIR": str(cwd / "var"), **extra}
    return env, cwd


def log_errors(d: DaemonProcess, allowed: tuple[str, ...] = ()) -> list[str]:
    """Log lines at error level or with a traceback, minus the ``allowed`` substrings."""
    if not d.log.exists():
        return []
    bad = []
    for line in d.log.read_text(errors="replace").splitlines():
        low = line.lower()
        if ('"level": "error"' in low or '"level":"error"' in low or '"level": "critical"' in low
                or "traceback" in low) and not any(a in line for a in allowed):
            bad.append(line)
    return bad


def call_states(dsn: str) -> dict[str, int]:
    return {r["state"]: r["n"] for r in sql(dsn, "SELECT state, count(*)::int AS n FROM calls GROUP BY state")}


def all_ended(dsn: str) -> bool:
    """No call anywhere short of a terminal or intake state."""
    return not sql_value(dsn, "SELECT count(*) FROM calls WHERE NOT (state = ANY($1::text[]))",
                         list(TERMINAL + INTAKE))


def wait_all_ended(dsn: str, timeout: float, what: str = "every call ended") -> None:
    poll(lambda: all_ended(dsn), timeout, what, detail=lambda: call_states(dsn))


def kill_all(daemons: list[DaemonProcess]) -> None:
    for d in daemons:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


def iter_chunks(seq: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def poll(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.5,
         detail: Callable[[], Any] | None = None) -> Any:
    """``wait_for`` at a gentler pace (each probe opens a DB connection), with a
    ``detail`` snapshot in the failure message."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            extra = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(every)
