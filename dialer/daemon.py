"""The daemon's wiring: database, migrations, HTTP, inbox, dispatch, callbacks, jobs;
metrics and sd_notify; a clean drain on SIGTERM and a target reload on SIGHUP.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncpg
import uvicorn
from anyio.abc import TaskGroup
from pydantic import SecretStr

from dialer import metrics
from dialer.clock import Clock, SystemClock
from dialer.config import Settings, load_settings
from dialer.dispatch.dispatcher import Dispatcher
from dialer.errors import ConfigError, DialerError
from dialer.http import callbacks, connections
from dialer.http.auth import TokenCheck
from dialer.http.limits import HeaderLimit
from dialer.http.starting import Switch, starting_app
from dialer.intake import phones
from dialer.jobs import Job
from dialer.lifecycle.service import SpoolOnly
from dialer.lifecycle.spool import Spool
from dialer.logs import register_secret, scrub
from dialer.notify import Notifier
from dialer.runtime import Runtime, assemble
from dialer.store import retry
from dialer.store.database import Database
from dialer.store.queries import Q
from dialer.supervisor import supervise

log = logging.getLogger("dialer.daemon")

T = TypeVar("T")

# At start-up these mean "the configuration is wrong" (exit), not "the database is away"
# (wait): credentials refused, no such database, a DSN the driver cannot use.
_FATAL: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.ClientConfigurationError,
)

SANDBOX_PATH = "/_sandbox/ryng"

class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # the daemon owns SIGTERM/SIGINT: it drains intake before HTTP stops
        yield


def bind(settings: Settings) -> socket.socket:
    host, port = settings.listen_host, settings.listen_port
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
    # protocol says TCP; without it keep-alive answers wait ~40 ms for Nagle
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        msg = f"http_listen: cannot listen on {settings.http_listen}: {e.strerror or e}"
        if _passing(e):
            # a port still held by a stopping instance, an address (a VIP) not up yet, a
            # resolver not ready at boot: exit 1, which systemd restarts (exit 2 it does not)
            raise DialerError(msg) from None
        raise ConfigError(msg) from None  # no such host, a privileged port: the config's to fix
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _passing(e: OSError) -> bool:
    """An error of the moment rather than of the configuration."""
    if isinstance(e, socket.gaierror):
        return e.errno == socket.EAI_AGAIN
    return e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ENOSPC, errno.EIO, errno.EAGAIN,
                       errno.ENOMEM, errno.ENOBUFS, errno.EMFILE, errno.ENFILE)


def make_dirs(settings: Settings) -> None:
    """The state and inbox directories, or a ConfigError naming the setting: later they
    would fail as a traceback, or as an inbox loop that restarts forever."""
    for key, path in (("state_dir", settings.state_dir), ("inbox_dir", settings.inbox)):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            msg = f"{key}: cannot create {path}: {e.strerror or e}"
            raise (DialerError(msg) if _passing(e) else ConfigError(msg)) from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}: {path} is not writable by this user")
    drop_stale_uploads(settings.state_dir / "uploads" / ".incoming")


# A console upload still being written touches its file all along; one this old was cut
# off (a kill -9 mid-upload) and nothing will ever read it
STALE_UPLOAD_S = 3600


def drop_stale_uploads(incoming: Path, now: float | None = None) -> int:
    """Remove ``*.part`` files of uploads cut off long ago; returns how many."""
    cutoff = (time.time() if now is None else now) - STALE_UPLOAD_S
    dropped = 0
    try:
        parts = list(incoming.glob("*.part"))
    except OSError:
        return 0
    for part in parts:
        with contextlib.suppress(OSError):
            if part.stat().st_mtime < cutoff:
                part.unlink()
                dropped += 1
    if dropped:
        log.info("removed uploads cut off mid-body", extra={"files": dropped, "dir": str(incoming)})
    return dropped


class Daemon:
    def __init__(self, settings: Settings, clock: Clock | None = None,
                 config_path: Path | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.db = Database(settings)
        self._stop = anyio.Event()
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.config_path = config_path  # re-read on SIGHUP (None: $DIALER_CONFIG or ./dialer.toml)
        self.notify = Notifier()  # reads and unsets NOTIFY_SOCKET before any child process starts
        self.metrics = metrics.Metrics(settings.targets)
        self.runtime: Runtime | None = None  # what a reload reconfigures
        self._waiting = "not reached yet"  # why the database is not there, for /readyz meanwhile
        self._fatal: DialerError | None = None  # start-up cannot go on (raised by run)

    def api_tokens(self) -> list[str]:
        tokens = [t.get_secret_value() for t in self.settings.api_tokens]
        if not tokens and self.settings.sandbox_mode:
            token_file = self.settings.state_dir / "sandbox_api_token"
            if token_file.exists():
                tokens = [token_file.read_text().strip()]
            else:
                tokens = [secrets.token_urlsafe(24)]
                token_file.write_text(tokens[0] + "\n")
                token_file.chmod(0o600)
            # printed once, on purpose: the operator needs it to use the API
            print(f"sandbox mode: API token is {tokens[0]}", flush=True)
        return tokens

    def _sandbox(self) -> tuple[str, str, Any]:
        """The Ryng simulator, to be mounted on our own listener: (base URL, token, sandbox)."""
        from dialer.providers.ryng.sandbox import RyngSandbox, SandboxConfig

        s = self.settings
        sb = s.sandbox
        agents = sb.agents or sorted({a for t in s.targets.values() for a in t.agents}) or ["agent1"]
        token = secrets.token_hex(16)
        sandbox = RyngSandbox(SandboxConfig(
            token=token, agents=agents, time_scale=sb.time_scale, answer_rate=sb.answer_rate,
            no_answer_rate=sb.no_answer_rate, busy_rate=sb.busy_rate,
            unreachable_rate=sb.unreachable_rate, callback_rate=sb.callback_rate,
            callback_after_s=sb.callback_after_s,
            abandon_rate=sb.abandon_rate,
            # a restart carries on with the calls it had (a real Ryng dials on meanwhile)
            state_file=str(s.state_dir / "ryng_sandbox.json"),
        ))
        host = s.listen_host if s.listen_host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"  # noqa: S104
        return f"http://{host}:{s.listen_port}{SANDBOX_PATH}", token, sandbox

    async def run(self) -> None:
        s = self.settings
        make_dirs(s)
        sock = bind(s)  # both before anything is opened: a mistake here only exits (code 2)
        tokens = self.api_tokens()
        for t in tokens:
            register_secret(t)
        if s.ryng_token:
            register_secret(s.ryng_token.get_secret_value())
        secret = s.secret()
        register_secret(secret.decode())
        m = metrics.install(self.metrics)
        # listening before the database is reached: a daemon (re)started during an outage
        # keeps its pid and acknowledges callbacks from the spool (SPEC §8)
        spool = Spool(s.state_dir / "spool")
        early = SpoolOnly(spool, self.clock, {t.ref_field for t in s.targets.values()})
        edge = callbacks.routes(lambda: early, secret, count=m.callback)
        m.watch_spool(spool)
        m.db_up.set(0)  # until the database is open
        check = TokenCheck(tokens)
        front = Switch(HeaderLimit(starting_app(lambda: self._waiting, edge, m.exposition, check), fast=edge))
        server = _Server(uvicorn.Config(
            front, log_config=None, access_log=False, lifespan="off",
            timeout_keep_alive=15, timeout_graceful_shutdown=20,
            http=connections.guarded(s.http_head_timeout_s, s.http_max_connections),
        ))
        served = anyio.Event()
        sandbox: Any = None
        rt: Runtime | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals)
                tg.start_soon(self._serve_http, server, sock, served)
                waiting = anyio.CancelScope()
                tg.start_soon(self._keep_systemd_waiting, waiting)
                pool = await self._open_database()
                waiting.cancel()
                if pool is None:  # stopped while waiting for the database, or refused by it
                    server.should_exit = True
                    await served.wait()
                    tg.cancel_scope.cancel()
                else:
                    rt, sandbox = self._assemble(pool, tokens, secret, m, spool)
                    self.runtime = rt
                    try:
                        await rt.jobs.heartbeat()
                    except retry.DB_DOWN as e:  # a blip just after the migrations: its job beats again
                        log.warning("first heartbeat failed; the heartbeat job will retry",
                                    extra={"error": type(e).__name__})
                    front.app = HeaderLimit(rt.app, fast=rt.edge)  # the whole product from here on
                    await self._serve(rt, tg, server, served, sandbox)
        finally:
            await self._close(rt, sandbox, spool)
        if self._fatal is not None:  # here, not in the task group: no ExceptionGroup around it
            raise self._fatal

    def _assemble(self, pool: asyncpg.Pool, tokens: list[str], secret: bytes, m: metrics.Metrics,
                  spool: Spool) -> tuple[Runtime, Any]:
        """The runtime on an open, migrated database (and the sandbox, in sandbox mode)."""
        s = settings = self.settings
        if not s.api_tokens and tokens:
            settings = s.model_copy(update={"api_tokens": [SecretStr(t) for t in tokens]})
        sandbox: Any = None
        if s.sandbox_mode:
            ryng_url, ryng_token, sandbox = self._sandbox()
            register_secret(ryng_token)
        else:
            ryng_url = str(s.ryng_base_url)
            ryng_token = s.ryng_token.get_secret_value() if s.ryng_token else ""
            if not ryng_token:
                log.warning("DIALER_RYNG_TOKEN is not set: Ryng will refuse every request "
                            "(chunks end rejected_by_provider)", extra={"ryng": ryng_url})
        rt = assemble(settings, pool, self.clock, secret=secret, instance_id=self.instance_id,
                      ryng_url=ryng_url, ryng_token=ryng_token, metrics=m, spool=spool)
        if sandbox is not None:
            rt.app.mount(SANDBOX_PATH, sandbox.app)
        if self.db.embedded is not None:
            rt.jobs.extra.append(Job("embedded_postgres", 5, self._keep_embedded_up, singleton=False))
        return rt, sandbox

    async def _close(self, rt: Runtime | None, sandbox: Any, spool: Spool) -> None:
        with anyio.CancelScope(shield=True):
            if rt is not None:
                rt.jobs.shutdown()
                with contextlib.suppress(Exception):
                    async with rt.pool.acquire() as conn:
                        await conn.execute(Q.instance_gone, self.instance_id)
            if sandbox is not None:
                await sandbox.stop()
            if rt is not None:
                await rt.aclose()
            else:
                spool.close()
            await self.db.close(owner=True)
        log.info("stopped")
        self.notify.status("stopped")

    async def _open_database(self) -> asyncpg.Pool | None:
        """The pool, migrated; waits out a database that is not there yet (retried with
        backoff, logged, told to systemd). None when stopped meanwhile, or when start-up
        cannot go on: the database refuses our credentials or does not exist, the DSN is
        unusable, a migration fails (``_fatal``, raised by ``run`` outside its task group)."""
        self.notify.status("starting: opening the database")
        try:
            await anyio.to_thread.run_sync(self.db.resolve_dsn)  # the embedded server, if no DSN
        except Exception as e:
            self._fatal = e if isinstance(e, DialerError) else DialerError(
                f"the embedded database did not start: {type(e).__name__}: {scrub(str(e))}")
            return None
        delay, attempt = 0.5, 0
        while not self._stop.is_set():
            attempt += 1
            try:
                await self._embedded_up()
                pool = await self._cancel_on_stop(self._connect_and_migrate)
            except _FATAL as e:
                why = f"{type(e).__name__}: {scrub(str(e))}"
                self._fatal = ConfigError(f"the database refused the daemon: {why}")
                return None
            except retry.DB_DOWN as e:
                self._waiting = f"unreachable: {type(e).__name__}"
                if attempt <= 3 or attempt % 30 == 0:  # the first ones, then every few minutes
                    log.warning("database not reachable at start-up; waiting for it",
                                extra={"error": type(e).__name__, "detail": str(e)[:200],
                                       "attempt": attempt, "retry_in_s": delay})
                self.notify.status(f"starting: waiting for the database ({type(e).__name__}), "
                                   f"attempt {attempt}")
                with anyio.move_on_after(delay):
                    await self._stop.wait()
                delay = min(delay * 2, 10.0)
                continue
            except ValueError as e:  # the driver cannot use the DSN
                self._fatal = ConfigError(f"DIALER_DATABASE_URL: {type(e).__name__}: {scrub(str(e))}")
                return None
            except Exception as e:  # a migration that fails, a server that refuses it
                self._fatal = DialerError(f"start-up failed: {type(e).__name__}: {scrub(str(e))}")
                return None
            if pool is None or self._stop.is_set():
                if pool is not None:
                    await self.db.close(stop_embedded=False)
                return None
            return pool
        return None

    async def _embedded_up(self) -> None:
        """Our own server went away while we waited for it (killed, out of memory): start it
        again, as ``_keep_embedded_up`` does once the daemon runs."""
        emb = self.db.embedded
        if emb is not None and not emb.running():
            log.error("embedded PostgreSQL is not running; starting it")
            await anyio.to_thread.run_sync(emb.start)

    async def _keep_systemd_waiting(self, scope: anyio.CancelScope) -> None:
        """Until the database is open: systemd's start timeout extended and its watchdog fed,
        however long the database stays away (a connect alone may take its 60 s timeout)."""
        with scope:
            while True:
                self.notify.send("EXTEND_TIMEOUT_USEC=60000000",
                                 *(["WATCHDOG=1"] if self.notify.watchdog_s else []))
                await anyio.sleep(10)

    async def _connect_and_migrate(self) -> asyncpg.Pool:
        pool = self.db.pool or await self.db.open()
        self.notify.status("starting: applying migrations")
        applied = await self.db.migrate()
        if applied:
            log.info("applied migrations: %s", ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
        return pool

    async def _cancel_on_stop(self, fn: Callable[[], Awaitable[T]]) -> T | None:
        """``fn()``, or None if SIGTERM comes first (a connect may hang for its timeout)."""
        done: list[T] = []
        failed: list[Exception] = []
        async with anyio.create_task_group() as tg:
            async def go() -> None:
                try:
                    done.append(await fn())
                except Exception as e:  # re-raised below as itself, not in an ExceptionGroup
                    failed.append(e)
                tg.cancel_scope.cancel()

            async def stopper() -> None:
                await self._stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(go)
            tg.start_soon(stopper)
        if failed:
            raise failed[0]
        return done[0] if done else None

    @staticmethod
    async def _serve_http(server: uvicorn.Server, sock: socket.socket, served: anyio.Event) -> None:
        try:
            await server.serve([sock])
        finally:
            served.set()

    async def _serve(self, rt: Runtime, tg: TaskGroup, server: uvicorn.Server, served: anyio.Event,
                     sandbox: Any) -> None:
        """Run every loop under the supervisor until SIGTERM, then drain."""
        s = self.settings
        dispatcher, inbox, service, spool = rt.dispatcher, rt.inbox, rt.service, rt.spool
        dispatched = anyio.Event()

        async def dispatch() -> None:
            try:
                await supervise("dispatch", lambda: dispatcher.run(s.dispatch_interval_s),
                                running=lambda: dispatcher.running)
            finally:
                dispatched.set()

        if sandbox is not None:
            await sandbox.start()
        # every background loop under the supervisor: a failure is logged, counted and
        # the loop restarted; it never ends the daemon
        tg.start_soon(supervise, "inbox", inbox.run)
        tg.start_soon(dispatch)
        tg.start_soon(supervise, "spool_replayer", service.run_replayer)
        tg.start_soon(supervise, "webhooks", rt.webhooks.run)
        tg.start_soon(supervise, "providers", rt.providers.run)
        rt.jobs.start()
        with anyio.move_on_after(30):
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        log.info(
            "dialer running",
            extra={"listen": s.http_listen, "inbox": str(s.inbox),
                   "sandbox": s.sandbox_mode, "instance": self.instance_id,
                   "phone_numbers": phones.IMPLEMENTATION},
        )
        if phones.IMPLEMENTATION != "rphonenumbers":
            log.warning("phone numbers are validated by phonenumbers, about 10x slower: "
                        "rphonenumbers is missing or built from other metadata "
                        "(install the versions pyproject.toml pins)")
        _freeze_startup_objects()
        self.notify.ready(f"running: listening on {s.http_listen}")
        tg.start_soon(supervise, "watchdog",
                      lambda: self.notify.watchdog(lambda: _status(dispatcher, spool)))
        await self._stop.wait()
        log.info("draining")
        self.notify.stopping("draining: intake stopped, finishing in-flight work")
        rt.ctx.draining = True
        inbox.accepting = False
        dispatcher.running = False
        rt.jobs.shutdown()
        with anyio.move_on_after(s.drain_s):
            async with anyio.create_task_group() as drain:
                # a file mid-ingest resumes at its last committed chunk, but a short one may
                # finish meanwhile; past the deadline it is cancelled (its worker process
                # ended whatever it is doing), and it never holds up the steps below
                drain.start_soon(_until, lambda: inbox.current is None)
                dispatcher.wake()  # in-flight provider requests finish and settle
                await dispatched.wait()
                if spool.depth:
                    with contextlib.suppress(Exception):
                        await service.replay_once()
                server.should_exit = True
                await served.wait()
        tg.cancel_scope.cancel()

    async def _keep_embedded_up(self) -> None:
        """Our own database server went away (killed, stopped by hand): bring it back."""
        emb = self.db.embedded
        if emb is not None and not emb.running():
            log.error("embedded PostgreSQL is not running; restarting it")
            await anyio.to_thread.run_sync(emb.start)

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for sig in signals:
                if sig == signal.SIGHUP:
                    self.reload()
                elif self._stop.is_set():
                    log.info("already draining")
                else:
                    self._stop.set()

    def reload(self) -> bool:
        """SIGHUP: re-read the configuration and swap in its targets (the rest needs a restart).

        An invalid file is logged and the running configuration kept.
        """
        if self.runtime is not None:  # not while starting: READY=1 would end it (see _after_reload)
            self.notify.reloading()
        try:
            new = load_settings(self.config_path)
        except Exception as e:
            log.error("config reload failed; keeping the running configuration", extra={"error": str(e)})
            self.metrics.config_reload(False)
            self._after_reload("config reload failed, kept the running configuration")
            return False
        untouched = {"targets", "default_target"}
        needs_restart = sorted(k for k in Settings.model_fields
                               if k not in untouched and getattr(new, k) != getattr(self.settings, k))
        if needs_restart:
            log.warning("config reload: these keys need a restart to change",
                        extra={"keys": needs_restart})
        if self.runtime is not None:
            self.runtime.reconfigure(new)
        else:  # still waiting for the database: the runtime is built from these settings
            self.settings = self.settings.model_copy(
                update={"targets": new.targets, "default_target": new.default_target})
        self.metrics.set_targets(new.targets)
        self.metrics.config_reload(True)
        log.info("config reloaded", extra={"targets": sorted(new.targets)})
        self._after_reload("configuration reloaded")
        return True

    def _after_reload(self, what: str) -> None:
        """READY=1 ends a reload for systemd, but only once the daemon runs: before that it
        would mark the unit started while it still waits for its database."""
        if self.runtime is not None:
            self.notify.ready(f"running: {what}")
        else:
            self.notify.status(f"starting: {what}; waiting for the database")

    def stop(self) -> None:
        self._stop.set()


async def _until(done: Callable[[], bool]) -> None:
    while not done():  # noqa: ASYNC110
        await anyio.sleep(0.05)


def _status(dispatcher: Dispatcher, spool: Spool) -> str:
    """The STATUS= line systemctl shows: calls in flight against each target's limit."""
    paces = " ".join(f"{p.target} {p.in_flight}/{p.limit}" for p in dispatcher.paces.values())
    return f"running: in flight {paces or 'none'}; spool {spool.depth}"


def _freeze_startup_objects() -> None:
    """Keep the start-up heap (modules, phone-number metadata, settings) out of the
    garbage collector's full passes: scanning it stalled the event loop for tens of ms."""
    import gc

    from dialer.intake import phones

    phones.normalise("+14155550100", "US")  # load the metadata the hot paths use
    phones.time_zones("+14155550100")
    gc.collect()
    gc.freeze()
