"""Soak: a steady stream (API batches in, dispatch to the Ryng sandbox, callbacks back)
against a real daemon child process for ``--minutes`` (default 10).

Every minute it prints the daemon's RSS and open file descriptors (psutil), the DB pool
size/idle (``dialer_db_pool_size`` / ``dialer_db_pool_idle`` from ``/metrics``), the p99
callback handling latency over that minute (deltas of the ``dialer_callback_duration_seconds``
histogram) and the calls ended. At the end a verdict on the trend: RSS of the second half
vs the first (minute 1, the warm-up, left out), FD count spread, p99 drift. Exit 1 if
something grows.

    make soak                              # ten minutes
    .venv/bin/python bench/soak.py --minutes 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common

TOKEN = "soak-token-0123456789"
TERMINAL = ("answered", "no_answer", "busy", "unreachable", "failed", "rejected_by_provider", "cancelled",
            "expired", "capped")


class SandboxThread:
    """The Ryng sandbox served from a thread of this process (its own event loop)."""

    def __init__(self, agents: list[str]) -> None:
        from dialer.providers.ryng.sandbox import RyngSandbox, SandboxConfig

        self.sandbox = RyngSandbox(SandboxConfig(
            time_scale=0.1, seed=5, ring_s=(0.5, 2), talk_s=(2, 6), default_max_dispose_s=0, agent_pickup_s=0,
            agents=agents, token="soak-ryng", keep_ended_calls=2_000))
        self.port = common.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        import uvicorn

        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = uvicorn.Server(uvicorn.Config(self.sandbox.app, host="127.0.0.1", port=self.port,
                                                   log_level="warning", lifespan="off", access_log=False))
            server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
            task = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.01)
            await self.sandbox.start()
            self._ready.set()
            await self._stop.wait()
            await self.sandbox.stop()
            server.should_exit = True
            await task

        asyncio.run(run())

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("sandbox did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def scrape(url: str) -> dict[str, Any]:
    """The few series the soak reads from ``/metrics``."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, Any] = {"buckets": {}, "count": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "dialer_db_pool_size":
                out["pool_size"] = s.value
            elif s.name == "dialer_db_pool_idle":
                out["pool_idle"] = s.value
            elif s.name == "dialer_callback_duration_seconds_bucket":
                le = float(s.labels["le"])
                out["buckets"][le] = out["buckets"].get(le, 0.0) + s.value
            elif s.name == "dialer_callback_duration_seconds_count":
                out["count"] += s.value
    return out


