"""Every background loop runs under one supervisor: a failure — an exception group from a
task group included — is logged, counted and the loop restarted; it never ends the daemon."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import asyncpg
import pytest

from dialer import metrics, supervisor


async def _supervised(task: str, loop: Callable[[], Awaitable[None]],
                      caplog: pytest.LogCaptureFixture) -> metrics.Metrics:
    """Run ``loop`` under the supervisor until it returns, with metrics and the log captured."""
    m = metrics.Metrics()
    metrics.install(m)
    try:
        with caplog.at_level(logging.INFO, logger="dialer.supervisor"):
            with anyio.fail_after(10):
                await supervisor.supervise(task, loop, initial_backoff_s=0.01)
    finally:
        metrics._current = None
    return m


async def test_a_failing_loop_is_logged_counted_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            # what a task group raises when one of its tasks fails
            async with anyio.create_task_group() as tg:
                tg.start_soon(_raise, RuntimeError("a bad row"))
        if runs == 2:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        # the third run returns: the loop is done (as at drain)

    m = await _supervised("dispatch", loop, caplog)
    assert runs == 3
    assert m.registry.get_sample_value("dialer_task_restarts_total", {"task": "dispatch"}) == 2
    failures = [r for r in caplog.records if r.getMessage() == "task failed"]
    assert len(failures) == 2 and all(r.exc_info for r in failures)  # with the traceback


async def test_a_database_outage_is_a_warning_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    group = ExceptionGroup("tick", [ConnectionRefusedError("refused"), asyncpg.CannotConnectNowError("x")])
    with caplog.at_level(logging.WARNING, logger="dialer.supervisor"):
        supervisor.failed("dispatch", group)
    (rec,) = caplog.records
    assert rec.levelno == logging.WARNING and rec.exc_info is None


async def test_a_filesystem_error_is_logged_as_one_not_as_a_database_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """OSError is in DB_DOWN (a refused connection is one): an inbox dir that cannot be made
    must not read as a database outage, yet the loop is restarted like any other."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    runs = 0

    async def inbox() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            (a_file / "inbox").mkdir(parents=True)  # NotADirectoryError, naming the path
        if runs == 2:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_raise, PermissionError(13, "Permission denied", "/srv/inbox/processed"))

    m = await _supervised("inbox", inbox, caplog)
    assert runs == 3
    assert m.registry.get_sample_value("dialer_task_restarts_total", {"task": "inbox"}) == 2
    failures = [r for r in caplog.records if r.getMessage().startswith("task failed")]
    assert [(r.getMessage(), r.levelno) for r in failures] == [("task failed: filesystem error", logging.ERROR)] * 2
    assert [r.paths for r in failures] == [[str(a_file / "inbox")], ["/srv/inbox/processed"]]


async def test_a_database_socket_that_is_not_there_is_still_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    # what connecting to a stopped embedded server's Unix socket raises: no file name
    with caplog.at_level(logging.WARNING, logger="dialer.supervisor"):
        supervisor.failed("dispatch", FileNotFoundError(2, "No such file or directory"))
    (rec,) = caplog.records
    assert rec.getMessage() == "task failed: database unreachable"


async def test_cancellation_passes_through() -> None:
    async def forever() -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(0.05) as scope:
        await supervisor.supervise("inbox", forever)
    assert scope.cancelled_caught


async def _raise(e: BaseException) -> None:
    raise e


async def test_a_job_cancelled_at_shutdown_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """The scheduler cancels a job still running when the daemon stops: that is logged as
    information, never as an error (the fault tests read every ERROR line as a failure)."""
    import asyncio

    from dialer.jobs import Job, guarded

    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()  # a query that never answers

    task = asyncio.create_task(guarded(Job("reaper", 60, slow))())
    await asyncio.wait_for(started.wait(), 5)
    with caplog.at_level(logging.INFO):
        task.cancel()
        await asyncio.wait_for(task, 5)  # ends, raising nothing
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(r.getMessage() == "job cancelled (shutting down)" for r in caplog.records)
