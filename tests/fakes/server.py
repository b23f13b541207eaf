"""Serve an ASGI app with uvicorn on a loopback port, for as long as a block runs.

The one server helper of the tests: the fakes, the Ryng sandbox and our own app in
``tests/stack.py`` all run under it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the test runner / daemon owns the signals


@contextlib.asynccontextmanager
async def serve(app: Any, port: int = 0, *, host: str = "127.0.0.1",
                start_timeout: float = 10.0) -> AsyncIterator[str]:
    """``async with serve(app) as base_url``: the app answers on a real socket meanwhile.

    ``port=0`` takes a free one; pass a port when the URL must be known beforehand (or
    stay the same across a restart)."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only then (else
    # Nagle and delayed ACKs add ~40 ms to every keep-alive response)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                                    timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve([sock]))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("fake server stopped before it started")
            if loop.time() > deadline:
                raise RuntimeError("fake server did not start in time")
            await asyncio.sleep(0.005)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True  # a fake: don't wait for idle keep-alive connections
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


class FakeServer:
    """Base of the fakes: ``async with fake.running() as url``; ``fake.url`` meanwhile."""

    app: Any
    url: str = ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        async with serve(self.app) as url:
            self.url = url
            try:
                yield url
            finally:
                self.url = ""