def p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound of the bucket holding the 99th percentile of the observations in between."""
    deltas = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    for le, n in deltas:
        if n >= 0.99 * total:
            return le
    return None


def ended(dsn: str) -> int:
    import asyncpg

    async def q() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM calls WHERE state = ANY($1::text[])",
                                           list(TERMINAL)))
        finally:
            await conn.close()

    return asyncio.run(q())


class Feeder(threading.Thread):
    """POST /v1/batches at a steady pace: ``rate`` leads a second in batches every ``every_s``."""

    def __init__(self, url: str, rate: float, every_s: float, agents: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.rate, self.every_s, self.agents = url, rate, every_s, agents
        self.stopped = threading.Event()
        self.sent = 0
        self.errors = 0

    def run(self) -> None:
        import httpx

        per = max(1, round(self.rate * self.every_s))
        n = 0
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
            next_at = time.monotonic()
            while not self.stopped.is_set():
                leads = [{"number": f"+1{415 + (n + i) // 7_000_000 % 50}{2_000_000 + (n + i) % 7_000_000:07d}",
                          "agents": [self.agents[(n + i) % len(self.agents)]]} for i in range(per)]
                n += per
                try:
                    r = c.post("/v1/batches", json={"leads": leads})
                    if r.status_code == 202:
                        self.sent += per
                    else:
                        self.errors += 1
                except httpx.HTTPError:
                    self.errors += 1
                next_at += self.every_s
                self.stopped.wait(max(0.0, next_at - time.monotonic()))


def verdict(rows: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    lines: list[str] = []
    steady = rows[1:] if len(rows) > 2 else rows  # minute 1 is warm-up
    half = max(1, len(steady) // 2)
    first, last = steady[:half], steady[-half:]
    rss1, rss2 = statistics.mean(r["rss"] for r in first), statistics.mean(r["rss"] for r in last)
    growth = rss2 - rss1
    rss_ok = growth <= max(20 * 2**20, 0.10 * rss1)
    lines.append(f"RSS: first half {rss1 / 2**20:.1f} MiB, last half {rss2 / 2**20:.1f} MiB "
                 f"({growth / 2**20:+.1f} MiB, {100 * growth / rss1:+.1f}%) -> {'flat' if rss_ok else 'GROWING'}")
    fds = [r["fds"] for r in steady]
    # sockets come and go with the callback traffic: judge the trend, not the range
    fd1, fd2 = statistics.mean(r["fds"] for r in first), statistics.mean(r["fds"] for r in last)
    fd_ok = fd2 - fd1 <= max(10.0, 0.2 * fd1)
    lines.append(f"FDs: first half {fd1:.0f}, last half {fd2:.0f} (range {min(fds)}..{max(fds)}) "
                 f"-> {'stable' if fd_ok else 'GROWING'}")
    pool = [r["pool_size"] for r in steady]
    pool_ok = max(pool) <= (rows[0].get("pool_max") or max(pool))
    lines.append(f"DB pool size: {min(pool):.0f}..{max(pool):.0f} -> {'bounded' if pool_ok else 'OVER LIMIT'}")
    lat = [r["p99"] for r in steady if r["p99"] is not None]
    lat_ok = True
    if len(lat) >= 2:
        l1 = statistics.mean(lat[:max(1, len(lat) // 2)])
        l2 = statistics.mean(lat[-max(1, len(lat) // 2):])
        lat_ok = l2 <= max(2 * l1, 0.1)
        lines.append(f"p99 callback latency: first half {l1 * 1000:.0f} ms, last half {l2 * 1000:.0f} ms "
                     f"-> {'flat' if lat_ok else 'GROWING'}")
    per_min = [r["ended_delta"] for r in steady]
    flow_ok = min(per_min) > 0
    lines.append(f"calls ended per minute: {min(per_min)}..{max(per_min)} -> {'flowing' if flow_ok else 'STALLED'}")
    return rss_ok and fd_ok and pool_ok and lat_ok and flow_ok, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--sample-s", type=float, default=60, help="seconds between report lines")
    ap.add_argument("--rate", type=float, default=15, help="leads per second fed through the API")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory and PostgreSQL")
    args = ap.parse_args(argv)

    import psutil

    agents = [f"a{i}" for i in range(20)]
    tmp = Path(tempfile.mkdtemp(prefix="dialer-soak-"))
    sandbox = SandboxThread(agents)
    sandbox.start()
    proc = None
    try:
        with common.throwaway_server("dialer-soak-pg-", keep=args.keep) as server:
            dsn = server.dsn
            port = common.free_port()
            url = f"http://127.0.0.1:{port}"
            names = ", ".join(f'"{a}"' for a in agents)
            (tmp / "d.toml").write_text(
                'default_target = "sales"\n\n[targets.sales]\nqueue_id = "1"\nagent_mapping = "inline"\n'
                f'agents = [{names}]\ncalling_hours = "00:00-24:00"\ncalls_per_agent = 2\nchunk_size = 100\n'
                "max_dispose_s = 0\nmax_retries = 0\ndedupe_window_h = 0\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
            env.update(DIALER_DATABASE_URL=dsn, DIALER_STATE_DIR=str(tmp / "var"), DIALER_HTTP_LISTEN=f"127.0.0.1:{port}",
                       DIALER_API_TOKENS=TOKEN, DIALER_CALLBACK_SECRET="soak-callback-secret",
                       DIALER_LOG_FORMAT="json", DIALER_LOG_LEVEL="warning", DIALER_CONFIG=str(tmp / "d.toml"),
                       DIALER_RYNG_BASE_URL=sandbox.url, DIALER_RYNG_TOKEN="soak-ryng")
            log_path = tmp / "daemon.log"
            proc = common.spawn([sys.executable, "-m", "dialer", "run"], log_path, env=env, cwd=tmp)
            common.wait_http(url + "/readyz", proc, log_path)
            daemon = psutil.Process(proc.pid)
            feeder = Feeder(url, args.rate, 1.0, agents)
            feeder.start()
            common.log(f"soak: {args.minutes:g} min, {args.rate:g} leads/s via the API, daemon pid {proc.pid}")
            print(f"{'min':>5} {'RSS MiB':>8} {'FDs':>5} {'pool':>5} {'idle':>5} {'p99 cb ms':>10} "
                  f"{'ended':>7} {'ended/min':>9} {'fed':>7}", flush=True)
            rows: list[dict[str, Any]] = []
            prev = scrape(url)
            prev_ended = ended(dsn)
            start = time.monotonic()
            deadline = start + args.minutes * 60
            k = 0
            while time.monotonic() < deadline - 1:
                k += 1
                time.sleep(max(0.0, start + k * args.sample_s - time.monotonic()))  # the sampling period
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited {proc.returncode}:\n{common.tail(log_path)}")
                now = scrape(url)
                e = ended(dsn)
                row = {"minute": k * args.sample_s / 60, "rss": daemon.memory_info().rss, "fds": daemon.num_fds(),
                       "pool_size": now.get("pool_size", 0.0), "pool_idle": now.get("pool_idle", 0.0),
                       "p99": p99(prev["buckets"], now["buckets"]), "ended": e, "ended_delta": e - prev_ended}
                rows.append(row)
                lat = f"{row['p99'] * 1000:.0f}" if row["p99"] is not None else "-"
                print(f"{row['minute']:5.1f} {row['rss'] / 2**20:8.1f} {row['fds']:5d} {row['pool_size']:5.0f} "
                      f"{row['pool_idle']:5.0f} {lat:>10} {e:7d} {row['ended_delta']:9d} {feeder.sent:7d}",
                      flush=True)
                prev, prev_ended = now, e
            feeder.stopped.set()
            feeder.join(30)
            ok, lines = verdict(rows)
            print("\nverdict:", flush=True)
            for line in lines:
                print("  " + line)
            print(f"  feeder: {feeder.sent} leads accepted, {feeder.errors} failed requests")
            ok = ok and feeder.errors == 0
            print(f"  TREND {'FLAT' if ok else 'NOT FLAT'}", flush=True)
            rc = common.stop(proc)
            proc = None
            if rc != 0:
                print(f"  daemon exited {rc} on SIGTERM:\n{common.tail(log_path)}")
                ok = False
            return 0 if ok else 1
    finally:
        if proc is not None:
            common.stop(proc)
        sandbox.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
