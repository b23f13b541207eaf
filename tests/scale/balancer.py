"""A real HAProxy (Debian's, installed by the test set-up when missing) in front of daemon
instances, configured from the README's own "Behind a load balancer" block: only the
listen address, the servers and the stats socket are swapped for the test's."""

from __future__ import annotations

import csv
import fcntl
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_for

README = ROOT / "README.md"


def install_haproxy() -> str:
    """``apt-get install haproxy`` once per machine (a lock guards parallel sessions)."""
    found = shutil.which("haproxy")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.fail("haproxy is missing and apt-get is not available: install the Debian package "
                    "'haproxy' (apt-get install -y --no-install-recommends haproxy)")
    lock = Path(tempfile.gettempdir()) / "dialer-tests-apt-haproxy.lock"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [apt, "install", "-y", "--no-install-recommends", "haproxy"]
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        if not shutil.which("haproxy"):  # else another session installed it while we waited
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
            if r.returncode != 0:  # a fresh machine may have no package lists yet
                subprocess.run([apt, "update"], env=env, capture_output=True, text=True, timeout=900,
                               check=False)
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
            if r.returncode != 0:
                pytest.fail(f"apt-get install haproxy failed ({r.returncode}):\n{r.stdout[-2000:]}\n"
                            f"{r.stderr[-2000:]}")
    found = shutil.which("haproxy")
    if not found:
        pytest.fail("the Debian package 'haproxy' is installed but haproxy is not on PATH")
    return found


def readme_config() -> str:
    """The HAProxy configuration in the README's "Behind a load balancer" section."""
    text = README.read_text()
    start = text.index("### Behind a load balancer")
    m = re.search(r"```haproxy\n(.*?)```", text[start:], re.S)
    assert m, "the README's 'Behind a load balancer' section has no ```haproxy block"
    return m.group(1)


def render(config: str, listen_port: int, servers: dict[str, int], stats_socket: Path) -> str:
    """The README's configuration with the test's listen port, servers and stats socket."""
    lines = []
    servers_done = False
    for line in config.splitlines():
        s = line.strip()
        if s.startswith("bind "):
            line = f"    bind 127.0.0.1:{listen_port}"
        elif s.startswith("stats socket "):
            line = f"    stats socket {stats_socket} mode 600 level admin"
        elif s.startswith("server "):
            if servers_done:
                continue
            line = "\n".join(f"    server {name} 127.0.0.1:{port}" for name, port in servers.items())
            servers_done = True
        lines.append(line)
    assert servers_done, "no server line to replace in the README's configuration"
    return "\n".join(lines) + "\n"


class HAProxy:
    """HAProxy in the foreground (``-db``), its log in ``workdir``; its stats socket is read
    to see which servers the health checks hold UP or DOWN."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()  # known before the daemons start: their DIALER_PUBLIC_URL
        self.url = f"http://127.0.0.1:{self.port}"
        self.servers: dict[str, int] = {}
        # a unix socket path must stay short (108 bytes): not under pytest's deep tmp dirs
        self._sock_dir = Path(tempfile.mkdtemp(prefix="haproxy-", dir="/tmp"))
        self.socket = self._sock_dir / "stats.sock"
        self.config = self.dir / "haproxy.cfg"
        self.log = self.dir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        r = subprocess.run([self.binary, "-c", "-f", str(self.config)], capture_output=True, text=True,
                           timeout=30, check=False)
        assert r.returncode == 0, f"haproxy -c refused the configuration:\n{r.stdout}\n{r.stderr}"

    def start(self, servers: dict[str, int]) -> HAProxy:
        """Start in front of ``servers`` (name -> port); returns once every one is UP."""
        self.servers = dict(servers)
        self.config.write_text(render(readme_config(), self.port, self.servers, self.socket))
        self.check()
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen([self.binary, "-db", "-f", str(self.config)], cwd=self.dir,
                                         stdout=logf, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                return all(self.status(name).startswith("UP") for name in self.servers)
            except OSError:
                return False

        wait_for(up, 30, "haproxy up with every server UP")
        return self

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` on the stats socket: one CSV row per frontend, backend and server."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        text = data.decode().lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def status(self, server: str) -> str:
        """UP, DOWN, or a transition such as "UP 1/2" (going down) for one backend server."""
        for row in self.stats():
            if row["svname"] == server and row["pxname"] == "dialers":
                return row["status"]
        raise AssertionError(f"no server {server!r} in haproxy's stats")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self._sock_dir, ignore_errors=True)


def wait_status(lb: HAProxy, server: str, status: str, timeout: float = 20) -> float:
    """Seconds until ``server`` shows ``status`` in the stats (polled, not slept)."""
    start = time.monotonic()
    wait_for(lambda: lb.status(server) == status, timeout, f"haproxy server {server} {status}")
    return time.monotonic() - start
