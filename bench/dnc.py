"""DNC import benchmark: ``dialer dnc import`` of a national-registry-style file (one
10-digit number per line) beside ``psql \\copy`` of the same file into a plain table.

    python bench/dnc.py [--rows N] [--json]

Ours = the product path (``dialer.intake.dnc.import_file``): stream, normalise each line
to E.164, COPY into a temporary table, merge into ``dnc`` deduplicated, cancel calls not
yet sent to those numbers — one transaction. The limit: the same bytes COPY'd by psql
into a one-column table with a primary key (no validation at all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_DIR, migrate, psql, throwaway_server

AREA = [201, 202, 212, 213, 214, 305, 312, 404, 415, 512, 617, 646, 702, 718, 773, 818, 917]


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


async def ours(dsn: str, path: Path) -> tuple[float, dict[str, object]]:
    from dialer.intake import dnc
    from dialer.store.database import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        t0 = time.perf_counter()
        report = await dnc.import_file(pool, path, region="US", source="bench", now=datetime.now(UTC))
        return time.perf_counter() - t0, report.as_dict()
    finally:
        await pool.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = make_file(args.rows)
    size_mb = path.stat().st_size / 1e6
    with throwaway_server("dialer-bench-dnc-") as server:
        psql(server.dsn, "CREATE DATABASE bench_plain")
        psql(server.dsn, "CREATE DATABASE bench_ours")
        plain = server.database("bench_plain")
        psql(plain, "CREATE TABLE dnc_plain (number text PRIMARY KEY)")
        # the generated file may repeat a number: the limit loads distinct lines
        distinct = path.with_suffix(".distinct.txt")
        if not distinct.exists():
            distinct.write_text("".join(sorted(set(path.read_text().splitlines(keepends=True)))))
        t0 = time.perf_counter()
        psql(plain, f"\\copy dnc_plain FROM '{distinct}'")
        limit_s = time.perf_counter() - t0
        asyncio.run(migrate(server.database("bench_ours")))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ours_s, report = asyncio.run(ours(server.database("bench_ours"), path))
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    rows = args.rows
    print(f"\nDNC import benchmark: {rows:,} numbers, {size_mb:.1f} MB, one per line")
    print(f"{'':28}{'seconds':>9}{'numbers/s':>12}{'ratio':>8}")
    limit_name = "psql \\copy (limit)"
    print(f"{limit_name:28}{limit_s:9.2f}{rows / limit_s:12,.0f}{1.0:8.2f}")
    print(f"{'dialer dnc import':28}{ours_s:9.2f}{rows / ours_s:12,.0f}{limit_s / ours_s:8.2f}")
    print(f"peak RSS {rss_mb:.0f} MB (grew {grew:.0f} MB during the import); report: "
          f"added {report['added']:,}, duplicates in file {report['duplicates_in_file']:,}, "
          f"invalid {report['invalid']:,}")
    if args.json:
        print(json.dumps({"rows": rows, "limit_s": limit_s, "ours_s": ours_s,
                          "ratio": limit_s / ours_s, "rss_mb": rss_mb, "report": report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
