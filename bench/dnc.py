"""DNC import benchmark: ``dialer dnc import`` of a national-registry-style file (one
10-digit number per line) beside ``psql \\copy`` of the same file, in the same run.

    python bench/dnc.py [--rows N] [--json]

Ours = the product path (``dialer.intake.dnc.import_file``): the file cut in parts, each
normalised to E.164 by a child process, COPY'd as it comes into a temporary table, merged
into ``dnc`` deduplicated, calls not yet sent to those numbers cancelled — one
transaction. Timed from the call to its return, in a child process of its own (so its
peak RSS, and its workers', are its own).

The limit: the same file COPY'd by ``psql`` into a one-column table with a btree index on
the number (the file repeats numbers, so it cannot be a primary key), no validation at
all; once before ours and once after, on the same server, and the ratio is against their
mean (the machine's speed drifts within minutes: bracketing shows it and halves its effect). For reference, also ``psql \\copy`` of the file sorted and deduplicated beforehand
into a table whose primary key is the number — the cheapest load of those numbers there
is, since sorted keys only ever append to the index (the benchmark's limit until 2026-12).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_DIR, machine_before, machine_busy, migrate, psql, throwaway_server

AREA = [201, 202, 212, 213, 214, 305, 312, 404, 415, 512, 617, 646, 702, 718, 773, 818, 917]
RATIO_TARGET = 0.5


def make_file(rows: int) -> Path:
    path = BENCH_DIR / "data" / f"dnc-{rows}.txt"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20260105)
    with path.open("w") as f:
        for i in range(rows):
            f.write(f"{rng.choice(AREA)}{rng.randint(200, 999)}{i % 10000:04d}\n")
    return path


def ours_child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    seconds, report = asyncio.run(_ours(spec["dsn"], Path(spec["path"])))
    Path(spec["out"]).write_text(json.dumps({
        "seconds": seconds, "report": report,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


async def _ours(dsn: str, path: Path) -> tuple[float, dict[str, Any]]:
    from dialer.intake import dnc
    from dialer.store.database import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        t0 = time.perf_counter()
        report = await dnc.import_file(pool, path, region="US", source="bench", now=datetime.now(UTC),
                                       targets={})
        return time.perf_counter() - t0, report.as_dict()
    finally:
        await pool.close()


def timed_copy(dsn: str, table: str, path: Path) -> float:
    psql(dsn, "CHECKPOINT")
    t0 = time.perf_counter()
    psql(dsn, f"\\copy {table} FROM '{path}'")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_ours", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._ours:
        ours_child(args._ours)
        return 0
    path = make_file(args.rows)
    size_mb = path.stat().st_size / 1e6
    # the reference loads the numbers sorted and deduplicated (a primary key refuses repeats)
    distinct = path.with_suffix(".distinct.txt")
    if not distinct.exists():
        distinct.write_text("".join(sorted(set(path.read_text().splitlines(keepends=True)))))
    before = machine_before()
    busy: dict[str, float] = {}
    with throwaway_server("dialer-bench-dnc-") as server:
        for db in ("bench_plain", "bench_plain_after", "bench_sorted", "bench_ours"):
            psql(server.dsn, f"CREATE DATABASE {db}")
        plain, ref = server.database("bench_plain"), server.database("bench_sorted")
        plain_after = server.database("bench_plain_after")
        for db in (plain, plain_after):
            psql(db, "CREATE TABLE dnc_plain (number text)")
            psql(db, "CREATE INDEX dnc_plain_number ON dnc_plain (number)")
        psql(ref, "CREATE TABLE dnc_sorted (number text PRIMARY KEY)")
        t = machine_busy()
        limit_s = timed_copy(plain, "dnc_plain", path)
        busy["limit"] = machine_busy(t)
        t = machine_busy()
        ref_s = timed_copy(ref, "dnc_sorted", distinct)
        busy["reference"] = machine_busy(t)
        asyncio.run(migrate(server.database("bench_ours")))
        psql(server.dsn, "CHECKPOINT")
        out = server.tmp / "ours.json"
        spec = {"dsn": server.database("bench_ours"), "path": str(path), "out": str(out)}
        t = machine_busy()
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_ours", json.dumps(spec)],
                           check=False)
        busy["ours"] = machine_busy(t)
        if r.returncode != 0 or not out.exists():
            raise SystemExit(f"the dialer import child failed (exit code {r.returncode})")
        ours = json.loads(out.read_text())
        listed = int(psql(server.database("bench_ours"), "SELECT count(*) FROM dnc"))
        limit_before_s, limit_after_s = limit_s, timed_copy(plain_after, "dnc_plain", path)
        limit_s = (limit_before_s + limit_after_s) / 2
    ours_s, report = float(ours["seconds"]), ours["report"]
    rows = args.rows
    ratio, ref_ratio = limit_s / ours_s, ref_s / ours_s
    ok = ratio >= RATIO_TARGET
    checks = {
        "every line accounted for (valid + invalid == lines)":
            report["valid"] + report["invalid"] == report["lines"] == rows,
        "numbers listed == added": listed == report["added"],
    }
    print(f"\nDNC import benchmark: {rows:,} numbers, {size_mb:.1f} MB, one per line")
    print(f"machine before the run: {before['busy']:.0%} busy, load average {before['load1']:.2f}; "
          f"busy during limit / reference / ours: {busy['limit']:.0%} / {busy['reference']:.0%} / "
          f"{busy['ours']:.0%}")
    print(f"{'':44}{'seconds':>9}{'numbers/s':>12}{'ratio':>8}")
    limit_name, ref_name = "psql \\copy, same file, indexed (limit)", "  reference: psql \\copy, sorted distinct, PK"
    print(f"{limit_name:44}{limit_s:9.2f}{rows / limit_s:12,.0f}{1.0:8.2f}   "
          f"(mean of before / after ours: {limit_before_s:.2f} / {limit_after_s:.2f} s)")
    print(f"{'dialer dnc import':44}{ours_s:9.2f}{rows / ours_s:12,.0f}{ratio:8.2f}   "
          f"(target >= {RATIO_TARGET:.2f}){'' if ok else '  MISSED'}")
    print(f"{ref_name:44}{ref_s:9.2f}{rows / ref_s:12,.0f}"
          f"{'':8}   (ours / reference: {ref_ratio:.2f})")
    print(f"peak RSS: importing process {ours['rss_mb']:.0f} MB, normalising children "
          f"{ours['rss_workers_mb']:.0f} MB; report: added {report['added']:,}, duplicates in file "
          f"{report['duplicates_in_file']:,}, invalid {report['invalid']:,}")
    for name, good in checks.items():
        print(f"check {name}: {'ok' if good else 'FAILED'}")
    if args.json:
        print(json.dumps({"rows": rows, "limit_s": limit_s, "limit_before_after_s": [limit_before_s, limit_after_s],
                          "reference_s": ref_s, "ours_s": ours_s,
                          "ratio": ratio, "reference_ratio": ref_ratio, "busy_before": before,
                          "busy": busy, "rss_mb": ours["rss_mb"], "rss_workers_mb": ours["rss_workers_mb"],
                          "report": report, "checks_ok": all(checks.values())}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
