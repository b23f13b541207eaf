"""The ``dialer`` command: run, migrate, ingest, status, check-config."""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson

from dialer import __version__, logs
from dialer.config import Settings, load_settings
from dialer.errors import ConfigError, DialerError

log = logging.getLogger("dialer")


def _settings(args: argparse.Namespace, *, show_warnings: bool = True) -> Settings:
    s = load_settings(Path(args.config) if args.config else None)
    if show_warnings:  # `run` logs them instead, once logging is set up
        for w in s.warnings:
            print(f"warning: {w}", file=sys.stderr)
    return s


class _Usage(DialerError):
    """A command-line mistake: exit 2 with the message."""


def _input_file(arg: str) -> Path:
    path = Path(arg)
    if not path.is_file():
        raise _Usage(f"{path} is not a file")
    return path


# Option types: a bad value exits 2 through argparse, naming the option, before any work.
def _expiry(text: str) -> datetime:
    from dialer.intake.dnc_lines import parse_expiry

    try:
        when = parse_expiry(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time, like 2026-12-31 or 2026-12-31T18:00+01:00"
        ) from None
    if when <= datetime.now(UTC):
        raise argparse.ArgumentTypeError(f"{text!r} is in the past: a listing that has already ended "
                                         "protects no one")
    return when


def _region(text: str) -> str:
    import phonenumbers

    if text.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise argparse.ArgumentTypeError(f"unknown region {text!r}; expected a country code like US or GB")
    return text.upper()


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, 0 or more")
    return int(text)


def cmd_run(args: argparse.Namespace) -> int:
    from dialer.daemon import Daemon

    s = _settings(args, show_warnings=False)
    logs.setup(s.log_format, s.log_level)
    for w in s.warnings:
        log.warning(w)
    daemon = Daemon(s, config_path=Path(args.config) if args.config else None)
    anyio.run(daemon.run, backend_options={"use_uvloop": True})
    return 0


async def _with_db(s: Settings, fn: Callable[[Any], Awaitable[int]], stop: bool = True, *,
                   schema: bool = True) -> int:
    """``fn(pool)`` on the configured database. ``schema``: it needs the current schema: an
    embedded database this command started is migrated here (no daemon runs on it); one a
    daemon runs, or a database of your own, is left to ``dialer migrate`` and the daemon (it
    may run another version), with a message saying so."""
    from dialer.store import migrate
    from dialer.store.database import Database

    db = Database(s)
    pool = await db.open()
    try:
        if schema:
            async with pool.acquire() as conn:
                todo = await migrate.pending(conn)
                if todo and db.embedded is not None and db.embedded.started_here:
                    done = await migrate.migrate(conn)
                    print(f"applied {len(done)} migrations to the embedded database", file=sys.stderr)
                elif todo:
                    raise DialerError(f"the database schema is not current ({len(todo)} migrations "
                                      "pending): run 'dialer migrate', or start the daemon, first")
        return await fn(pool)
    finally:
        await db.close(stop_embedded=stop)


class _Lines:
    """Progress as plain lines on stderr where no bar can be drawn (a pipe, a log, CI): one
    every ``every_s`` seconds, and one at the end."""

    def __init__(self, what: str, unit: str, every_s: float = 5.0) -> None:
        self.what, self.unit, self.every_s = what, unit, every_s
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def update(self, done: int) -> None:
        self.done = done
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            print(f"{self.what}: {self.done:,} {self.unit} so far", file=sys.stderr, flush=True)

    def advance(self, n: int) -> None:
        self.update(self.done + n)

    def finish(self) -> None:
        print(f"{self.what}: {self.done:,} {self.unit} in {time.monotonic() - self.t0:.1f} s",
              file=sys.stderr, flush=True)


