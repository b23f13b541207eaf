"""Dispatch benchmark: pending calls submitted to a fast fake Ryng, against bulk SQL.

    python bench/dispatch.py [--calls 100000] [--keep] [--json] [--profile]

One throwaway embedded PostgreSQL (fsync on), one seeded database (N pending calls of
an ingested batch) copied three times:

* the limit: the same rows written set-based in one transaction (calls to submitting
  with their chunk, the chunks with their request JSON, an event per call, chunks sent,
  calls queued, an event per call), and, for scale, one plain ``UPDATE`` to 'queued';
* ours: the real ``Dispatcher`` (in a child process, as in the daemon: uvloop, asyncpg
  pool, httpx client), ``tick()`` until no call is left to send, against a fake Ryng
  (a minimal Starlette app in its own process) that counts every row it receives.

See bench/README.md. Only the standard library is imported at module level: the fake
and the dispatcher are children of this file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

DEFAULT_CALLS = 100_000
CHUNK_SIZE = 500
QUEUE_ID = "1"
REF_FIELD = 10
SECRET = "bench-callback-secret"
PUBLIC_URL = "http://127.0.0.1:9"  # callback URLs in the chunks; nothing calls back
LIMIT_LABEL = "bulk SQL, same writes (limit)"
UPDATE_LABEL = "one UPDATE to 'queued'"
OURS_LABEL = "dialer dispatch"

# -- the seeded database -----------------------------------------------------------------------


async def _seed(dsn: str, calls: int, history: int = 0) -> None:
    from dialer.store.database import create_pool

    await common.migrate(dsn)
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        if history:
            async with pool.acquire() as c, c.transaction():
                await common.seed_history(c, history)
        async with pool.acquire() as c, c.transaction():
            batch = uuid.uuid4()
            await c.execute("INSERT INTO batches (id, target, source, state, ingested_at) "
                            "VALUES ($1, 'sales', 'cli', 'ingested', now())", batch)
            # as intake leaves them: pending first attempts with a priority and custom fields
            await c.execute(
                "INSERT INTO calls (batch_id, target, line, raw_number, e164, priority, external_id, "
                "fields, state) "
                "SELECT $1, 'sales', g, '+1415' || (2000000 + g), '+1415' || (2000000 + g), g % 10, "
                "'CRM-' || g, jsonb_build_object('first_name', 'Name' || (g % 20), "
                "'company', 'Company ' || (g % 12)), 'pending' FROM generate_series(1, $2) g",
                batch, calls)
    finally:
        await pool.close()


def seed(server: common.Server, calls: int, history: int = 0) -> None:
    import asyncio

    common.psql(server.dsn, "CREATE DATABASE bench_seed")
    dsn = server.database("bench_seed")
    t0 = time.perf_counter()
    asyncio.run(_seed(dsn, calls, history))
    common.psql(dsn, "VACUUM (ANALYZE) calls")
    common.log(f"seeded {calls:,} pending calls in {time.perf_counter() - t0:.1f} s")


# -- the limit: the same writes, set-based ------------------------------------------------------

# Statements of one transaction, in the order the dispatcher does the work; $1 = now.
BULK = (
    ("calls → submitting, by chunk", f"""
        WITH o AS (
            SELECT id, (row_number() OVER (ORDER BY priority DESC, id) - 1) / {CHUNK_SIZE} + 1 AS chunk
            FROM calls WHERE target = 'sales' AND state = 'pending'
        )
        UPDATE calls c SET state = 'submitting', chunk_id = o.chunk, updated_at = $1
        FROM o WHERE c.id = o.id"""),
    ("chunks with their request JSON", f"""
        INSERT INTO chunks (id, target, token, state, rows, request, kind, created_at)
        SELECT chunk_id, 'sales', 'chunk.' || chunk_id, 'recorded', count(*),
               jsonb_build_object('kind', 'queue', 'queue_id', '{QUEUE_ID}', 'body', jsonb_build_object(
                   'agentMapping', 'all-agents', 'customerData', jsonb_build_object(
                       'connectCallbackUrl', '{PUBLIC_URL}/callbacks/ryng/connect/chunk.' || chunk_id,
                       'terminalCallbackUrl', '{PUBLIC_URL}/callbacks/ryng/terminal/chunk.' || chunk_id,
                       'jsonData', jsonb_agg(jsonb_build_object(
                           'number', e164, 'priority', priority,
                           'customField1', fields->>'company', 'customField2', fields->>'first_name',
                           'customField{REF_FIELD}', 'dl' || id) ORDER BY priority DESC, id)))),
               'queue', $1
        FROM calls WHERE state = 'submitting' GROUP BY chunk_id"""),
    ("an event per call (chunked)", """
        INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload)
        SELECT id, $1, 'chunked', 'pending', 'submitting', true, jsonb_build_object('chunk_id', chunk_id)
        FROM calls WHERE state = 'submitting'"""),
    ("chunks → sent", """
        UPDATE chunks SET state = 'sent', attempts = 1, http_status = 200,
               response = '{"status": "success"}', sent_at = $1, finished_at = $1
        WHERE state = 'recorded'"""),
    ("calls → queued", """
        UPDATE calls SET state = 'queued', submitted_at = $1, updated_at = $1
        WHERE state = 'submitting'"""),
    ("an event per call (submitted)", """
        INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload)
        SELECT id, $1, 'submitted', 'submitting', 'queued', true,
               jsonb_build_object('chunk_id', chunk_id, 'status', 200)
        FROM calls WHERE state = 'queued'"""),
)
ONE_UPDATE = """
    UPDATE calls SET state = 'queued', submitted_at = $1, updated_at = $1
    WHERE target = 'sales' AND state = 'pending'"""


async def _bulk(dsn: str, statements: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    from datetime import UTC, datetime

    from dialer.store.database import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=1)
    phases: dict[str, float] = {}
    try:
        async with pool.acquire() as c:
            now = datetime.now(UTC)
            t0 = time.perf_counter()
            async with c.transaction():
                for name, sql in statements:
                    t = time.perf_counter()
                    await c.execute(sql, now)
                    phases[name] = time.perf_counter() - t
            seconds = time.perf_counter() - t0  # commit included
            queued = int(await c.fetchval("SELECT count(*) FROM calls WHERE state = 'queued'"))
    finally:
        await pool.close()
    return {"seconds": seconds, "phases": phases, "queued": queued}


def run_bulk(server: common.Server, name: str, statements: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    import asyncio

    dsn = common.clone_database(server, "bench_seed", name)
    common.psql(server.dsn, "CHECKPOINT")
    res = asyncio.run(_bulk(dsn, statements))
    common.done_with(server, name)  # untimed: nothing of it left to slow the next run
    return res


# -- the fake Ryng (child process) ---------------------------------------------------------------


def fake_ryng(spec_json: str) -> None:
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    spec = json.loads(spec_json)
    ref_key = f"customField{spec['ref_field']}"
    refs: list[str] = []
    stats = {"requests": 0, "rows": 0, "bad": 0}

    async def append(request: Request) -> Response:
        body = orjson.loads(await request.body())
        stats["requests"] += 1
        try:
            rows = body["customerData"]["jsonData"]
        except (KeyError, TypeError):
            stats["bad"] += 1
            return Response(b'{"status":"error","message":"no customerData.jsonData"}', 400,
                            media_type="application/json")
        stats["rows"] += len(rows)
        refs.extend(str(r.get(ref_key)) for r in rows)
        return Response(b'{"status":"success"}', 200, media_type="application/json")

    async def report(request: Request) -> Response:
        return Response(orjson.dumps({**stats, "refs": refs}), media_type="application/json")

    async def readyz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app = Starlette(routes=[
        Route("/rest-api/v1/progressive/queue/{queue_id}/calls", append, methods=["POST"]),
        Route("/_stats", report), Route("/readyz", readyz),
    ])
    uvicorn.run(app, host="127.0.0.1", port=int(spec["port"]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning")


# -- ours: the real Dispatcher, ticking until nothing is left (child process) ---------------------


class _Timer:
    """Wall time inside a few dispatcher methods (bench-side wrappers; summed over workers)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        fn = getattr(obj, attr)

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

        setattr(obj, attr, wrapped)


