"""Where the embedded server's Unix socket lives, and how another process finds it.

A daemon under systemd's ``PrivateTmp=yes`` has a /tmp of its own: a socket there is out
of reach of ``dialer status`` run from a shell, which then tried to start a second server
on the live PGDATA. New servers put the socket next to PGDATA (under the state dir); a
running server is found where its postmaster.pid says its socket is.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dialer.errors import DialerError
from dialer.store.embedded import EmbeddedPostgres, socket_dir_for


def select_1(dsn: str) -> int:
    async def run() -> int:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            return int(await conn.fetchval("SELECT 1"))
        finally:
            await conn.close()

    return asyncio.run(run())


def pidfile_socket_dir(pgdata: Path) -> Path:
    """Line 5 of postmaster.pid: the server's first Unix socket directory."""
    return Path((pgdata / "postmaster.pid").read_text().splitlines()[4])


@pytest.fixture
def servers() -> Iterator[list[EmbeddedPostgres]]:
    """Servers a test starts: each is stopped afterwards."""
    started: list[EmbeddedPostgres] = []
    yield started
    for pg in started:
        pg.stop()
        assert not pg.running()


@pytest.fixture
def tmpdirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Two short temporary directories (as two TMPDIRs would give), removed afterwards;
    ``tempfile.gettempdir()`` is restored."""
    monkeypatch.setattr(tempfile, "tempdir", None)
    made = [Path(tempfile.mkdtemp(prefix=f"dialer-tmp{n}-")) for n in "ab"]
    yield made
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def short() -> Iterator[Path]:
    """A state-dir root short enough for a Unix socket path under it, whatever TMPDIR is
    (a CI's TMPDIR can make pytest's tmp_path too long: then the socket falls back to the
    temp dir, which the long-path cases test)."""
    d = Path(tempfile.mkdtemp(prefix="dpg-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def use_tmpdir(monkeypatch: pytest.MonkeyPatch, d: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(d))


def long_pgdata(tmp_path: Path) -> Path:
    pgdata = tmp_path / ("a-state-dir-with-a-long-name-" + "x" * 60) / "postgres"
    assert len(str(pgdata.parent / "postgres-run" / ".s.PGSQL.5432")) > 107
    return pgdata


def test_the_socket_goes_next_to_pgdata_unless_the_path_is_too_long_for_a_unix_socket(
        tmp_path: Path, short: Path) -> None:
    assert socket_dir_for(short / "var" / "postgres") == (short / "var" / "postgres-run").resolve()
    assert socket_dir_for(Path("/var/lib/dialer/postgres")).name == "postgres-run"
    fallback = socket_dir_for(long_pgdata(tmp_path))
    assert fallback.parent == Path(tempfile.gettempdir()) and fallback.name.startswith("dialer-pg-")
    assert socket_dir_for(tmp_path / "with space" / "postgres").parent == Path(tempfile.gettempdir())
    # stable for one PGDATA, distinct for two
    assert fallback == socket_dir_for(long_pgdata(tmp_path))
    assert fallback != socket_dir_for(long_pgdata(tmp_path / "other"))


@pytest.mark.parametrize("layout", ["state-dir", "long-path"])
def test_a_server_started_under_another_tmpdir_is_found_and_used(
    tmp_path: Path, short: Path, monkeypatch: pytest.MonkeyPatch, tmpdirs: list[Path],
    servers: list[EmbeddedPostgres], layout: str,
) -> None:
    """The daemon (one /tmp) started the server; a CLI (another /tmp) finds it running and
    connects, instead of trying to start a second server on the same PGDATA."""
    a, b = tmpdirs
    pgdata = short / "var" / "postgres" if layout == "state-dir" else long_pgdata(tmp_path)
    use_tmpdir(monkeypatch, a)
    daemon = EmbeddedPostgres(pgdata, fsync=False)
    servers.append(daemon)
    daemon.start()
    assert daemon.started_here
    if layout == "state-dir":
        assert daemon.socket_dir == pgdata.parent.resolve() / "postgres-run"
    else:  # too long for a Unix socket under the state dir: the short temp dir, as before
        assert daemon.socket_dir.parent == a
    assert pidfile_socket_dir(pgdata) == daemon.socket_dir
    assert daemon.socket_dir.stat().st_mode & 0o077 == 0  # the server trusts whoever reaches it

    use_tmpdir(monkeypatch, b)
    cli = EmbeddedPostgres(pgdata, fsync=False)
    assert cli.running()
    dsn = cli.start()
    assert not cli.started_here
    assert cli.socket_dir == daemon.socket_dir and cli.uri == daemon.uri == dsn
    assert select_1(dsn) == 1
    assert not list(b.iterdir())  # nothing of ours in the CLI's own /tmp


def test_a_server_with_its_socket_in_tmp_the_old_layout_is_still_found(
    short: Path, servers: list[EmbeddedPostgres]
) -> None:
    """A server an older version started (socket in /tmp/dialer-pg-<hash>) keeps working
    after an upgrade: found, connected to, and restarted in the same place, so the DSN a
    daemon's pool holds stays valid until the daemon restarts."""
    pgdata = short / "var" / "postgres"
    digest = hashlib.sha256(str(pgdata.resolve()).encode()).hexdigest()[:12]
    old_dir = Path(tempfile.gettempdir()) / f"dialer-pg-{digest}"
    old = EmbeddedPostgres(pgdata, fsync=False)
    old.socket_dir = old_dir  # where the older version put it
    servers.append(old)
    try:
        old.start()
        assert pidfile_socket_dir(pgdata) == old_dir

        new = EmbeddedPostgres(pgdata, fsync=False)
        assert new.socket_dir == pgdata.parent.resolve() / "postgres-run"  # where a new server would go
        assert new.running() and new.live_socket_dir() == old_dir
        dsn = new.start()
        assert not new.started_here and f"host={old_dir}" in dsn
        assert select_1(dsn) == 1

        new.stop()  # as the daemon's watchdog would find it: gone; it starts it again
        assert not new.running()
        assert new.start() == dsn and new.started_here
        assert pidfile_socket_dir(pgdata) == old_dir
        assert select_1(dsn) == 1
    finally:
        old.stop()
        shutil.rmtree(old_dir, ignore_errors=True)


