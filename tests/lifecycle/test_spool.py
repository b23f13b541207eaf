"""The spool on real files (and a real PostgreSQL): what was acknowledged is replayed,
exactly once, in order, and nothing in it can wedge the replay."""

from __future__ import annotations

import asyncio
import base64
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio.lowlevel
import asyncpg
import orjson

from dialer import metrics
from dialer.config import Settings
from dialer.lifecycle.spool import QUARANTINE, Spool, Spooled
from tests.conftest import ROOT, await_for
from tests.lifecycle.seeded import ended, queued_calls, refuse_agent, service, spooled, states


def item(n: int) -> Spooled:
    return Spooled("terminal", 1, "application/json", orjson.dumps({"n": n, "pad": "x" * 200}),
                   "2025-01-01T00:00:00+00:00")


async def replayed(spool: Spool) -> list[int]:
    got: list[int] = []

    async def apply(it: Spooled) -> None:
        got.append(orjson.loads(it.body)["n"])

    await spool.replay(apply)
    return got


def run_child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A real process doing spool work (for what a test process must not do to itself)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


CHILD_HEADER = """
    import asyncio, os, resource, signal, sys
    from pathlib import Path
    import orjson
    from dialer.lifecycle.spool import Spool, Spooled

    def item(n):
        return Spooled("terminal", 1, "application/json", orjson.dumps({"n": n, "pad": "x" * 200}),
                       "2025-01-01T00:00:00+00:00")
"""


def test_a_short_write_is_finished_or_refused_and_never_glued_to_the_next(tmp_path: Path) -> None:
    """A file-size limit makes the kernel write only part of a line: that callback must not
    be acknowledged, and the next one must not land after the torn part."""
    out = run_child(CHILD_HEADER + """
    async def main(d):
        spool = Spool(d)
        await spool.append(item(0))
        seg = next(d.glob("seg-*.jsonl"))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (seg.stat().st_size + 100, hard))
        try:
            await spool.append(item(1))
            print("acknowledged 1")
        except OSError:
            print("refused 1")
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        await spool.append(item(2))
        print("acknowledged 2")
        spool.close()

    asyncio.run(main(Path(sys.argv[1])))
    """, str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["refused 1", "acknowledged 2"]
    spool = Spool(tmp_path)
    assert spool.depth == 2
    assert asyncio.run(replayed(spool)) == [0, 2]


def test_kill_9_mid_replay_replays_at_most_the_item_in_progress(tmp_path: Path) -> None:
    log = tmp_path / "applied.txt"
    out = run_child(CHILD_HEADER + """
    async def main(d, log):
        spool = Spool(d)
        for n in range(6):
            await spool.append(item(n))

        async def apply(it):
            n = orjson.loads(it.body)["n"]
            if n == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            with open(log, "a") as f:
                f.write(f"{n}\\n")

        await spool.replay(apply)

    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
    """, str(tmp_path / "spool"), str(log))
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert log.read_text().split() == ["0", "1", "2"]
    spool = Spool(tmp_path / "spool")
    assert spool.depth == 3
    assert asyncio.run(replayed(spool)) == [3, 4, 5]
    assert spool.depth == 0


def test_segment_names_are_never_reused_and_a_stale_offset_is_never_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        # an offset left behind by a crash between deleting a segment and deleting its offset
        (tmp_path / "seg-00000001.offset").write_text("100000")
        spool = Spool(tmp_path)
        await spool.append(item(0))
        await spool.append(item(1))
        first = {p.name for p in tmp_path.glob("seg-*.jsonl")}
        assert await replayed(spool) == [0, 1]
        assert spool.depth == 0
        assert not list(tmp_path.glob("seg-*"))  # both files of a replayed segment are gone
        spool.close()
        # a restart with an empty directory: the next segment gets a name never used before
        spool = Spool(tmp_path)
        await spool.append(item(2))
        second = {p.name for p in tmp_path.glob("seg-*.jsonl")}
        assert not first & second and max(second) > max(first)
        assert await replayed(spool) == [2]
        spool.close()

    asyncio.run(scenario())


def test_an_offset_without_its_segment_is_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / "seg-00000007.offset").write_text("42")
    Spool(tmp_path).close()
    assert not list(tmp_path.glob("*.offset"))


async def test_one_replay_at_a_time_the_second_caller_replays_what_is_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for n in range(5):
        await spool.append(item(n))
    applied: list[int] = []
    depths: list[int] = []
    gate = asyncio.Event()

    async def apply(it: Spooled) -> None:
        n = orjson.loads(it.body)["n"]
        applied.append(n)
        depths.append(spool.depth)
        if n == 0:
            await gate.wait()  # the first replay is mid-item when the second one starts
        await anyio.lowlevel.checkpoint()  # as a database round trip would

    first = asyncio.create_task(spool.replay(apply))
    await await_for(lambda: applied == [0], 10, "first replay under way")
    await spool.append(item(5))  # arrives during the replay
    second = asyncio.create_task(spool.replay(apply))
    gate.set()
    done = await first + await second
    assert applied == [0, 1, 2, 3, 4, 5]
    assert done == 6
    assert spool.depth == 0 and min(depths) > 0
    spool.close()


