"""Background work that fails is logged, backed off, restarted, and reported by /readyz
(deterministic, in-process: a fake lock and fake loops at the adapter boundary)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy.exc

from app.metrics import check_background
from app.workers.background import Background
from app.workers.leader import LeaderLock
from app.workers.supervisor import Supervisor


class FlakyLock(LeaderLock):
    """Raises what the lock code does not expect (a full pool) the first `failures` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.held = False

    async def try_acquire(self) -> bool:
        if self.failures:
            self.failures -= 1
            raise sqlalchemy.exc.TimeoutError("QueuePool limit reached")
        self.held = True
        return True

    async def still_held(self) -> bool:
        return self.held

    async def release(self) -> None:
        self.held = False


class FakeLoop:
    """A writer or indexer whose first `failures` runs raise."""

    made = 0

    def __init__(self, failures: list[int]) -> None:
        self.failures = failures
        self.running = False

    def wake(self) -> None:
        pass

    async def run(self) -> None:
        if self.failures[0]:
            self.failures[0] -= 1
            raise RuntimeError("boom")
        self.running = True
        await asyncio.Event().wait()


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.01)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def test_leader_loop_is_restarted_after_an_unexpected_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go() -> None:
        supervisor = Supervisor(min_backoff=0.05)
        indexers: list[FakeLoop] = []

        def make_indexer() -> Any:
            indexers.append(FakeLoop([0]))
            return indexers[-1]

        background = Background(
            lock=FlakyLock(failures=2),
            make_writer=None,
            make_indexer=make_indexer,
            poll_seconds=0.01,
        )
        supervisor.start("leader", background.run)
        supervisor.adopt(background.work)
        try:
            await eventually(lambda: bool(indexers) and indexers[-1].running)
            assert background.is_leader
            assert supervisor.problems() == {}
        finally:
            await supervisor.stop()
        assert not background.is_leader

    with caplog.at_level(logging.WARNING):
        run(go)
    assert "leader failed" in caplog.text
    assert "TimeoutError" in caplog.text
    assert "restarting leader" in caplog.text


def test_failed_writer_is_reported_then_restarted_while_leader_keeps_the_lock() -> None:
    async def go() -> None:
        supervisor = Supervisor(min_backoff=0.05)
        failures = [1]
        writers: list[FakeLoop] = []

        def make_writer() -> Any:
            writers.append(FakeLoop(failures))
            return writers[-1]

        lock = FlakyLock(failures=0)
        background = Background(
            lock=lock,
            make_writer=make_writer,
            make_indexer=None,
            poll_seconds=0.01,
            work=Supervisor(min_backoff=0.5),
        )
        supervisor.start("leader", background.run)
        supervisor.adopt(background.work)
        try:
            await eventually(lambda: "tx-writer" in supervisor.problems())
            problem = supervisor.problems()["tx-writer"]
            assert "RuntimeError: boom" in problem
            assert lock.held and background.is_leader
            await eventually(lambda: len(writers) == 2 and writers[-1].running)
            assert supervisor.problems() == {}
        finally:
            await supervisor.stop()

    run(go)


def test_backoff_doubles_up_to_the_cap() -> None:
    async def go() -> list[float]:
        supervisor = Supervisor(min_backoff=0.02, max_backoff=0.08)
        starts: list[float] = []

        async def failing() -> None:
            starts.append(asyncio.get_running_loop().time())
            raise ValueError("always")

        supervisor.start("failing", failing)
        await eventually(lambda: len(starts) >= 6)
        await supervisor.stop()
        return [later - earlier for earlier, later in itertools.pairwise(starts)]

    gaps = asyncio.run(go())
    assert gaps[0] < gaps[2]
    assert all(gap < 0.3 for gap in gaps)


def test_readiness_names_the_loop_that_is_not_running() -> None:
    async def go() -> str:
        supervisor = Supervisor(min_backoff=10)

        async def failing() -> None:
            raise ValueError("no chain")

        supervisor.start("indexer", failing)
        await eventually(lambda: bool(supervisor.problems()))
        try:
            return check_background(SimpleNamespace(supervisor=supervisor))
        finally:
            await supervisor.stop()

    assert asyncio.run(go()) == "indexer not running (failed 1 times; last: ValueError: no chain)"
