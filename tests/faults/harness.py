"""Shared pieces for the fault and scale tests: a Ryng sandbox on its own thread and
event loop (so tests drive real daemon processes synchronously), plain SQL, lead
files and a target config."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from dialer.providers.ryng.sandbox import RyngSandbox, SandboxConfig
from dialer.store.embedded import EmbeddedPostgres
from tests.conftest import DaemonProcess
from tests.stack import free_port, serve

SLOW = os.environ.get("DIALER_SLOW") == "1"
TERMINAL = ("answered", "no_answer", "busy", "unreachable", "failed", "rejected_by_provider", "cancelled",
            "expired", "capped", "abandoned")
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


# What a traceback may end in while a test stops PostgreSQL on purpose: the database
# being away, nothing else (an ExceptionGroup around one of these is still a crash).
DB_DOWN_ERRORS = ("ConnectionRefusedError", "CannotConnectNowError", "ConnectionDoesNotExistError",
                  "AdminShutdownError", "InterfaceError", "PostgresConnectionError", "ConnectionResetError",
                  "TooManyConnectionsError", "FileNotFoundError: [Errno 2] No such file or directory",
                  "OSError: Multiple exceptions", "OSError: [Errno 111]", "TimeoutError")


def _expected_traceback(line: str, allowed_exc: tuple[str, ...]) -> bool:
    try:
        exc = str(json.loads(line).get("exc") or "")
    except (ValueError, AttributeError):
        return False
    lines = [x for x in exc.strip().splitlines() if x.strip()]
    if not lines or "ExceptionGroup" in exc:
        return False
    return any(a in lines[-1] for a in allowed_exc)


def log_errors(d: DaemonProcess, allowed: tuple[str, ...] = (), allowed_exc: tuple[str, ...] = ()) -> list[str]:
    """Log lines at error level or with a traceback, minus the ``allowed`` substrings and
    the tracebacks whose final exception names one of ``allowed_exc``."""
    if not d.log.exists():
        return []
    bad = []
    for line in d.log.read_text(errors="replace").splitlines():
        low = line.lower()
        if ('"level": "error"' in low or '"level":"error"' in low or '"level": "critical"' in low
                or '"level":"critical"' in low or "traceback" in low) and not any(a in line for a in allowed):
            if allowed_exc and _expected_traceback(line, allowed_exc) and '"level":"critical"' not in low:
                continue
            bad.append(line)
    return bad


def short(lines: list[str], n: int = 5, width: int = 600) -> str:
    """A few log lines, cut to fit an assertion message."""
    return "\n".join(x[:width] for x in lines[:n]) + (f"\n... {len(lines) - n} more" if len(lines) > n else "")


class Watched:
    """A daemon that must keep its pid: ``check()`` raises as soon as it has exited on its own."""

    def __init__(self, d: DaemonProcess) -> None:
        assert d.proc is not None
        self.d = d
        self.pid = d.proc.pid

    def check(self, when: str = "") -> None:
        proc = self.d.proc
        assert proc is not None and proc.pid == self.pid, "the daemon was replaced"
        rc = proc.poll()
        if rc is not None:
            raise AssertionError(f"the daemon (pid {self.pid}) exited on its own with {rc} {when}\n"
                                 + crash_summary(self.d.log))


def crash_summary(log: Path, limit: int = 14) -> str:
    """The last traceback in a log, cut to our own frames and the exception lines."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    start = max((i for i, x in enumerate(lines) if "Traceback (most recent call last)" in x
                 or "Exception Group Traceback" in x), default=max(0, len(lines) - limit))
    block = lines[start:]
    keep = [x for x in block if "/dialer/" in x or "Error" in x or "Exception" in x]
    return "\n".join((keep or block)[-limit:])


def status(url: str, timeout: float = 3) -> int | None:
    """The HTTP status of a GET, or None when nothing answered."""
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return None


def metric(d: DaemonProcess, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample from the daemon's ``/metrics`` (the sum over label sets matching ``labels``)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(d.url + "/metrics", timeout=10)
    if r.status_code != 200:
        return None
    total: float | None = None
    for fam in text_string_to_metric_families(r.text):
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total = (total or 0.0) + sample.value
    return total


@contextlib.contextmanager
def dedicated_postgres(root: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL server of the test's own, to stop and start under a live daemon
    (the daemon migrates it at start-up)."""
    pg = EmbeddedPostgres(root / "pg", fsync=False)
    dsn = pg.start()
    try:
        yield pg, dsn
    finally:
        pg.destroy()


def targets_toml(path: Path, agents: list[str], targets: dict[str, dict[str, Any]],
                 default: str = "sales") -> Path:
    """Several queue targets sharing one agent list; each dict overrides the defaults below."""
    names = ", ".join(f'"{a}"' for a in agents)
    out = [f'default_target = "{default}"\n']
    for name, over in targets.items():
        t: dict[str, Any] = {"kind": "queue", "queue_id": "1", "agent_mapping": "global",
                             "calling_hours": "00:00-24:00", "calls_per_agent": 5, "chunk_size": 100,
                             "max_dispose_s": 0, "max_retries": 0, "retry_interval_min": 0,
                             "dedupe_window_h": 0, **over}
        out.append(f"[targets.{name}]")
        out.append(f"agents = [{names}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in t.items()]
        out.append("")
    path.write_text("\n".join(out))
    return path


def sandbox_env(base: dict[str, str], sb: SandboxThread, config: Path, **extra: str) -> dict[str, str]:
    """A daemon env pointed at ``sb`` with the targets of ``config``."""
    return {**base, "DIALER_RYNG_BASE_URL": sb.url, "DIALER_RYNG_TOKEN": sb.sandbox.config.token,
            "DIALER_CONFIG": str(config), **extra}


def drop_file(inbox: Path, name: str, text: str) -> Path:
    """Rename a file into the inbox (taken at once, no settle wait)."""
    inbox.mkdir(parents=True, exist_ok=True)
    dest = inbox / name
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_text(text)
    tmp.rename(dest)
    return dest


def report_for(inbox: Path, name: str, timeout: float = 30) -> tuple[Path, dict[str, Any]]:
    """Wait for ``<name>.report.json`` under ``inbox/processed``; returns its path and content."""
    def find() -> Path | None:
        return next(iter((inbox / "processed").rglob(f"{name}.report.json")), None)

    path = poll(find, timeout, f"the report of {name}", every=0.1)
    return path, json.loads(path.read_text())


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
