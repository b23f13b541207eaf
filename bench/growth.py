"""Ingest cost growth: ``bench/ingest.py`` at several file sizes, per-row cost and slope.

    python bench/growth.py                      # 100,000 and 1,000,000 rows
    DIALER_SLOW=1 python bench/growth.py        # and 5,000,000 rows (a few minutes more)
    python bench/growth.py --rows 100000,500000

Each size is one run of ``bench/ingest.py --json`` (its own throwaway PostgreSQL, psql
\\copy of the same file beside ours). Printed: seconds and microseconds per row for both,
the ratio, peak RSS, and the slope between the smallest and the largest size — the
marginal cost of a row at scale, which should stay close to the average cost of a row
(flat: no step that grows with the table). Figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def run(rows: int) -> dict[str, Any]:
    r = subprocess.run([sys.executable, str(HERE / "ingest.py"), "--rows", str(rows), "--json"],
                       capture_output=True, text=True, check=False)
    sys.stderr.write(r.stderr)
    last = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not last:
        sys.stdout.write(r.stdout)
        raise SystemExit(f"bench/ingest.py --rows {rows} failed (exit {r.returncode})")
    result: dict[str, Any] = json.loads(last[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    slow = os.environ.get("DIALER_SLOW") == "1"
    p.add_argument("--rows", default="100000,1000000,5000000" if slow else "100000,1000000")
    args = p.parse_args(argv)
    sizes = sorted(int(v) for v in args.rows.split(","))
    results = [run(n) for n in sizes]
    print(f"\ningest cost growth, {os.cpu_count()} cores")
    print(f"{'rows':>10} {'ours s':>8} {'µs/row':>8} {'limit s':>8} {'µs/row':>8} {'ratio':>6} "
          f"{'RSS daemon/worker MB':>21}  machine busy before / load")
    for r in results:
        n = r["rows"]
        mb = r["machine_before"]
        print(f"{n:>10,} {r['ours_seconds']:>8.2f} {1e6 * r['ours_seconds'] / n:>8.2f} "
              f"{r['limit_seconds']:>8.2f} {1e6 * r['limit_seconds'] / n:>8.2f} {r['ratio']:>6.2f} "
              f"{r['rss_daemon_mb']:>10.0f}/{r['rss_worker_mb']:<10.0f}  {mb['busy']:.0%} / {mb['load1']:.2f}")
    if len(results) > 1:
        a, b = results[0], results[-1]
        slope = 1e6 * (b["ours_seconds"] - a["ours_seconds"]) / (b["rows"] - a["rows"])
        limit_slope = 1e6 * (b["limit_seconds"] - a["limit_seconds"]) / (b["rows"] - a["rows"])
        print(f"slope {a['rows']:,} -> {b['rows']:,} rows: ours {slope:.2f} µs per extra row "
              f"(average at {b['rows']:,}: {1e6 * b['ours_seconds'] / b['rows']:.2f}); "
              f"psql \\copy {limit_slope:.2f} µs per extra row")
    print(json.dumps({"sizes": {r["rows"]: {k: r[k] for k in ("ours_seconds", "limit_seconds", "ratio",
                                                               "rss_daemon_mb", "rss_worker_mb")}
                                for r in results}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