@contextlib.contextmanager
def _progress(what: str, unit: str, total: int | None, bar: bool,
              shown: bool = True) -> Iterator[Callable[[int], None]]:
    """``update(done)`` for a bar on stderr when it is a terminal (or ``bar``), else ``_Lines``;
    nothing at all unless ``shown``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not shown:
        yield lambda done: None
    elif console.is_terminal or bar:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn(unit), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(what, total=total)
            yield lambda done: progress.update(task, completed=done)
    else:
        lines = _Lines(what, unit)
        yield lines.update
        lines.finish()


def cmd_migrate(args: argparse.Namespace) -> int:
    from dialer.store import migrate

    s = _settings(args)
    logs.setup(s.log_format, s.log_level)

    async def go(pool: Any) -> int:
        async with pool.acquire() as conn:
            done = await migrate.migrate(conn)
        if done:
            for m in done:
                print(f"applied {m.version:04d}_{m.name}")
        else:
            print("schema is current: no migration to apply")
        return 0

    return anyio.run(functools.partial(_with_db, s, go, schema=False))


def cmd_ingest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dialer.clock import SystemClock
    from dialer.intake.files import FileIngestor
    from dialer.intake.inbox_names import shown

    s = _settings(args)
    logs.setup(s.log_format, "warning")
    path = _input_file(args.file)
    name = shown(path.name)  # its bytes that are not UTF-8 as \xNN
    target = args.target or s.default_target
    if target not in s.targets:
        known = ", ".join(sorted(s.targets))
        raise _Usage(f"--target: unknown target {target!r}; configured targets: {known}")
    console = Console(stderr=True)

    async def go(pool: Any) -> int:
        # links followed: the user named this path on the command line (the inbox never
        # follows one: whoever can drop a file there could point it anywhere on the host)
        ing = FileIngestor(pool, s, SystemClock())
        if console.is_terminal or args.progress:
            with Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("rows"), TimeElapsedColumn(), console=console, transient=False,
            ) as progress:
                task = progress.add_task(f"ingesting {name}", total=None)
                outcome = await ing.ingest(
                    path, target, source="cli", on_progress=lambda n: progress.advance(task, n),
                    follow_links=True,
                )
        else:
            lines = _Lines(f"ingesting {name}", "rows")
            outcome = await ing.ingest(path, target, source="cli", on_progress=lines.advance,
                                       follow_links=True)
            lines.finish()
        if outcome.kind == "failed":
            print(f"error: {name}: {outcome.error}", file=sys.stderr)
            return 1
        if outcome.kind == "busy":
            print("error: another process is ingesting this file right now", file=sys.stderr)
            return 1
        report_path = Path(args.report) if args.report else None
        if report_path is None:
            import tempfile

            report_path = Path(tempfile.mkstemp(suffix=".report.json")[1])
        report = await ing.write_report(outcome, report_path)
        if args.report:
            print(f"report written to {report_path}", file=sys.stderr)
            sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        else:
            sys.stdout.write(report_path.read_text())
            report_path.unlink()
        if outcome.kind == "cancelled":  # by a user, while it was read: the report says how far
            print(f"error: {name}: batch {outcome.batch_id} was cancelled while the file was "
                  "being received; none of its leads is dialed", file=sys.stderr)
            return 1
        return 0

    async def going(pool: Any) -> int:
        import asyncpg

        try:
            return await go(pool)
        except asyncpg.LockNotAvailableError:  # its finalise waited its limit for the target's lock
            print(f"error: target {target!r} is busy finishing another batch; run the same command "
                  "again: it resumes where it stopped", file=sys.stderr)
            return 1
        except asyncpg.QueryCanceledError:  # a step of its finalise ran past its batch's time limit
            print(f"error: {path.name}: settling its batch was stopped: one of its steps ran past its "
                  "time limit (the database may be overloaded); the rows read are kept, none is "
                  "dialed: run the same command again: it resumes where it stopped", file=sys.stderr)
            return 1

    return anyio.run(_with_db, s, going)


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dialer.store.queries import Q

    s = _settings(args)
    logs.setup(s.log_format, "warning")

    async def go(pool: Any) -> int:
        async with pool.acquire() as conn:
            batches = await conn.fetch(Q.batches_recent, args.limit)
            totals = await conn.fetch(Q.call_state_totals)
            per_batch = {
                b["id"]: {r["state"]: r["n"] for r in await conn.fetch(Q.batch_call_counts, b["id"])}
                for b in batches
            }
        if args.json:
            out = {
                "calls_by_state": {r["state"]: r["n"] for r in totals},
                "batches": [
                    {**{k: (str(v) if k in ("id", "created_at") else v) for k, v in dict(b).items()},
                     "calls_by_state": per_batch[b["id"]]}
                    for b in batches
                ],
            }
            print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
            return 0
        console = Console(width=None if sys.stdout.isatty() else 140)
        t = Table(title="calls by state")
        t.add_column("state")
        t.add_column("calls", justify="right")
        for r in totals:
            t.add_row(r["state"], str(r["n"]))
        console.print(t)
        bt = Table(title=f"latest {len(batches)} batches")
        for col in ("batch", "target", "source", "created", "state", "rows", "accepted",
                    "invalid", "dup", "dnc", "calls by state"):
            bt.add_column(col, no_wrap=col != "calls by state")
        for b in batches:
            c = b["counts"] or {}
            states = ", ".join(f"{k} {v}" for k, v in sorted(per_batch[b["id"]].items()))
            bt.add_row(
                str(b["id"])[:8], b["target"], b["source_name"] or b["source"],
                b["created_at"].astimezone().strftime("%Y-%m-%d %H:%M"), b["state"],
                str(c.get("rows", b["rows_read"])), str(c.get("accepted", "")),
                str(c.get("invalid", "")), str(c.get("duplicate", "")), str(c.get("dnc", "")),
                states,
            )
        console.print(bt)
        return 0

    return anyio.run(_with_db, s, go)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from dialer.providers.ryng.sandbox import SandboxConfig, serve

    s = _settings(args)
    logs.setup(s.log_format, s.log_level)
    sb = s.sandbox
    agents = sb.agents or sorted({a for t in s.targets.values() for a in t.agents}) or ["agent1"]
    config = SandboxConfig(
        token=args.token, agents=agents, time_scale=args.time_scale or sb.time_scale,
        answer_rate=sb.answer_rate, no_answer_rate=sb.no_answer_rate, busy_rate=sb.busy_rate,
        unreachable_rate=sb.unreachable_rate, callback_rate=sb.callback_rate,
        callback_after_s=sb.callback_after_s,
        abandon_rate=sb.abandon_rate, state_file=args.state_file,
    )
    print(f"Ryng sandbox on http://{args.host}:{args.port} (x-access-token: {args.token}; "
          f"agents: {', '.join(agents)}; time scale {config.time_scale:g})", file=sys.stderr)
    try:
        anyio.run(serve, config, args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_dnc_import(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from dialer.clock import SystemClock
    from dialer.intake import dnc
    from dialer.intake.inbox_names import shown

    s = _settings(args)
    logs.setup(s.log_format, "warning")
    path = _input_file(args.file)
    region = args.region or s.targets[s.default_target].default_region
    expiry = args.expires_at
    console = Console(stderr=True)
    size = path.stat().st_size

    async def go(pool: Any) -> int:
        async def run(on_progress: Callable[[int], None]) -> Any:
            return await dnc.import_file(
                pool, path, region=region, source=shown(args.source or path.name), now=SystemClock().now(),
                targets=s.targets, default_expiry=expiry, on_progress=on_progress,
            )

        if console.is_terminal or args.progress:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                          TimeElapsedColumn(), console=console) as progress:
                task = progress.add_task(f"importing {shown(path.name)}", total=size)
                report = await run(lambda done: progress.update(task, completed=done))
        else:
            lines = _Lines(f"importing {shown(path.name)}", "bytes")
            report = await run(lines.update)
            lines.finish()
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return 0

    return anyio.run(_with_db, s, go)


def cmd_dnc_export(args: argparse.Namespace) -> int:
    from dialer.store.queries import Q

    s = _settings(args)
    logs.setup(s.log_format, "warning")

    # Written beside the file and renamed over it once complete: a failed export (database
    # away, schema not current) never truncates the last good one. Opened before the
    # database is: a path that cannot be written is a usage error.
    final = Path(args.output) if args.output else None
    part = final.with_name(f".{final.name}.part") if final is not None else None
    try:
        out = open(part, "w", encoding="utf-8", newline="") if part is not None else sys.stdout
    except OSError as e:
        raise _Usage(f"--output: cannot write {args.output}: {e.strerror or e}") from None

    async def go(pool: Any) -> int:
        # the csv module quotes a source holding a comma, a quote or a line end
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["number", "source", "added_at", "expires_at"])
        # one snapshot: the total the progress shows is the number of rows written
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            total = await conn.fetchval(Q.dnc_count)
            # rows going to the terminal are their own progress: a bar would break into them
            shown = not (out is sys.stdout and sys.stdout.isatty())
            with _progress("exporting the do-not-call list", "rows", total, args.progress, shown) as update:
                n = 0
                async for r in conn.cursor(Q.dnc_export, prefetch=5000):
                    exp = r["expires_at"].isoformat() if r["expires_at"] else ""
                    w.writerow([r["e164"], r["source"], r["added_at"].isoformat(), exp])
                    n += 1
                    if n % 5000 == 0:  # not per row: a bar update costs more than a row
                        update(n)
                update(n)
        return 0

    done = False
    try:
        rc = anyio.run(_with_db, s, go)
        done = rc == 0
        return rc
    finally:
        if part is not None and final is not None:
            out.close()
            if done:
                os.replace(part, final)
            else:
                part.unlink(missing_ok=True)


def cmd_check_config(args: argparse.Namespace) -> int:
    s = _settings(args)
    print(orjson.dumps(s.redacted(), option=orjson.OPT_INDENT_2).decode())
    print("configuration is valid", file=sys.stderr)
    return 0


def cmd_stringee_sync_queue(args: argparse.Namespace) -> int:
    from dialer.http.hooks import stringee_url
    from dialer.providers.stringee import sync_queue_command

    s = _settings(args)
    logs.setup(s.log_format, "warning")
    if not s.public_url:
        print(f"warning: public_url is not set; Stringee will be told {s.base_url}", file=sys.stderr)
    print(anyio.run(sync_queue_command, s, stringee_url(s, s.secret())))
    return 0


def cmd_hooks_urls(args: argparse.Namespace) -> int:
    from dialer.http.hooks import hook_urls

    s = _settings(args)
    for name, url in hook_urls(s, s.secret()).items():
        print(f"{name}: {url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dialer", description="Progressive outbound dialing daemon (Ryng and friends)."
    )
    p.add_argument("--version", action="version", version=f"dialer {__version__}")
    p.add_argument("--config", help="TOML config file (default: $DIALER_CONFIG or ./dialer.toml)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = sub.add_parser("run", help="run the daemon (HTTP API, inbox, dispatch)")
    r.set_defaults(fn=cmd_run)
    m = sub.add_parser("migrate", help="apply pending database migrations")
    m.set_defaults(fn=cmd_migrate)
    i = sub.add_parser("ingest", help="ingest a lead file now and print its report")
    i.add_argument("file", help="a .csv, .json, .ndjson/.jsonl or .xlsx lead file")
    i.add_argument("--target", help="target name (default: default_target)")
    i.add_argument("--report", help="also write the report to this path")
    i.add_argument("--progress", action="store_true",
                   help="draw the progress bar even off a terminal (else: a line every 5 s)")
    i.set_defaults(fn=cmd_ingest)
    st = sub.add_parser("status", help="batches and calls by state")
    st.add_argument("--limit", type=_count, default=20, help="how many recent batches (default 20)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(fn=cmd_status)
    c = sub.add_parser("check-config", help="validate and print the effective config (secrets redacted)")
    c.set_defaults(fn=cmd_check_config)
    sb = sub.add_parser("sandbox", help="run the Ryng simulator alone (point DIALER_RYNG_BASE_URL at it)")
    sb.add_argument("--host", default="127.0.0.1")
    sb.add_argument("--port", type=int, default=8090)
    sb.add_argument("--token", default="sandbox-token", help="the x-access-token it expects")
    sb.add_argument("--time-scale", type=float, default=None,
                    help="multiply every vendor duration (e.g. 0.01 for a fast demo)")
    sb.add_argument("--state-file", default=None, metavar="FILE",
                    help="keep the calls under way here, to carry on with them after a restart")
    sb.set_defaults(fn=cmd_sandbox)
    dn = sub.add_parser("dnc", help="import or export the do-not-call list")
    dsub = dn.add_subparsers(dest="dnc_command", metavar="ACTION", required=True)
    di = dsub.add_parser("import", help="add numbers from a file (one per line, or number,expires_at)")
    di.add_argument("file")
    di.add_argument("--region", type=_region,
                    help="region for national numbers (default: the default target's)")
    di.add_argument("--source", help="recorded as the entries' source (default: the file name)")
    di.add_argument("--expires-at", type=_expiry,
                    help="expiry for entries that don't carry one (ISO date/time; no offset: UTC)")
    di.add_argument("--progress", action="store_true",
                    help="draw the progress bar even off a terminal (else: a line every 5 s)")
    di.set_defaults(fn=cmd_dnc_import)
    de = dsub.add_parser("export", help="write the list as CSV (stdout or --output)")
    de.add_argument("--output", "-o")
    de.add_argument("--progress", action="store_true",
                    help="draw the progress bar even off a terminal (else: a line every 5 s)")
    de.set_defaults(fn=cmd_dnc_export)
    for sp in (dn, di, de):
        sp.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    stg = sub.add_parser("stringee", help="Stringee ICC queue")
    stg_sub = stg.add_subparsers(dest="stringee_command", metavar="ACTION", required=True)
    sq = stg_sub.add_parser("sync-queue", help="create or update the queue from [stringee] (POST/PUT)")
    sq.set_defaults(fn=cmd_stringee_sync_queue)
    hk = sub.add_parser("hooks", help="provider hook URLs")
    hk_sub = hk.add_subparsers(dest="hooks_command", metavar="ACTION", required=True)
    hu = hk_sub.add_parser("urls", help="print the ringme agent-event and Stringee agents hook URLs")
    hu.set_defaults(fn=cmd_hooks_urls)
    for sp in (r, m, i, st, c, sb, stg, sq, hk, hu):
        sp.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        return int(args.fn(args))
    except (ConfigError, _Usage) as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except DialerError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
