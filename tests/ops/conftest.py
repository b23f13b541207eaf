"""Operations fixtures: Prometheus and promtool (installed from Debian when missing), a real
Prometheus server on loopback, and a daemon shared by a whole test module.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from tests.conftest import ROOT, TOKEN, free_port, fresh_database, start_and_wait

GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "dialer.json"
ALERTS = GRAFANA / "alerts.yml"
ALERTS_TEST = GRAFANA / "alerts_test.yml"
SCHEMA = GRAFANA / "schema" / "dashboard.schema.json"
UNIT = ROOT / "systemd" / "dialer.service"


def _install_prometheus() -> None:
    """``apt-get install prometheus`` once per machine (a lock guards parallel sessions)."""
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.fail("promtool/prometheus are missing and apt-get is not available: install the "
                    "Debian package 'prometheus' (apt-get install -y --no-install-recommends prometheus)")
    lock = Path(tempfile.gettempdir()) / "dialer-tests-apt-prometheus.lock"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [apt, "install", "-y", "--no-install-recommends", "prometheus"]
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        if shutil.which("promtool") and shutil.which("prometheus"):
            return  # another session installed it while we waited
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if r.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run([apt, "update"], env=env, capture_output=True, text=True, timeout=900,
                           check=False)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if r.returncode != 0:
            pytest.fail(f"apt-get install prometheus failed ({r.returncode}):\n{r.stdout[-2000:]}\n"
                        f"{r.stderr[-2000:]}")


@pytest.fixture(scope="session")
def prometheus_bin() -> tuple[str, str]:
    """(prometheus, promtool) paths; installs the Debian package when missing."""
    if not (shutil.which("promtool") and shutil.which("prometheus")):
        _install_prometheus()
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prom and tool):
        pytest.fail("the Debian package 'prometheus' is installed but prometheus/promtool are not on PATH")
    return prom, tool


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


class Prometheus:
    """A real Prometheus on loopback with its own config and data dir, scraping every second."""

    def __init__(self, binary: str, workdir: Path, scrape: str, rule_files: list[Path]) -> None:
        self.binary = binary
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.scrape = scrape
        self.rule_files = rule_files
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    def start(self) -> Prometheus:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": "dialer", "static_configs": [{"targets": [self.scrape]}]}],
        }
        cfg = self.dir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        self.proc = start_and_wait(
            [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            None, self.dir, self.log, self.url + "/-/ready", "prometheus", 30,
        )
        return self

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(self.url + path, params=params, timeout=10)
        body = r.json()
        assert body.get("status") == "success", f"{path} {params}: {r.status_code} {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        result = data["result"]
        assert isinstance(result, list), data
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def daemon_env_for(db_url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of ``tests.conftest.daemon_env``, for fixtures wider than one test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(
        DIALER_DATABASE_URL=db_url,
        DIALER_STATE_DIR=str(state_dir),
        DIALER_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
        DIALER_API_TOKENS=TOKEN,
        DIALER_CALLBACK_SECRET="test-callback-secret",
        DIALER_LOG_FORMAT="json",
        DIALER_SETTLE_S="0.3",
        DIALER_INBOX_POLL_S="0.1",
    )
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def module_db_url(pg_server: str, template_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for one test module."""
    yield from fresh_database(pg_server)


def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def scrape(url: str) -> str:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return r.text


def sample_names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


@contextlib.contextmanager
def timed(limit_s: float, what: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    took = time.monotonic() - start
    assert took <= limit_s, f"{what} took {took:.1f}s (limit {limit_s}s)"


DAEMON_TOML = """
default_target = "sales"

[sandbox]
time_scale = 0.02

[targets.sales]
kind = "queue"
queue_id = "42"
agent_mapping = "global"
agents = ["alice", "bob", "carol"]
calling_hours = "00:00-24:00"
max_dispose_s = 1
calls_per_agent = {cpa}
{extra}
"""


def daemon_toml(calls_per_agent: int = 2, extra: str = "") -> str:
    """The ops tests' daemon config: the sandbox, one fast target, plus ``extra`` TOML."""
    return DAEMON_TOML.format(cpa=calls_per_agent, extra=extra)