async def test_replay_beside_the_replayer_applies_each_callback_once(pool: asyncpg.Pool, settings: Settings,
                                                                     tmp_path: Path) -> None:
    """The daemon's drain calls replay_once() while run_replayer may be replaying."""
    ids = await queued_calls(pool, 60)
    svc = service(pool, settings, tmp_path / "spool")
    for cid in ids:
        await svc.spool.append(spooled(ended(cid)))
    replayer = asyncio.create_task(svc.run_replayer(retry_s=0.05))
    try:
        counts = await asyncio.gather(svc.replay_once(), svc.replay_once())
        await await_for(lambda: svc.spool.depth == 0, 30, "spool drained")
    finally:
        replayer.cancel()
    assert sum(counts) <= len(ids)
    assert svc.spool.depth == 0
    async with pool.acquire() as conn:
        events = await conn.fetch("SELECT call_id, applied FROM call_events ORDER BY id")
    assert [e["call_id"] for e in events] == ids  # once each, in arrival order
    assert all(e["applied"] for e in events)
    assert set((await states(pool)).values()) == {"answered"}
    svc.spool.close()


def quarantined_total() -> float:
    return metrics.current().registry.get_sample_value("dialer_spool_quarantined_total") or 0.0


async def test_an_item_the_database_refuses_is_quarantined_and_replay_moves_on(
        pool: asyncpg.Pool, settings: Settings, tmp_path: Path) -> None:
    a, b, c = await queued_calls(pool, 3)
    await refuse_agent(pool, "mallory")
    svc = service(pool, settings, tmp_path / "spool")
    poison = ended(b, agent="mallory")
    for body in (ended(a), poison, ended(c)):
        await svc.spool.append(spooled(body))
    before = quarantined_total()
    assert await svc.replay_once() == 3
    assert svc.spool.depth == 0
    assert await states(pool) == {a: "answered", b: "queued", c: "answered"}
    # the dead letter: on disk (fsync'd), counted, and in the audit table
    dead = [orjson.loads(line) for line in (tmp_path / "spool" / QUARANTINE).read_bytes().splitlines()]
    assert len(dead) == 1
    assert base64.b64decode(dead[0]["body"]) == poison and dead[0]["chunk_id"] == 1
    assert "CheckViolationError" in dead[0]["error"]
    assert quarantined_total() == before + 1
    async with pool.acquire() as conn:
        ev = await conn.fetchrow("SELECT call_id, applied, payload FROM call_events WHERE kind = 'spool_quarantined'")
    assert ev["call_id"] is None and ev["applied"] is False
    p: dict[str, Any] = ev["payload"]
    assert p["chunk_id"] == 1 and "no_mallory" in p["error"]
    assert base64.b64decode(p["body_base64"]) == poison
    svc.spool.close()


async def test_the_replayer_is_not_wedged_by_a_refused_item(pool: asyncpg.Pool, settings: Settings,
                                                            tmp_path: Path) -> None:
    a, b, c = await queued_calls(pool, 3)
    await refuse_agent(pool, "mallory")
    svc = service(pool, settings, tmp_path / "spool")
    await svc.spool.append(spooled(ended(b, agent="mallory")))
    await svc.spool.append(spooled(ended(a)))
    replayer = asyncio.create_task(svc.run_replayer(retry_s=0.05))
    try:
        await await_for(lambda: svc.spool.depth == 0, 30, "spool drained past the refused item")
        # nothing is spooled any more, so a new callback goes straight to the database
        assert await svc.receive(1, "terminal", ended(c), "application/json") == "stored"
    finally:
        replayer.cancel()
    assert await states(pool) == {a: "answered", b: "queued", c: "answered"}
    svc.spool.close()


async def test_an_unreadable_line_is_quarantined(pool: asyncpg.Pool, settings: Settings, tmp_path: Path) -> None:
    (a,) = await queued_calls(pool, 1)
    svc = service(pool, settings, tmp_path / "spool")
    await svc.spool.append(spooled(ended(a)))
    seg = next((tmp_path / "spool").glob("seg-*.jsonl"))
    seg.write_bytes(b'{"kind": "terminal", "body": "@@"}\n' + seg.read_bytes())  # e.g. an old bug's line
    svc.spool.close()
    svc = service(pool, settings, tmp_path / "spool")
    assert svc.spool.depth == 2
    assert await svc.replay_once() == 2
    assert await states(pool) == {a: "answered"}
    dead = orjson.loads((tmp_path / "spool" / QUARANTINE).read_bytes())
    assert base64.b64decode(dead["line"]) == b'{"kind": "terminal", "body": "@@"}\n'
    svc.spool.close()
