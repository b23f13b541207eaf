"""The daemon as systemd runs it: the notify protocol on a real unix datagram socket,
SIGHUP reloading targets, SIGTERM draining under load.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import DaemonProcess, wait_for
from tests.ops.conftest import daemon_toml, fetch

ROWS = 30_000


@dataclass
class Notifications:
    """Datagrams received on a NOTIFY_SOCKET, with their arrival times."""

    sock: socket.socket
    path: str
    got: list[tuple[float, str]] = field(default_factory=list)
    ready_probe: list[int] = field(default_factory=list)  # /readyz status when READY=1 arrived
    url: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            msg = data.decode()
            if "READY=1" in msg and not self.ready_probe and self.url:
                try:  # READY must mean "serving": ask right away
                    self.ready_probe.append(httpx.get(self.url + "/readyz", timeout=10).status_code)
                except httpx.HTTPError:
                    self.ready_probe.append(0)
            self.got.append((time.monotonic(), msg))

    def messages(self) -> list[str]:
        return [m for _, m in self.got]

    def lines(self) -> list[str]:
        return [line for m in self.messages() for line in m.split("\n")]

    def wait(self, text: str, after: int = 0, timeout: float = 20) -> int:
        """Index of the first message from ``after`` on containing ``text``."""
        def found() -> int | None:
            for i, m in enumerate(self.messages()[after:], after):
                if text in m:
                    return i + 1  # 1-based so that 0 is never a "found" index
            return None

        return int(wait_for(found, timeout, f"notify message {text!r}")) - 1


@pytest.fixture
def notify_socket() -> Iterator[Notifications]:
    d = tempfile.mkdtemp(prefix="dn-", dir="/tmp")  # a short path: sun_path is 108 bytes
    path = f"{d}/notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    n = Notifications(s, path)
    t = threading.Thread(target=n.run, daemon=True)
    t.start()
    yield n
    n.stop.set()
    t.join(2)
    s.close()
    shutil.rmtree(d, ignore_errors=True)


def targets(d: DaemonProcess) -> dict[str, dict[str, object]]:
    with d.client() as c:
        r = c.get("/v1/targets")
        assert r.status_code == 200, r.text
        return {t["name"]: t for t in r.json()["targets"]}


def test_sd_notify_ready_watchdog_status_reload_and_stopping(
    daemon: DaemonProcess, notify_socket: Notifications, tmp_path: Path
) -> None:
    conf = tmp_path / "dialer.toml"
    conf.write_text(daemon_toml(2, ""))
    daemon.env.update(NOTIFY_SOCKET=notify_socket.path, WATCHDOG_USEC="1000000", DIALER_CONFIG=str(conf))
    notify_socket.url = daemon.url
    daemon.start()
    ready = notify_socket.wait("READY=1")
    assert notify_socket.ready_probe == [200], "READY=1 came before the daemon could serve /readyz"
    before = notify_socket.lines()[: sum(m.count("\n") + 1 for m in notify_socket.messages()[:ready])]
    assert "STATUS=starting: applying migrations" in before  # migrations ran before READY
    assert any(line.startswith("STATUS=running") for line in notify_socket.messages()[ready].split("\n"))

    # WATCHDOG=1 from the event loop at half of WATCHDOG_USEC (1 s → every 0.5 s)
    wait_for(lambda: sum(m == "WATCHDOG=1" for m in notify_socket.messages()) >= 5, 10, "watchdog pings")
    pings = [t for t, m in notify_socket.got if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 0.3 < sum(gaps) / len(gaps) < 1.0, gaps  # systemd would restart us past 1 s

    # SIGHUP: a changed calls_per_agent and a new target show in /v1/targets
    assert targets(daemon)["sales"]["calls_per_agent"] == 2
    conf.write_text(daemon_toml(5, '[targets.support]\nkind = "campaign"\nagents = ["dave"]\n'))
    seen = len(notify_socket.messages())
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    i = notify_socket.wait("RELOADING=1", seen)
    assert "MONOTONIC_USEC=" in notify_socket.messages()[i]
    notify_socket.wait("READY=1", i)
    now = targets(daemon)
    assert now["sales"]["calls_per_agent"] == 5
    assert now["sales"]["limit"] in (0, 5, 10, 15)
    assert now["support"]["kind"] == "campaign"
    assert (Path(daemon.env["DIALER_STATE_DIR"]) / "inbox" / "support").is_dir()

    # an invalid file: logged, the running configuration kept, the daemon still up
    conf.write_text(daemon_toml(7, "no_such_key = 1\n"))
    seen = len(notify_socket.messages())
    daemon.proc.send_signal(signal.SIGHUP)
    notify_socket.wait("READY=1", notify_socket.wait("RELOADING=1", seen))
    assert targets(daemon)["sales"]["calls_per_agent"] == 5
    metrics = httpx.get(daemon.url + "/metrics", timeout=5).text
    assert 'dialer_config_reloads_total{result="failed"} 1.0' in metrics
    assert 'dialer_config_reloads_total{result="ok"} 1.0' in metrics
    log = daemon.log.read_text()
    assert "config reload failed; keeping the running configuration" in log
    assert "no_such_key" in log

    # SIGTERM: STOPPING=1, exit 0
    seen = len(notify_socket.messages())
    assert daemon.stop() == 0
    i = notify_socket.wait("STOPPING=1", seen, timeout=5)
    assert "STATUS=draining" in notify_socket.messages()[i]
    assert notify_socket.wait("STATUS=stopped", i, timeout=5) > i


def test_sigterm_drains_under_load_and_exits_0_within_30s(daemon: DaemonProcess, tmp_path: Path,
                                                        db_url: str) -> None:
    conf = tmp_path / "dialer.toml"
    conf.write_text(daemon_toml(4, ""))
    daemon.env["DIALER_CONFIG"] = str(conf)
    daemon.start()
    inbox = Path(daemon.env["DIALER_STATE_DIR"]) / "inbox"
    part = inbox / "big.csv.part"
    with part.open("w") as f:
        f.write("number,external_id\n")
        for i in range(ROWS):
            f.write(f"+1415{3000000 + i:07d},x{i}\n")
    stop = threading.Event()
    posted: list[int] = []

    def load() -> None:
        n = 0
        with daemon.client() as c:
            while not stop.is_set():
                leads = [{"number": f"+1646{2000000 + n * 100 + k:07d}"} for k in range(100)]
                n += 1
                try:
                    posted.append(c.post("/v1/batches", json={"leads": leads}).status_code)
                except httpx.HTTPError:
                    return

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: fetch(db_url, "SELECT count(*)::int AS n FROM chunks WHERE state = 'sent'")[0]["n"] >= 2,
                 30, "calls flowing to the sandbox")
        part.rename(inbox / "big.csv")
        wait_for(lambda: fetch(db_url, "SELECT coalesce(max(rows_read), 0)::int AS n FROM batches "
                                       "WHERE source = 'inbox'")[0]["n"] > 0, 30, "the big file mid-ingest")
        assert daemon.proc is not None
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        rc = daemon.proc.wait(35)
        took = time.monotonic() - started
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert rc == 0, daemon.log.read_text()[-3000:]
    assert took < 30, f"drain took {took:.1f}s"
    assert posted and all(code in (202, 503) for code in posted), set(posted)
    # in-flight provider requests finished and settled: no chunk left mid-send
    assert fetch(db_url, "SELECT count(*)::int AS n FROM chunks WHERE state = 'sending'")[0]["n"] == 0
    log = daemon.log.read_text()
    assert '"msg":"draining"' in log and '"msg":"stopped"' in log
    # the file mid-ingest either finished during the drain or waits, resumable, for a restart
    (batch,) = fetch(db_url, "SELECT state, rows_read FROM batches WHERE source = 'inbox'")
    if batch["state"] == "receiving":
        assert not list(inbox.glob("processed/*/big.csv"))
    else:
        assert batch["rows_read"] == ROWS
        assert list(inbox.glob("processed/*/big.csv.report.json"))


# Put on the PYTHONPATH of a daemon under test, so loaded by it and by its intake worker:
# after a file's first chunk the worker never answers again, as on a pathological file.
STUCK_WORKER = """
import threading

