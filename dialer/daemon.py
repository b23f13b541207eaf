"""The daemon's wiring: database, migrations, HTTP, inbox; and a clean drain on SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import socket
from collections.abc import Generator

import anyio
import uvicorn
from pydantic import SecretStr

from dialer.clock import Clock, SystemClock
from dialer.config import Settings
from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.intake.files import FileIngestor
from dialer.intake.inbox import Inbox
from dialer.logs import register_secret
from dialer.store.database import Database

log = logging.getLogger("dialer.daemon")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # the daemon owns SIGTERM/SIGINT: it drains intake before HTTP stops
        yield


def bind(settings: Settings) -> socket.socket:
    host, port = settings.listen_host, settings.listen_port
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class Daemon:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.db = Database(settings)
        self._stop = anyio.Event()

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
        pool = await self.db.open()
        try:
            applied = await self.db.migrate()
            if applied:
                log.info("applied migrations: %s", ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
            settings = s
            if not s.api_tokens and tokens:
                settings = s.model_copy(update={"api_tokens": [SecretStr(t) for t in tokens]})
            ctx = AppContext(settings=settings, pool=pool, clock=self.clock)
            app = create_app(ctx)
            sock = bind(s)
            config = uvicorn.Config(
                app, log_config=None, access_log=False, lifespan="off",
                timeout_keep_alive=15, timeout_graceful_shutdown=20,
                limit_max_requests=None, h11_max_incomplete_event_size=64 * 1024,
            )
            server = _Server(config)
            ingestor = FileIngestor(pool, settings, self.clock)
            inbox = Inbox(settings, ingestor, self.clock)
            served = anyio.Event()

            async def serve() -> None:
                try:
                    await server.serve([sock])
                finally:
                    served.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals)
                tg.start_soon(serve)
                tg.start_soon(inbox.run)
                log.info(
                    "dialer running",
                    extra={"listen": s.http_listen, "inbox": str(s.inbox),
                           "sandbox": s.sandbox_mode},
                )
                await self._stop.wait()
                log.info("draining")
                ctx.draining = True
                inbox.accepting = False
                server.should_exit = True
                with anyio.move_on_after(25):
                    # a file mid-ingest is resumable, but let a short one finish
                    while inbox.current is not None:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                    await served.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.db.close()
            log.info("stopped")

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                self._stop.set()
                return

    def stop(self) -> None:
        self._stop.set()
