"""systemd's notify protocol, spoken directly: one datagram per message to ``$NOTIFY_SOCKET``.

``READY=1`` once migrations ran and HTTP is serving, ``STATUS=…`` lines along the way,
``WATCHDOG=1`` from the event loop at half of ``$WATCHDOG_USEC`` (a blocked loop stops
the pings, and systemd restarts us), ``RELOADING=1`` around a SIGHUP reload and
``STOPPING=1`` when draining starts. Outside systemd every call is a no-op.

The variables are removed from the environment when read, so child processes (the
embedded PostgreSQL, intake workers) never talk to systemd in our name.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping

import anyio

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: MutableMapping[str, str] | None = None, *, unset: bool = True) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000
        if unset:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(key, None)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):  # abstract namespace
            return b"\0" + self.address[1:].encode()
        return self.address

    def send(self, *lines: str) -> bool:
        """Send one message (``KEY=value`` lines); False if there is no socket or it failed."""
        if self.address is None or not lines:
            return False
        msg = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg, self._target())
        except OSError as e:
            if not self._warned:  # once: a missing socket must not flood the logs
                log.warning("sd_notify failed", extra={"error": str(e)})
                self._warned = True
            return False
        return True

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_line(text)}")

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={_line(status)}")
        return self.send(*lines)

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self, status: str = "draining") -> bool:
        return self.send("STOPPING=1", f"STATUS={_line(status)}")

    async def watchdog(self, status: Callable[[], str] | None = None, status_every_s: float = 10.0) -> None:
        """Ping the watchdog at half its interval (and refresh STATUS= now and then)."""
        if not self.enabled:
            return
        every = self.watchdog_s / 2 if self.watchdog_s else status_every_s
        last_status = time.monotonic()
        while True:
            if self.watchdog_s:
                self.send("WATCHDOG=1")
            if status is not None and time.monotonic() - last_status >= status_every_s:
                last_status = time.monotonic()
                try:
                    self.status(status())
                except Exception:  # a status line is never worth a crash
                    log.debug("status line failed", exc_info=True)
            await anyio.sleep(every)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _line(text: str) -> str:
    return " ".join(text.split())
