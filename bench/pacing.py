"""Pacing benchmark: do agents ever wait for the dialer?

    python bench/pacing.py [--agents 50] [--leads 5000] [--seconds 60] [--max-dispose-s 5,0] [--json]

A real daemon (``python -m dialer run``) dials a target of ``--agents`` agents with
``calls_per_agent = 1`` and ``max_dispose_s = 5`` through the Ryng sandbox, which runs in
a process of its own (its clock is not the daemon's event loop) and dials fake
customers with short rings and talks, so that agents cycle quickly and the wrap-up
(``maxDispose``) is most of each cycle. Thousands of leads are pending all along: any
moment an agent spends idle is the dialer's doing.

The sandbox's timeline (``GET _sandbox/timeline``) says, per agent and in the vendor
page's terms, when its dispose time ran out (it could be offered the next call) and
when it was next assigned a call. Over the measured window (after a warm-up):

* **gap**: from the end of an agent's wrap-up to the next call offered to it; the ideal
  is 0 (the next call is waiting at the provider when the wrap-up ends);
* **utilisation**: the share of the window the agents were on a call or in wrap-up;
  the ideal (no gap) is 100 %;
* **terminal → next chunk**: from a terminal callback answered 200 to the next request
  the sandbox accepts (the dispatcher is woken by terminal callbacks).

Two runs by default: ``max_dispose_s = 5`` (the issue's: the gaps and utilisation), then
``max_dispose_s = 0``, where a terminal callback is what frees an agent, so "terminal →
next chunk" is the dispatcher's reaction to it (with a wrap-up, the agent that just
ended is in wrap-up and the next chunk waits for some wrap-up to end instead).

No limit process is needed: the ideal is the same run with every gap at 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

GAP_P99_AIM_MS = 100.0
UTILISATION_AIM = 0.98
SECRET = "bench-pacing-secret"
TOKEN = "sandbox-token"
QUEUE_ID = "1"


def agent_names(n: int) -> list[str]:
    return [f"agent{i:02d}" for i in range(1, n + 1)]


# -- the Ryng sandbox, in a process of its own ----------------------------------------------------


def sandbox_child(spec_json: str) -> None:
    import uvicorn

    from dialer.providers.ryng.sandbox import RyngSandbox, SandboxConfig

    spec = json.loads(spec_json)
    cfg = SandboxConfig(agents=spec["agents"], time_scale=1.0, ring_s=(0.3, 1.0), talk_s=(0.5, 2.0),
                        agent_pickup_s=0.2, default_max_dispose_s=float(spec["max_dispose_s"]),
                        callback_concurrency=64, seed=20261204)

    async def main() -> None:
        sandbox = RyngSandbox(cfg)
        await sandbox.start()
        server = uvicorn.Server(uvicorn.Config(sandbox.app, host="127.0.0.1", port=spec["port"],
                                               lifespan="off", log_level="warning", loop="uvloop",
                                               http="httptools", access_log=False))
        try:
            await server.serve()
        finally:
            await sandbox.stop()

    import uvloop

    uvloop.run(main())


# -- the database ------------------------------------------------------------------------------


async def _seed(dsn: str, leads: int) -> None:
    from dialer.store.database import create_pool

    await common.migrate(dsn)
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as c, c.transaction():
            batch = uuid.uuid4()
            await c.execute("INSERT INTO batches (id, target, source, state, ingested_at) "
                            "VALUES ($1, 'sales', 'cli', 'ingested', now())", batch)
            await c.execute(
                "INSERT INTO calls (batch_id, target, line, e164, priority) "
                "SELECT $1, 'sales', g, '+1415' || (2000000 + g), 0 FROM generate_series(1, $2) g",
                batch, leads)
    finally:
        await pool.close()


def write_config(state: Path, agents: list[str], max_dispose_s: int) -> None:
    quoted = ", ".join(f'"{a}"' for a in agents)
    (state / "dialer.toml").write_text(
        "[targets.sales]\n"
        f'kind = "queue"\nqueue_id = "{QUEUE_ID}"\nagent_mapping = "global"\nagents = [{quoted}]\n'
        f'calls_per_agent = 1\nmax_dispose_s = {max_dispose_s}\ncalling_hours = "00:00-24:00"\n'
    )


# -- analysis ----------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def analyse(events: list[list[Any]], agents: list[str], t0: float, t1: float) -> dict[str, Any]:
    """Gaps, utilisation and callback-to-request latency over the window [t0, t1]."""
    by_agent: dict[str, list[tuple[float, str]]] = {a: [] for a in agents}
    requests: list[float] = []
    terminals: list[float] = []
    for at, kind, agent, _detail in events:
        if kind in ("offered", "ended", "ready") and agent in by_agent:
            by_agent[agent].append((at, kind))
        elif kind == "request":
            requests.append(at)
        elif kind == "terminal":
            terminals.append(at)
    gaps: list[float] = []
    censored = 0
    busy = 0.0
    offered = 0
    for agent in agents:
        evs = sorted(by_agent[agent])
        busy_from: float | None = None
        waiting_since: float | None = None
        for at, kind in evs:
            if kind == "offered":
                if t0 <= at <= t1:
                    offered += 1
                if waiting_since is not None and t0 <= waiting_since <= t1:
                    gaps.append(at - waiting_since)
                waiting_since = None
                busy_from = at
            elif kind == "ready":
                if busy_from is not None:
                    busy += max(0.0, min(at, t1) - max(busy_from, t0))
                busy_from = None
                waiting_since = at
        if busy_from is not None:  # still on a call or in wrap-up when the window closed
            busy += max(0.0, t1 - max(busy_from, t0))
        if waiting_since is not None and t0 <= waiting_since <= t1:
            gaps.append(t1 - waiting_since)  # never offered again before the window closed
            censored += 1
    requests.sort()
    latencies: list[float] = []
    j = 0
    for t in sorted(terminals):
        if not t0 <= t <= t1:
            continue
        while j < len(requests) and requests[j] < t:
            j += 1
        if j < len(requests):
            latencies.append(requests[j] - t)
    window = t1 - t0
    return {
        "window_s": window,
        "gaps": len(gaps),
        "gaps_censored": censored,
        "gap_ms": {"p50": _pct(gaps, 0.5) * 1000, "p99": _pct(gaps, 0.99) * 1000,
                   "max": max(gaps, default=float("nan")) * 1000,
                   "mean": (statistics.fmean(gaps) * 1000) if gaps else float("nan")},
        "utilisation": busy / (len(agents) * window) if window > 0 else float("nan"),
        "offered": offered,
        "requests": sum(1 for r in requests if t0 <= r <= t1),
        "terminals": sum(1 for t in terminals if t0 <= t <= t1),
        "terminal_to_request_ms": {"p50": _pct(latencies, 0.5) * 1000, "p99": _pct(latencies, 0.99) * 1000,
                                   "n": len(latencies)},
    }


# -- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, max_dispose_s: int) -> dict[str, Any]:
    import asyncio

    agents = agent_names(args.agents)
    server = common.Server("dialer-bench-pacing-", keep=args.keep)
    procs: list[Any] = []
    try:
        server.start()
        common.psql(server.dsn, "CREATE DATABASE bench_pacing")
        dsn = server.database("bench_pacing")
        asyncio.run(_seed(dsn, args.leads))
        common.psql(dsn, "VACUUM (ANALYZE) calls")
        tmp = server.tmp
        sb_port, port = common.free_port(), common.free_port()
        sb_log = tmp / "sandbox.log"
        sb = common.spawn([sys.executable, str(Path(__file__).resolve()), "--_sandbox",
                           json.dumps({"port": sb_port, "agents": agents,
                                       "max_dispose_s": max_dispose_s})], sb_log)
        procs.append(sb)
        sb_url = f"http://127.0.0.1:{sb_port}"
        common.wait_http(f"{sb_url}/_sandbox/stats", sb, sb_log)
        state = tmp / "state"
        state.mkdir()
        write_config(state, agents, max_dispose_s)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
        env.update({
            "DIALER_DATABASE_URL": dsn, "DIALER_STATE_DIR": str(state),
            "DIALER_HTTP_LISTEN": f"127.0.0.1:{port}", "DIALER_LOG_FORMAT": "json",
            "DIALER_LOG_LEVEL": "warning", "DIALER_CALLBACK_SECRET": SECRET,
            "DIALER_API_TOKENS": "bench-api-token", "DIALER_RYNG_BASE_URL": sb_url,
            "DIALER_RYNG_TOKEN": TOKEN,
        })
        log_path = tmp / "daemon.log"
        before = common.machine_before()
        daemon = common.spawn([sys.executable, "-m", "dialer", "run"], log_path, env=env, cwd=state)
        procs.append(daemon)
        common.wait_http(f"http://127.0.0.1:{port}/readyz", daemon, log_path)
        now0 = float(common.get_json(f"{sb_url}/_sandbox/timeline?since=1e18")["now"])
        common.log(f"daemon ready; warming up {args.warmup:.0f} s, then measuring {args.seconds:.0f} s")
        time.sleep(args.warmup)  # a benchmark's wall-clock window, not a wait for a condition
        busy0 = common.machine_busy()
        load0 = os.getloadavg()[0]
        t0 = float(common.get_json(f"{sb_url}/_sandbox/timeline?since=1e18")["now"])
        time.sleep(args.seconds)
        t1 = float(common.get_json(f"{sb_url}/_sandbox/timeline?since=1e18")["now"])
        busy = common.machine_busy(busy0)
        load1 = os.getloadavg()[0]
        # a little past the window: the offer that closes the window's last gaps
        time.sleep(min(2.0 * max_dispose_s + 2.0, 12.0))
        events = common.get_json(f"{sb_url}/_sandbox/timeline?since={now0}")["events"]
        if args.events:
            Path(args.events).write_text(json.dumps({"t0": t0, "t1": t1, "events": events}))
        pending = int(common.psql(dsn, "SELECT count(*) FROM calls WHERE state = 'pending'"))
        code = common.stop(daemon)
        common.stop(sb)
        result = analyse(events, agents, t0, t1)
        result.update(agents=len(agents), leads=args.leads, max_dispose_s=max_dispose_s,
                      pending_left=pending, daemon_exit=code, machine_before=before,
                      machine_busy=busy, load1=[round(load0, 2), round(load1, 2)],
                      log_tail=common.tail(log_path, 1500) if code != 0 else "")
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                common.stop(p, timeout=10)
        server.close()


def report(r: dict[str, Any]) -> bool:
    g, lat = r["gap_ms"], r["terminal_to_request_ms"]
    gap_ok = g["p99"] <= GAP_P99_AIM_MS
    util_ok = r["utilisation"] >= UTILISATION_AIM
    print(f"\npacing benchmark: {r['agents']} agents, calls_per_agent 1, max_dispose_s {r['max_dispose_s']}, "
          f"{r['leads']:,} leads pending at the start, {os.cpu_count()} cores, Ryng sandbox in its own process")
    mb = r["machine_before"]
    print(f"machine before the run: {mb['busy']:.0%} busy, load average {mb['load1']:.2f}; during the window: "
          f"{r['machine_busy']:.0%} busy, load average {r['load1'][0]:.2f} -> {r['load1'][1]:.2f}")
    print(f"window {r['window_s']:.1f} s: {r['offered']:,} calls offered, {r['terminals']:,} terminal callbacks, "
          f"{r['requests']:,} requests to Ryng; {r['pending_left']:,} leads still pending at the end")
    print(f"{'':38}{'ours':>12}{'ideal':>12}")
    print(f"{'wrap-up end -> next call offered, p50':38}{g['p50']:>10.1f}ms{0:>10.1f}ms")
    print(f"{'  p99':38}{g['p99']:>10.1f}ms{0:>10.1f}ms   (aim <= {GAP_P99_AIM_MS:.0f} ms)"
          f"{'' if gap_ok else '  MISSED'}")
    print(f"{'  max / mean':38}{g['max']:>10.1f}ms / {g['mean']:.1f} ms over {r['gaps']:,} gaps "
          f"({r['gaps_censored']} never closed in the window)")
    print(f"{'agent utilisation (on call or wrap-up)':38}{r['utilisation']:>11.1%}{1:>11.0%}    "
          f"(aim >= {UTILISATION_AIM:.0%} of ideal){'' if util_ok else '  MISSED'}")
    print(f"{'terminal callback -> next chunk, p50':38}{lat['p50']:>10.1f}ms")
    print(f"{'  p99':38}{lat['p99']:>10.1f}ms   (over {lat['n']:,} terminal callbacks)")
    checks = {"leads were pending all along": r["pending_left"] > 0,
              "the daemon drained and exited 0 on SIGTERM": r["daemon_exit"] == 0,
              "calls were offered in the window": r["offered"] > 0}
    for name, ok in checks.items():
        print(common.check_line(name, ok))
    if r.get("log_tail"):
        print(r["log_tail"])
    return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--leads", type=int, default=5000)
    p.add_argument("--max-dispose-s", default="5,0", help="one run per value (comma-separated)")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds before the window opens")
    p.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--events", help="also write the sandbox's timeline (JSON) to this file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--_sandbox", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._sandbox:
        sandbox_child(args._sandbox)
        return 0
    ok = True
    for max_dispose_s in (int(v) for v in args.max_dispose_s.split(",")):
        r = run(args, max_dispose_s)
        ok = report(r) and ok
        if args.json:
            print(json.dumps({k: v for k, v in r.items() if k != "log_tail"}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