from dialer.intake import pipeline

_iter_chunks = pipeline.iter_chunks


def iter_chunks(source, job):
    chunks = _iter_chunks(source, job)
    yield next(chunks)
    threading.Event().wait()


pipeline.iter_chunks = iter_chunks
"""


def test_sigterm_ends_a_stuck_intake_worker_and_the_file_resumes_exactly(daemon: DaemonProcess, tmp_path: Path,
                                                                        db_url: str) -> None:
    import psutil

    rows = 20_000
    hook = tmp_path / "stuck-worker"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STUCK_WORKER)
    path = daemon.env.get("PYTHONPATH", "")
    daemon.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), path) if p)
    daemon.env["DIALER_DRAIN_S"] = "3"  # the drain's deadline (25 s by default), for a short test
    daemon.start()
    inbox = Path(daemon.env["DIALER_STATE_DIR"]) / "inbox"
    part = inbox / "big.csv.part"
    with part.open("w") as f:  # over 2 MiB: parsed in the worker process
        f.write("number,external_id,notes\n")
        for i in range(rows):
            f.write(f"+1415{3000000 + i:07d},x{i},{'n' * 100}\n")
    part.rename(inbox / "big.csv")
    wait_for(lambda: fetch(db_url, "SELECT coalesce(max(rows_read), 0)::int AS n FROM batches "
                                   "WHERE source = 'inbox'")[0]["n"] > 0, 30, "the file's first chunk")
    assert daemon.proc is not None
    workers = [c for c in psutil.Process(daemon.proc.pid).children()
               if "--multiprocessing-fork" in c.cmdline() and "resource_tracker" not in " ".join(c.cmdline())]
    assert len(workers) == 1
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        # the drain waited on the worker's next chunk, which never came: no exit at all
        assert daemon.proc.wait(30) == 0, daemon.log.read_text()[-3000:]
        assert not workers[0].is_running() or workers[0].status() == psutil.STATUS_ZOMBIE
    finally:  # a worker left behind would wait forever
        with contextlib.suppress(psutil.NoSuchProcess):
            workers[0].kill()
    (batch,) = fetch(db_url, "SELECT id, state, rows_read FROM batches WHERE source = 'inbox'")
    assert (batch["state"], batch["rows_read"]) == ("receiving", 1_000)  # its committed chunk
    assert (inbox / "big.csv").exists()

    # a restart with a worker that works resumes the file after that chunk: every row once
    daemon.env["PYTHONPATH"] = path
    daemon.start()
    reports = inbox / "processed"
    wait_for(lambda: list(reports.glob("*/big.csv.report.json")), 60, "the resumed file's report")
    (report,) = reports.glob("*/big.csv.report.json")
    counts = json.loads(report.read_text())["counts"]
    assert counts == {"rows": rows, "accepted": rows, "invalid": 0, "duplicate": 0, "dnc": 0}
    (leads,) = fetch(db_url, "SELECT count(*)::int AS n, count(DISTINCT line)::int AS lines, min(line) AS first, "
                             "max(line) AS last FROM leads WHERE batch_id = $1", batch["id"])
    assert dict(leads) == {"n": rows, "lines": rows, "first": 2, "last": rows + 1}


def test_a_daemon_waiting_for_its_database_keeps_systemd_waiting_and_stops_cleanly(
        daemon: DaemonProcess, notify_socket: Notifications) -> None:
    import sys

    from tests.conftest import free_port, start_and_wait

    # nothing listens there: the daemon waits (systemd told why, its start timeout extended)
    daemon.env.update(NOTIFY_SOCKET=notify_socket.path, WATCHDOG_USEC="30000000",
                      DIALER_DATABASE_URL=f"postgresql://dialer@127.0.0.1:{free_port()}/x")
    daemon.proc = start_and_wait([sys.executable, "-m", "dialer", "run"], daemon.env, daemon.cwd, daemon.log,
                                 daemon.url + "/healthz", "daemon")
    notify_socket.wait("STATUS=starting: waiting for the database (ConnectionRefusedError), attempt 2")
    assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in notify_socket.lines())
    assert "WATCHDOG=1" in notify_socket.lines()
    r = httpx.get(daemon.url + "/readyz", timeout=5)
    assert r.status_code == 503 and r.json()["checks"]["database"] == "unreachable: ConnectionRefusedError"
    # Prometheus still scrapes it: the database is down, the spool's depth is shown
    m = httpx.get(daemon.url + "/metrics", timeout=5)
    assert m.status_code == 200 and "dialer_db_up 0.0" in m.text and "dialer_spool_depth 0.0" in m.text
    assert httpx.get(daemon.url + "/v1/targets", timeout=5).status_code == 401  # no token: 401 first
    # a reload while it waits: no READY=1 (systemd would mark the unit started)
    seen = len(notify_socket.messages())
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    notify_socket.wait("configuration reloaded; waiting for the database", seen)
    assert not any("READY=1" in m or "RELOADING=1" in m for m in notify_socket.messages())
    assert daemon.stop() == 0  # SIGTERM while waiting: a clean stop
