"""Hostile clients against a real daemon: huge headers, huge bodies, slow clients."""

from __future__ import annotations

import socket
import time

import httpx

from tests.conftest import TOKEN, DaemonProcess


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        chunks = []
        try:
            while True:
                part = s.recv(65536)
                if not part:
                    break
                chunks.append(part)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_hostile_clients_get_refused_and_the_daemon_keeps_serving(daemon: DaemonProcess) -> None:
    daemon.start()
    port = daemon.port
    # a header of 1 MB: refused, never a 2xx
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    answer = _raw(port, big)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    # a body over the limit, declared up front: 413 before it is read
    head = (f"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {60 << 20}\r\nConnection: close\r\n\r\n{{")
    answer = _raw(port, head.encode(), timeout=5)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    # fifty slow clients holding half-sent requests do not starve the others
    slow = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        slow.append(s)
    try:
        t0 = time.monotonic()
        for _ in range(20):
            assert httpx.get(daemon.url + "/healthz", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 10
    finally:
        for s in slow:
            s.close()
    assert httpx.get(daemon.url + "/readyz", timeout=5).status_code == 200