def ours_child(spec_json: str) -> None:
    import anyio

    spec = json.loads(spec_json)
    result = anyio.run(_ours, spec, backend_options={"use_uvloop": True})
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(spec["out"]).write_text(json.dumps(result))


async def _ours(spec: dict[str, Any]) -> dict[str, Any]:
    from dialer.clock import SystemClock
    from dialer.config import load_settings
    from dialer.dispatch import outbox
    from dialer.dispatch.dispatcher import Dispatcher
    from dialer.providers.ryng.client import RyngClient, SendResult
    from dialer.store.database import create_pool

    calls = int(spec["calls"])
    with contextlib.chdir(spec["state_dir"]):  # never pick up a ./dialer.toml from the caller's cwd
        settings = load_settings(None, environ={
            "DIALER_DATABASE_URL": spec["dsn"], "DIALER_STATE_DIR": spec["state_dir"],
            "DIALER_API_TOKENS": "x", "DIALER_CALLBACK_SECRET": SECRET,
            "DIALER_RYNG_BASE_URL": spec["ryng_url"], "DIALER_PUBLIC_URL": PUBLIC_URL,
        }, overrides={"targets": {"sales": {
            "queue_id": QUEUE_ID, "agent_mapping": "all-agents", "calling_hours": "00:00-24:00",
            "chunk_size": CHUNK_SIZE, "ref_field": REF_FIELD,
            "calls_per_agent": max(100_000, calls),  # pacing never limits
        }}})
    pool = await create_pool(spec["dsn"], max_size=settings.db_pool_size)  # as the daemon opens it
    client = RyngClient(str(settings.ryng_base_url), "bench-token", timeout=settings.ryng_timeout_s)
    sends: dict[str, int] = {}
    first_send: list[float] = []

    def on_send(target: str, r: SendResult) -> None:
        sends[r.kind] = sends.get(r.kind, 0) + 1
        if not first_send:
            first_send.append(time.perf_counter())

    dispatcher = Dispatcher(pool, settings, SystemClock(), client, settings.secret(), "bench-1",
                            on_send=on_send)
    timer = _Timer()
    timer.wrap(dispatcher, "fill_all", "fill (record chunks)")
    timer.wrap(dispatcher, "send_all", "send (HTTP + settle)")
    timer.wrap(outbox, "record_chunk", "record_chunk")
    timer.wrap(dispatcher, "_post", "http post")
    timer.wrap(dispatcher, "_settle", "settle")
    left_sql = ("SELECT (SELECT count(*) FROM calls WHERE state IN ('pending', 'scheduled', 'retry_wait', "
                "'submitting')) + (SELECT count(*) FROM chunks WHERE state IN ('recorded', 'sending'))")
    ticks = stalls = 0
    try:
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        while True:
            r = await dispatcher.tick()
            ticks += 1
            async with pool.acquire() as conn:
                left = int(await conn.fetchval(left_sql))
            if left == 0:
                break
            stalls = stalls + 1 if r["filled"] == 0 and r["sent"] == 0 else 0
            if stalls >= 3:
                raise RuntimeError(f"the dispatcher makes no progress with {left:,} calls/chunks left")
        seconds = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await client.close()
        await pool.close()
    return {
        "seconds": seconds,
        "cpu_user": ru1.ru_utime - ru0.ru_utime,
        "cpu_sys": ru1.ru_stime - ru0.ru_stime,
        "ticks": ticks,
        "sends": sends,
        "first_send_s": (first_send[0] - t0) if first_send else None,
        "phases": timer.seconds,
    }


