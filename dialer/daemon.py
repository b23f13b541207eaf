"""The daemon's wiring: database, migrations, HTTP, inbox, dispatch, callbacks, jobs;
metrics and sd_notify; a clean drain on SIGTERM and a target reload on SIGHUP.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from pydantic import SecretStr

from dialer import metrics
from dialer.clock import Clock, SystemClock
from dialer.config import Settings, load_settings
from dialer.dispatch import compliance
from dialer.dispatch.breaker import Breaker
from dialer.dispatch.dispatcher import Dispatcher
from dialer.dispatch.pacing import StaticAgents
from dialer.http import callbacks, hooks
from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.http.limits import HeaderLimit
from dialer.intake.files import FileIngestor
from dialer.intake.inbox import Inbox
from dialer.jobs import Job, Jobs
from dialer.lifecycle import observe
from dialer.lifecycle.dispositions import Dispositions
from dialer.lifecycle.events import Applied
from dialer.lifecycle.service import CallbackService
from dialer.lifecycle.spool import Spool
from dialer.logs import register_secret
from dialer.notify import Notifier
from dialer.providers.agents import Providers
from dialer.providers.ryng.client import RyngClient
from dialer.providers.stringee import StringeeRouter
from dialer.results.files import Completion
from dialer.results.webhooks import WebhookSender
from dialer.store.database import Database
from dialer.store.queries import Q
from dialer.supervisor import supervise

log = logging.getLogger("dialer.daemon")

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
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


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
        self._configured: list[Any] = []  # components whose .settings a reload swaps

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

    def _sandbox(self, app: Any) -> tuple[str, str, Any]:
        """Mount the Ryng simulator on our own listener; returns (base URL, token, sandbox)."""
        from dialer.providers.ryng.sandbox import RyngSandbox, SandboxConfig

        s = self.settings
        sb = s.sandbox
        agents = sb.agents or sorted({a for t in s.targets.values() for a in t.agents}) or ["agent1"]
        token = secrets.token_hex(16)
        sandbox = RyngSandbox(SandboxConfig(
            token=token, agents=agents, time_scale=sb.time_scale, answer_rate=sb.answer_rate,
            no_answer_rate=sb.no_answer_rate, busy_rate=sb.busy_rate,
            unreachable_rate=sb.unreachable_rate,
        ))
        app.mount(SANDBOX_PATH, sandbox.app)
        host = s.listen_host if s.listen_host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"  # noqa: S104
        return f"http://{host}:{s.listen_port}{SANDBOX_PATH}", token, sandbox

    async def run(self) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        tokens = self.api_tokens()
        for t in tokens:
            register_secret(t)
        if s.ryng_token:
            register_secret(s.ryng_token.get_secret_value())
        secret = s.secret()
        register_secret(secret.decode())
        self.notify.status("starting: opening the database")
        pool = await self.db.open()
        sandbox: Any = None
        client: RyngClient | None = None
        jobs: Jobs | None = None
        webhooks: WebhookSender | None = None
        providers: Providers | None = None
        unsubscribe: Callable[[], None] | None = None
        try:
            self.notify.status("starting: applying migrations")
            applied = await self.db.migrate()
            if applied:
                log.info("applied migrations: %s",
                         ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
            settings = s
            if not s.api_tokens and tokens:
                settings = s.model_copy(update={"api_tokens": [SecretStr(t) for t in tokens]})
            ctx = AppContext(settings=settings, pool=pool, clock=self.clock)
            ctx.extra["metrics"] = metrics.install(self.metrics)
            self.metrics.watch_pool(pool)
            app = create_app(ctx)
            if s.sandbox_mode:
                ryng_url, ryng_token, sandbox = self._sandbox(app)
                register_secret(ryng_token)
            else:
                ryng_url = str(s.ryng_base_url)
                ryng_token = s.ryng_token.get_secret_value() if s.ryng_token else ""
            client = RyngClient(ryng_url, ryng_token, timeout=s.ryng_timeout_s)
            providers = Providers(settings, self.clock, on_request=self.metrics.provider_request)
            dispatcher = Dispatcher(pool, settings, self.clock, client, secret, self.instance_id,
                                    on_send=self.metrics.on_send, on_settled=self.metrics.chunk_settled,
                                    agents=providers.selector)
            dispatcher.agent_source_name = providers.selector.source_name
            self.metrics.watch_dispatcher(dispatcher)
            ctx.dispatcher = dispatcher
            spool = Spool(s.state_dir / "spool")
            self.metrics.watch_spool(spool)
            completion = Completion(pool, self.clock)
            unsubscribe = observe.subscribe(completion.on_ended)

            def ingested() -> None:
                dispatcher.wake()
                completion.sweep_soon()  # a batch with nothing to dial is done at once

            ctx.wake_dispatch = ingested

            def on_applied(r: Applied) -> None:
                if r.terminal:
                    dispatcher.wake()
                    completion.touch(r.batch_id)

            service = CallbackService(
                pool, self.clock,
                Dispositions(s.dispositions, s.compliance.dnc_dispositions), spool,
                on_applied=on_applied, settings=settings, on_event=self.metrics.callback_event,
            )
            webhooks = WebhookSender(pool, secret, self.clock, on_result=self.metrics.webhook)
            # first in the route table: the hot path should not walk the API's routes
            app.router.routes[0:0] = callbacks.routes(lambda: service, secret, count=self.metrics.callback)
            app.router.routes.extend(hooks.routes(secret, providers.ringme, StringeeRouter(pool, settings)))
            sock = bind(s)
            config = uvicorn.Config(
                HeaderLimit(app), log_config=None, access_log=False, lifespan="off",
                timeout_keep_alive=15, timeout_graceful_shutdown=20,
                h11_max_incomplete_event_size=64 * 1024,
            )
            server = _Server(config)
            ingestor = FileIngestor(pool, settings, self.clock)
            inbox = Inbox(settings, ingestor, self.clock, on_ingested=ingested)
            jobs = Jobs(pool, settings, self.clock, self.instance_id)
            jobs.extra.append(Job("completion", 2, completion.check, singleton=False))
            if self.db.embedded is not None:
                jobs.extra.append(Job("embedded_postgres", 5, self._keep_embedded_up, singleton=False))
            await jobs.heartbeat()
            self._configured = [ctx, dispatcher, service, inbox, ingestor, jobs, providers]
            served = anyio.Event()
            dispatched = anyio.Event()

            async def dispatch() -> None:
                try:
                    await supervise("dispatch", lambda: dispatcher.run(s.dispatch_interval_s),
                                    running=lambda: dispatcher.running)
                finally:
                    dispatched.set()

            async def serve() -> None:
                try:
                    await server.serve([sock])
                finally:
                    served.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals)
                tg.start_soon(serve)
                if sandbox is not None:
                    await sandbox.start()
                # every background loop under the supervisor: a failure is logged, counted
                # and the loop restarted; it never ends the daemon
                tg.start_soon(supervise, "inbox", inbox.run)
                tg.start_soon(dispatch)
                tg.start_soon(supervise, "spool_replayer", service.run_replayer)
                tg.start_soon(supervise, "webhooks", webhooks.run)
                tg.start_soon(supervise, "providers", providers.run)
                jobs.start()
                with anyio.move_on_after(30):
                    while not server.started:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                log.info(
                    "dialer running",
                    extra={"listen": s.http_listen, "inbox": str(s.inbox),
                           "sandbox": s.sandbox_mode, "instance": self.instance_id},
                )
                _freeze_startup_objects()
                self.notify.ready(f"running: listening on {s.http_listen}")
                tg.start_soon(supervise, "watchdog",
                              lambda: self.notify.watchdog(lambda: _status(dispatcher, spool)))
                await self._stop.wait()
                log.info("draining")
                self.notify.stopping("draining: intake stopped, finishing in-flight work")
                ctx.draining = True
                inbox.accepting = False
                dispatcher.running = False
                jobs.shutdown()
                with anyio.move_on_after(25):
                    # a file mid-ingest is resumable, but let a short one finish
                    while inbox.current is not None:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                    dispatcher.wake()  # in-flight provider requests finish and settle
                    await dispatched.wait()
                    if spool.depth:
                        with contextlib.suppress(Exception):
                            await service.replay_once()
                    server.should_exit = True
                    await served.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if unsubscribe is not None:
                    unsubscribe()
                if jobs is not None:
                    jobs.shutdown()
                    with contextlib.suppress(Exception):
                        async with pool.acquire() as conn:
                            await conn.execute(Q.instance_gone, self.instance_id)
                if sandbox is not None:
                    await sandbox.stop()
                if client is not None:
                    await client.close()
                if webhooks is not None:
                    await webhooks.close()
                if providers is not None:
                    await providers.aclose()
                await self.db.close(owner=True)
            log.info("stopped")
            self.notify.status("stopped")

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
        self.notify.reloading()
        try:
            new = load_settings(self.config_path)
        except Exception as e:
            log.error("config reload failed; keeping the running configuration", extra={"error": str(e)})
            self.metrics.config_reload(False)
            self.notify.ready("running: config reload failed, kept the running configuration")
            return False
        untouched = {"targets", "default_target"}
        needs_restart = sorted(k for k in Settings.model_fields
                               if k not in untouched and getattr(new, k) != getattr(self.settings, k))
        if needs_restart:
            log.warning("config reload: these keys need a restart to change",
                        extra={"keys": needs_restart})
        update = {"targets": new.targets, "default_target": new.default_target}
        for obj in self._configured:
            if getattr(obj, "settings", None) is not None:
                obj.settings = obj.settings.model_copy(update=update)
            if isinstance(obj, Dispatcher):
                # rules hold each target's holidays (global ones included): rebuilt so a
                # target added now obeys them too
                obj.rules = compliance.Rules(obj.settings)
                for name in new.targets:
                    obj.breakers.setdefault(name, Breaker(self.clock))
                if isinstance(obj.agents, StaticAgents):
                    obj.agents.targets = new.targets
            if isinstance(obj, Inbox):
                obj.ensure_dirs()
            if isinstance(obj, AppContext):
                obj.wake_dispatch()
        self.metrics.set_targets(new.targets)
        self.metrics.config_reload(True)
        log.info("config reloaded", extra={"targets": sorted(new.targets)})
        self.notify.ready("running: configuration reloaded")
        return True

    def stop(self) -> None:
        self._stop.set()


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
