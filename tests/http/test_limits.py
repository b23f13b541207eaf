"""Hostile clients against a real daemon: huge headers, huge bodies, slow clients."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlencode

import httpx

from tests.conftest import TOKEN, DaemonProcess, wait_for
from tests.ui.conftest import csrf_of


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


def _closed_by_server(s: socket.socket, deadline_s: float = 20) -> bytes | None:
    """What the server sent before closing the connection; None if it kept it open."""
    s.settimeout(deadline_s)
    got = b""
    try:
        while part := s.recv(65536):
            got += part
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return got


def _response(s: socket.socket) -> bytes:
    """One whole response (head and a Content-Length body), however it was cut in segments."""
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    head, _, body = got.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_half_sent_heads_and_idle_connections_are_closed(daemon: DaemonProcess) -> None:
    """A head must arrive within http_head_timeout_s, and connections past
    http_max_connections are closed as they come: a flood of idle or half-sent requests
    cannot take the daemon's file descriptors."""
    daemon.env["DIALER_HTTP_HEAD_TIMEOUT_S"] = "1"
    daemon.env["DIALER_HTTP_MAX_CONNECTIONS"] = "40"
    daemon.start()
    port = daemon.port
    half = socket.create_connection(("127.0.0.1", port), timeout=5)
    half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)  # sends nothing
    with half, silent:
        assert _closed_by_server(half) == b""
        assert _closed_by_server(silent) == b""
    # after an answer, a next request left half-sent is closed too (keep-alive cut short)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(s).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(s) == b""
    # a head growing past 64 KB in small pieces: 431, not buffered on
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for i in range(200):
                s.sendall(b"X-H%d: " % i + b"a" * 1000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _closed_by_server(s)
        assert answer is not None and answer.startswith(b"HTTP/1.1 431"), answer
    # past the connection limit, new connections are closed at once (a head timeout longer
    # than the test now: only the limit can close them)
    assert daemon.stop() == 0
    daemon.env["DIALER_HTTP_HEAD_TIMEOUT_S"] = "120"
    daemon.start()
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
    try:
        closed = [s for s in held[40:] if _closed_by_server(s, 10) is not None]
        assert len(closed) >= 15, len(closed)
        assert _closed_by_server(held[0], 1) is None  # the first ones are served
    finally:
        for s in held:
            s.close()
    assert httpx.get(daemon.url + "/healthz", timeout=5).status_code == 200


def test_a_body_still_coming_after_an_early_answer_is_no_head(daemon: DaemonProcess) -> None:
    """A request refused before its body was read (413 on its Content-Length): the rest of
    the body still arriving is not taken for the next request's head (64 KB of it used to
    draw a spurious 431 and a reset that could swallow the 413), and a body that stalls
    there is cut off like a head (uvicorn's keep-alive timer stops at its first byte)."""
    daemon.env["DIALER_HTTP_HEAD_TIMEOUT_S"] = "2"
    daemon.start()
    head = (f"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {60 << 20}\r\n\r\n")

    def refused(s: socket.socket) -> None:
        s.sendall(head.encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        assert got.startswith(b"HTTP/1.1 413"), got[:100]

    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        refused(s)
        try:
            for _ in range(32):  # 2 MB more of the body
                s.sendall(b"x" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        rest = _closed_by_server(s, 5)
    assert rest is None or b"431" not in rest, rest[:200]
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        refused(s)
        s.sendall(b"x" * 10)  # then nothing more
        assert _closed_by_server(s, 20) is not None


def _post_head(path: str, length: int, ctype: str = "application/x-www-form-urlencoded",
               auth: bool = False) -> bytes:
    bearer = f"Authorization: Bearer {TOKEN}\r\n" if auth else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{bearer}Content-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()



def _steady(s: socket.socket, pieces: list[bytes]) -> bytes:
    """Send ``pieces`` slowly but steadily (0.3 s apart, over several timeouts): the connection
    must stay open; returns the answer, at least its status line."""
    answer, closed = _trickle(s, pieces, every_s=0.3)
    assert not closed, answer
    s.settimeout(10)
    while b"\r\n" not in answer:
        part = s.recv(65536)
        assert part, answer
        answer += part
    return answer

def _trickle(s: socket.socket, pieces: list[bytes], every_s: float = 0.25) -> tuple[bytes, bool]:
    """Send ``pieces`` one every ``every_s`` (a client's pace, below the idle timeout): what
    the server sent meanwhile, and whether it closed the connection before the last one."""
    s.settimeout(every_s)
    got = b""
    for piece in pieces:
        try:
            s.sendall(piece)
            part = s.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return got, True
        if not part:
            return got, True
        got += part
    return got, False


def test_a_body_that_stalls_or_trickles_is_cut_off(daemon: DaemonProcess) -> None:
    """A body is timed like a head: no byte of it for http_head_timeout_s and the request
    is answered 408 and closed, on any route; a request nobody vouched for (the login form)
    must have its whole body in within that time, so trickling cannot hold it; an
    authenticated upload that keeps coming may take longer."""
    daemon.env["DIALER_HTTP_HEAD_TIMEOUT_S"] = "1"
    daemon.start()
    port = daemon.port
    # the login form's body declared and never sent (it stayed open for good)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(_post_head("/ui/login", 6000))
        got = _closed_by_server(s)
        assert got is not None and got.startswith(b"HTTP/1.1 408"), got
    # an authenticated upload that stops halfway: cut all the same
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(_post_head("/v1/dnc", 6000, "application/json", auth=True) + b'{"numbers": [')
        got = _closed_by_server(s)
        assert got is not None and got.startswith(b"HTTP/1.1 408"), got
    # the login form trickled a byte at a time, never idle for the timeout: cut at the
    # total deadline, long before its 6000 bytes are in
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(_post_head("/ui/login", 6000))
        got, closed = _trickle(s, [b"a"] * 40)  # 10 s of it
        assert closed and got.startswith(b"HTTP/1.1 408"), got
    # an authenticated upload sent slowly but steadily, over several timeouts: taken
    numbers = [f'"+1415555{n:04d}"'.encode() for n in range(100, 112)]
    pieces = [b'{"numbers": ['] + [n + b"," for n in numbers[:-1]] + [numbers[-1] + b"]}"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(_post_head("/v1/dnc", sum(map(len, pieces)), "application/json", auth=True))
        answer = _steady(s, pieces)
    assert answer.startswith(b"HTTP/1.1 20"), answer[:300]
    # and so may a console form sent slowly with a session
    with httpx.Client(base_url=daemon.url, timeout=10) as c:
        page = c.get("/ui/login")
        assert c.post("/ui/login", data={"csrf": csrf_of(page.text), "token": TOKEN}).status_code == 303
        csrf = csrf_of(c.get("/ui/dnc").text)
        cookies = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    body = urlencode({"csrf": csrf, "numbers": "\n".join(f"+1415555{n:04d}" for n in range(120, 132))}).encode()
    head = _post_head("/ui/dnc", len(body)).replace(b"\r\n\r\n", f"\r\nCookie: {cookies}\r\n\r\n".encode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        answer = _steady(s, [body[i:i + 20] for i in range(0, len(body), 20)])
    assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 303")), answer[:300]
    assert httpx.get(daemon.url + "/healthz", timeout=5).status_code == 200


def test_silent_bodies_at_the_connection_limit_do_not_hold_it(daemon: DaemonProcess) -> None:
    """Connections filled up to http_max_connections with requests whose bodies never come
    (no login needed) are cut at the timeout, so /healthz gets through again (they used
    to starve every probe for as long as the attacker liked)."""
    daemon.env["DIALER_HTTP_HEAD_TIMEOUT_S"] = "2"
    daemon.env["DIALER_HTTP_MAX_CONNECTIONS"] = "16"
    daemon.start()
    held = []
    try:
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
            s.sendall(_post_head("/ui/login", 6000))
            held.append(s)
        for s in held:
            got = _closed_by_server(s)
            assert got is not None and got.startswith(b"HTTP/1.1 408"), got
    finally:
        for s in held:
            s.close()

    def healthy() -> bool:
        try:
            return httpx.get(daemon.url + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, 20, "/healthz answering again")


def test_a_client_gone_mid_body_is_one_quiet_line(daemon: DaemonProcess) -> None:
    """A client that hangs up before its body is in is nothing to alarm anyone: one info
    line, not an error with a 60-line ClientDisconnect traceback."""
    daemon.start()
    for head in (_post_head("/ui/login", 6000), _post_head("/v1/dnc", 6000, "application/json", auth=True)):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
            s.sendall(head + b"a")
            assert httpx.get(daemon.url + "/healthz", timeout=5).status_code == 200  # it is being read

    def quiet() -> list[dict[str, str]]:
        lines = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.startswith("{")]
        return [r for r in lines if r["msg"].startswith("request body cut short")]

    wait_for(lambda: len(quiet()) == 2, 20, "a line for each client gone")
    assert [r["level"] for r in quiet()] == ["info", "info"]
    text = daemon.log.read_text()
    assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]