def run_ours(server: common.Server, calls: int, args: argparse.Namespace) -> dict[str, Any]:
    dsn = common.clone_database(server, "bench_seed", "bench_ours")
    common.psql(server.dsn, "CHECKPOINT")
    tmp = server.tmp
    port = common.free_port()
    fake_log = tmp / "fake-ryng.log"
    fake = common.spawn([sys.executable, str(Path(__file__).resolve()), "--_fake",
                         json.dumps({"port": port, "ref_field": REF_FIELD})], fake_log)
    state = tmp / "state"
    state.mkdir(exist_ok=True)
    out = tmp / "ours.json"
    spec = {"dsn": dsn, "state_dir": str(state), "ryng_url": f"http://127.0.0.1:{port}",
            "calls": calls, "out": str(out)}
    try:
        common.wait_http(f"http://127.0.0.1:{port}/readyz", fake, fake_log)
        if args.profile:
            common.reset_statement_stats(dsn)
        cpu_pg = common.CpuMeter(server.postmaster_pid())
        cpu_fake = common.CpuMeter(fake.pid)
        cpu_pg.start()
        cpu_fake.start()
        machine0 = common.machine_busy()
        child = common.spawn([sys.executable, str(Path(__file__).resolve()), "--_ours", json.dumps(spec)],
                             tmp / "ours.log")
        spy = start_profiler(child.pid, tmp / "ours.pyspy.txt") if args.profile else None
        code = child.wait()
        machine = common.machine_busy(machine0)
        cpu_pg.stop()
        cpu_fake.stop()
        if spy is not None:
            spy.wait(30)
        if code != 0 or not out.exists():
            raise RuntimeError(f"the dispatcher child failed (exit code {code}):\n{common.tail(tmp / 'ours.log')}")
        res: dict[str, Any] = json.loads(out.read_text())
        fake_stats = common.get_json(f"http://127.0.0.1:{port}/_stats")
    finally:
        common.stop(fake, 10)
    res["machine_busy"] = machine
    res["cpu_postgres"] = cpu_pg.seconds
    res["cpu_fake"] = cpu_fake.seconds
    res["fake"] = fake_stats
    counts = json.loads(common.psql(dsn, (
        "SELECT json_build_object("
        "'ids', (SELECT json_agg(id ORDER BY id) FROM calls WHERE coalesce(chunk_id, 0) >= 0),"
        "'states', (SELECT json_object_agg(state, n) FROM (SELECT state, count(*) AS n FROM calls WHERE coalesce(chunk_id, 0) >= 0 GROUP BY state) s),"
        "'chunks', (SELECT json_object_agg(state, n) FROM (SELECT state, count(*) AS n FROM chunks GROUP BY state) s),"
        "'events', (SELECT json_object_agg(kind, n) FROM (SELECT kind, count(*) AS n FROM call_events GROUP BY kind) e))"
    )))
    res["db"] = counts
    if args.profile:
        res["statements"] = common.statement_stats(dsn, "bench_ours")
        res["profile_file"] = str(tmp / "ours.pyspy.txt")
    return res