def test_a_running_server_whose_socket_is_out_of_reach_is_named_in_the_error(
    tmp_path: Path, servers: list[EmbeddedPostgres]
) -> None:
    """As from a shell when the daemon's socket is in its private /tmp: the start fails on
    the live PGDATA, and says why."""
    pgdata = tmp_path / "var" / "postgres"
    daemon = EmbeddedPostgres(pgdata, fsync=False)
    servers.append(daemon)
    daemon.start()
    socket = daemon.socket_dir / ".s.PGSQL.5432"
    hidden = daemon.socket_dir / "hidden"
    socket.rename(hidden)  # the server still listens on it; a client no longer sees it
    try:
        cli = EmbeddedPostgres(pgdata, fsync=False)
        assert not cli.running()
        with pytest.raises(DialerError) as e:
            cli.start()
        assert f"with its socket in {daemon.socket_dir}" in str(e.value), e.value
        assert "postmaster.pid" in str(e.value)
    finally:
        hidden.rename(socket)
    assert select_1(daemon.uri) == 1  # untouched by the failed start


def test_a_pid_file_that_cannot_be_read_now_is_no_stopped_server(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of file descriptors (a flood of connections), the daemon took its running
    server for stopped and tried to start another on the same data directory."""
    import errno

    pg = EmbeddedPostgres(tmp_path / "pg")
    assert not pg.running()  # no pid file: stopped
    pg.pgdata.mkdir(parents=True)
    (pg.pgdata / "postmaster.pid").write_text("1\n")
    real_open = Path.open

    def no_fds(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "postmaster.pid":
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", no_fds)
    assert pg.running()
