"""No callback lost: PostgreSQL stopped under a callback stream; kill -9 during a flood."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from dialer.clock import SystemClock
from dialer.config import load_settings
from dialer.dispatch.chunker import call_ref
from dialer.http import callbacks
from dialer.lifecycle.dispositions import Dispositions
from dialer.lifecycle.service import CallbackService
from dialer.lifecycle.spool import Spool
from dialer.signing import make_token
from dialer.store import migrate
from dialer.store.database import create_pool
from dialer.store.embedded import EmbeddedPostgres
from tests.conftest import DaemonProcess, await_for, wait_for
from tests.stack import SandboxConfig, free_port, serve

# 15 s by default (the outages test's), a minute with DIALER_SLOW=1
OUTAGE_S = float(os.environ.get("DIALER_OUTAGE_S", "60" if os.environ.get("DIALER_SLOW") == "1" else "15"))


async def test_postgres_stopped_under_a_callback_stream_loses_nothing(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", fsync=False)
    dsn = await asyncio.to_thread(pg.start)
    try:
        settings = load_settings(None, environ={"DIALER_DATABASE_URL": dsn, "DIALER_STATE_DIR": str(tmp_path),
                                                "DIALER_API_TOKENS": "t", "DIALER_CALLBACK_SECRET": "s3cret-s3cret"})
        secret = settings.secret()
        pool = await create_pool(dsn, min_size=2, max_size=4)
        n_calls = 400
        async with pool.acquire() as conn:
            await migrate.migrate(conn)
            bid = await conn.fetchval("INSERT INTO batches (target, source, state) VALUES ('sales', 'api', 'ingested') "
                                      "RETURNING id")
            await conn.execute("INSERT INTO chunks (id, target, token, state) VALUES (1, 'sales', 't', 'sent')")
            await conn.execute(
                "INSERT INTO calls (batch_id, target, line, e164, state, chunk_id) "
                "SELECT $1, 'sales', g, '+1415' || (2000000 + g)::text, 'queued', 1 FROM generate_series(1, $2) g",
                bid, n_calls)
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM calls ORDER BY id")]
        spool = Spool(tmp_path / "spool")
        service = CallbackService(pool, SystemClock(), Dispositions(), spool, settings=settings)
        from starlette.applications import Starlette

        port = free_port()
        app = Starlette(routes=callbacks.routes(lambda: service, secret))
        url = f"http://127.0.0.1:{port}/callbacks/ryng/terminal/{make_token(secret, 'chunk', 1)}"
        acked: list[int] = []
        async with serve(app, port), httpx.AsyncClient(timeout=10) as http:
            replayer = asyncio.create_task(service.run_replayer(retry_s=0.2))
            stream_done = asyncio.Event()

            async def stream() -> None:
                for cid in ids:
                    r = await http.post(url, json={"event": "terminated", "disposition": "ANSWERED",
                                                   "customField10": call_ref(cid)})
                    assert r.status_code == 200, r.text
                    acked.append(cid)
                    await asyncio.sleep(OUTAGE_S * 2 / n_calls)  # spread the stream over the outage
                stream_done.set()

            sender = asyncio.create_task(stream())
            await await_for(lambda: len(acked) >= n_calls // 8, 30, "stream under way")
            await asyncio.to_thread(pg.stop, "fast")
            spooled_from = len(acked)
            await await_for(lambda: len(acked) >= spooled_from + n_calls // 4, OUTAGE_S + 30, "stream while down")
            assert spool.depth > 0
            await asyncio.sleep(max(0.0, OUTAGE_S - 1))  # the outage itself, not a wait for a condition
            await asyncio.to_thread(pg.start)
            await stream_done.wait()
            await sender
            await await_for(lambda: spool.depth == 0, 60, "spool drained")
            replayer.cancel()
        assert len(acked) == n_calls
        async with pool.acquire() as conn:
            done = await conn.fetchval("SELECT count(*) FROM calls WHERE state = 'answered'")
            order = [r["call_id"] for r in await conn.fetch("SELECT call_id FROM call_events ORDER BY id")]
        assert done == n_calls
        assert order == ids  # replayed in arrival order
        await pool.close()
        spool.close()
    finally:
        await asyncio.to_thread(pg.destroy)


def test_kill_9_during_a_callback_flood_loses_nothing(daemon_env: dict[str, str], tmp_path: Path, db_url: str) -> None:
    """The sandbox (Ryng's retry rules) floods a real daemon; we kill -9 it mid-flood."""
    from dialer.providers.ryng.sandbox import RyngSandbox

    async def scenario() -> dict[str, Any]:
        port = free_port()
        cfg = SandboxConfig(time_scale=0.05, seed=3, ring_s=(0.2, 1), talk_s=(1, 4), default_max_dispose_s=0,
                            agent_pickup_s=0, agents=[f"a{i}" for i in range(40)], token="sb-token")
        sandbox = RyngSandbox(cfg)
        # a send cut by the kill before the sandbox took it waits as uncertain (never blindly
        # resent) until uncertain_after_min: short here, or the wait outlasts the test
        env = {**daemon_env, "DIALER_RYNG_BASE_URL": f"http://127.0.0.1:{port}", "DIALER_RYNG_TOKEN": "sb-token",
               "DIALER_CONFIG": str(tmp_path / "d.toml"), "DIALER_UNCERTAIN_AFTER_MIN": "0.1",
               "DIALER_INSTANCE_STALE_S": "3"}
        agents = ", ".join(f'"a{i}"' for i in range(40))
        (tmp_path / "d.toml").write_text(
            f'[targets.sales]\nqueue_id = "1"\nagent_mapping = "global"\nagents = [{agents}]\n'
            'calling_hours = "00:00-24:00"\ncalls_per_agent = 10\nchunk_size = 100\n')
        d = DaemonProcess(env, tmp_path)
        async with serve(sandbox.app, port):
            await sandbox.start()
            await asyncio.to_thread(d.start)
            with d.client() as c:
                leads = [{"number": f"+1415{3000000 + i:07d}"} for i in range(400)]
                assert c.post("/v1/batches", json={"leads": leads}).status_code == 202

            def callbacks_flowing() -> bool:
                return int(sandbox.stats()["callbacks"]["terminal"]["delivered"]) > 50

            await asyncio.to_thread(wait_for, callbacks_flowing, 60, "callback flood")
            await asyncio.to_thread(d.kill9)
            await asyncio.to_thread(d.start)

            def all_ended() -> bool:
                async def q() -> int:
                    conn = await asyncpg.connect(db_url)
                    try:
                        return int(await conn.fetchval(
                            "SELECT count(*) FROM calls WHERE state IN ('answered','no_answer','busy','unreachable','failed')"))
                    finally:
                        await conn.close()
                return asyncio.run(q()) == 400

            try:
                await asyncio.to_thread(wait_for, all_ended, 120, "all 400 calls ended")
            except AssertionError as e:  # say where the others are, and what Ryng did with their callbacks
                conn = await asyncpg.connect(db_url)
                try:
                    states = dict(await conn.fetch("SELECT state, count(*) FROM calls GROUP BY state"))
                finally:
                    await conn.close()
                raise AssertionError(f"{e}: calls by state {states}; sandbox callbacks "
                                     f"{sandbox.stats()['callbacks']}") from None

            def acknowledged() -> bool:  # a callback the killed daemon committed is acked on Ryng's retry
                t = sandbox.stats()["callbacks"]["terminal"]
                return int(t["delivered"]) >= 400 or int(t["given_up"]) > 0

            await asyncio.to_thread(wait_for, acknowledged, 60, "every terminal callback acknowledged")
            stats = sandbox.stats()
            rc = await asyncio.to_thread(d.stop)
            await sandbox.stop()
        return {"stats": stats, "rc": rc}

    out = asyncio.run(scenario())
    cb = out["stats"]["callbacks"]
    # every terminal callback was acknowledged in the end (some only on Ryng's retry)
    assert cb["terminal"]["given_up"] == 0
    assert cb["terminal"]["delivered"] >= 400
    assert cb["terminal"]["failed"] > 0  # the kill did land mid-flood
    assert out["rc"] == 0