def start_profiler(pid: int, out: Path) -> Any:
    import subprocess

    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit(f"--profile needs py-spy in the virtualenv: {sys.executable} -m pip install py-spy")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                             "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- report ------------------------------------------------------------------------------------


def verify(calls: int, ours: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    import collections

    fake = ours["fake"]
    db = ours["db"]
    ids = db["ids"] or []
    expected = collections.Counter(f"dl{i}" for i in ids)
    got = collections.Counter(fake["refs"])
    twice = sum(1 for n in got.values() if n > 1)
    missing = sum(1 for r in expected if r not in got)
    unknown = sum(1 for r in got if r not in expected)
    states = db["states"] or {}
    chunks = db["chunks"] or {}
    events = db["events"] or {}
    return {
        "every call received exactly once by the fake Ryng": (
            len(ids) == calls and twice == 0 and missing == 0 and unknown == 0 and fake["rows"] == calls,
            f"{fake['rows']:,} rows in {fake['requests']:,} requests; {len(got):,} distinct references, "
            f"{twice:,} received twice, {missing:,} missing, {unknown:,} unknown"),
        "every call ends 'queued'": (
            states == {"queued": calls}, ", ".join(f"{k} {v:,}" for k, v in sorted(states.items()))),
        "every chunk 'sent', one request each": (
            set(chunks) == {"sent"} and chunks["sent"] == fake["requests"] and fake["bad"] == 0,
            ", ".join(f"{k} {v:,}" for k, v in sorted(chunks.items()))),
        "an event per call and step": (
            events.get("chunked") == calls and events.get("submitted") == calls,
            ", ".join(f"{k} {v:,}" for k, v in sorted(events.items()))),
    }


def report(calls: int, limit: dict[str, Any], one: dict[str, Any], ours: dict[str, Any],
           before: dict[str, float]) -> dict[str, Any]:
    checks = verify(calls, ours)
    checks["the limit queued every call"] = (limit["queued"] == calls and one["queued"] == calls,
                                            f"{limit['queued']:,} and {one['queued']:,}")
    ours_s = float(ours["seconds"])
    limit_s = float(limit["seconds"])
    ratio = limit_s / ours_s
    cpu = ours["cpu_user"] + ours["cpu_sys"]
    per_k = 1000 * cpu / calls

    print()
    print(f"dispatch benchmark: {calls:,} pending calls, chunks of {CHUNK_SIZE}, {os.cpu_count()} cores, "
          f"fake Ryng on loopback")
    print(f"machine before the run: {before['busy']:.0%} busy, load average {before['load1']:.2f}; "
          f"during ours: {ours['machine_busy']:.0%} busy")
    print(f"{'':32} {'seconds':>8} {'calls/s':>9} {'ratio':>6}")
    print(f"{LIMIT_LABEL:32} {limit_s:8.2f} {calls / limit_s:9,.0f} {1:6.2f}")
    print(f"  {UPDATE_LABEL:30} {one['seconds']:8.2f} {calls / one['seconds']:9,.0f}")
    print(f"{OURS_LABEL:32} {ours_s:8.2f} {calls / ours_s:9,.0f} {ratio:6.2f}   "
          f"(headroom: the same writes in bulk are {1 / ratio:.1f}x faster)")
    print(f"  dispatching process CPU: {cpu:.2f} s = {per_k:.3f} s per 1,000 calls "
          f"(user {ours['cpu_user']:.2f}, sys {ours['cpu_sys']:.2f}; {cpu / ours_s:.0%} of one core); "
          f"peak RSS {ours['rss_mb']:.0f} MB")
    print(f"  PostgreSQL CPU {ours['cpu_postgres']:.2f} s ({1000 * ours['cpu_postgres'] / calls:.3f} s per 1,000), "
          f"fake Ryng CPU {ours['cpu_fake']:.2f} s")
    ph = ours.get("phases") or {}
    fill = ph.get("fill (record chunks)", 0.0)
    send = ph.get("send (HTTP + settle)", 0.0)
    print(f"  of which (s): fill (record chunks) {fill:.2f}, send (HTTP + settle, 4 workers) {send:.2f}, "
          f"other {max(ours_s - fill - send, 0.0):.2f}; summed over workers: "
          f"http post {ph.get('http post', 0.0):.2f}, settle {ph.get('settle', 0.0):.2f}")
    first = ours.get("first_send_s")
    print(f"  {ours['ticks']} tick(s); {sum(ours['sends'].values()):,} chunks sent "
          f"({', '.join(f'{k} {v}' for k, v in ours['sends'].items())}); "
          f"first chunk sent after {first if first is not None else float('nan'):.2f} s")
    print("  limit breakdown (s): " + ", ".join(f"{k} {v:.2f}" for k, v in limit["phases"].items()))
    for name, (ok, detail) in checks.items():
        print(common.check_line(name, ok, detail))
    return {
        "calls": calls,
        "chunk_size": CHUNK_SIZE,
        "cores": os.cpu_count(),
        "machine_before": before,
        "machine_busy_ours": ours["machine_busy"],
        "limit_seconds": round(limit_s, 3),
        "limit_calls_per_s": round(calls / limit_s),
        "limit_phases_seconds": {k: round(v, 3) for k, v in limit["phases"].items()},
        "one_update_seconds": round(one["seconds"], 3),
        "one_update_calls_per_s": round(calls / one["seconds"]),
        "ours_seconds": round(ours_s, 3),
        "ours_calls_per_s": round(calls / ours_s),
        "ratio": round(ratio, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_seconds_per_1000_calls": round(per_k, 4),
        "cpu_user": round(ours["cpu_user"], 3),
        "cpu_sys": round(ours["cpu_sys"], 3),
        "postgres_cpu_seconds": round(ours["cpu_postgres"], 3),
        "fake_cpu_seconds": round(ours["cpu_fake"], 3),
        "rss_mb": round(ours["rss_mb"], 1),
        "ticks": ours["ticks"],
        "sends": ours["sends"],
        "first_send_s": None if first is None else round(first, 3),
        "phases_seconds": {k: round(v, 3) for k, v in ph.items()},
        "fake": {k: v for k, v in ours["fake"].items() if k != "refs"},
        "checks_ok": all(ok for ok, _ in checks.values()),
    }


def print_statements(calls: int, stmts: list[dict[str, Any]]) -> None:
    total = sum(float(s["exec_ms"]) for s in stmts)
    print()
    print(f"statements of ours (pg_stat_statements): {sum(s['calls'] for s in stmts):,} executions, "
          f"{total / 1000:.2f} s exec in total; heaviest (calls, exec s, exec ms per 1,000 calls):")
    for st in stmts[:12]:
        ms = float(st["exec_ms"])
        print(f"  {st['calls']:7,} {ms / 1000:7.2f} {ms / calls * 1000:8.1f}  {st['query'][:110]}")


def print_profile(path: Path) -> dict[str, Any]:
    import callbacks  # the same summariser

    prof = callbacks.summarise_profile(path)
    total = prof["samples"] or 1
    print()
    print(f"profile of the dispatching process (py-spy, {prof['samples']:,} samples):")
    for label, n in prof["buckets"]:
        print(f"  {n / total:6.1%}  {label}")
    print("  top self time:")
    for name, n in prof["self"][:15]:
        print(f"    {n / total:6.1%}  {name}")
    print("  dialer functions, inclusive:")
    for name, n in prof["inclusive_dialer"][:20]:
        print(f"    {n / total:6.1%}  {name}")
    return prof


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=DEFAULT_CALLS, help="pending calls (default %(default)s)")
    p.add_argument("--history", type=int, default=0,
                   help="ended calls already in the database (cost growth: try 10000000)")
    p.add_argument("--keep", action="store_true", help="leave PostgreSQL running with the databases")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    p.add_argument("--profile", action="store_true",
                   help="py-spy on the dispatcher and pg_stat_statements on its database "
                        "(slows ours down: not for the reference figures)")
    p.add_argument("--_fake", help=argparse.SUPPRESS)
    p.add_argument("--_ours", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._fake:
        fake_ryng(args._fake)
        return 0
    if args._ours:
        ours_child(args._ours)
        return 0
    if args.calls < 1:
        p.error("--calls must be at least 1")

    before = common.machine_before()
    figures: dict[str, Any] = {}
    with common.throwaway_server("dialer-bench-dispatch-", keep=args.keep) as server:
        if args.profile:
            server.enable_statement_stats()
        seed(server, args.calls, args.history)
        common.log("limit: the same writes in bulk ...")
        limit = run_bulk(server, "bench_bulk", BULK)
        one = run_bulk(server, "bench_update", (("one update", ONE_UPDATE),))
        common.log(f"limit: {limit['seconds']:.2f} s (one UPDATE {one['seconds']:.2f} s); "
                   "ours: the Dispatcher against a fake Ryng ...")
        ours = run_ours(server, args.calls, args)
        figures = report(args.calls, limit, one, ours, before)
        figures["history"] = args.history
        if args.history:
            print(f"history: {args.history:,} ended calls of the same target already in the database")
        if args.profile:
            print_statements(args.calls, ours["statements"])
            figures["statements"] = ours["statements"][:20]
            figures["profile"] = print_profile(Path(ours["profile_file"]))
        if args.json:
            print(json.dumps(figures))
    return 0 if figures.get("checks_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
