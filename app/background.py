"""The leader's background work: the transaction writer and the indexer.

Every server serves lookups and accepts registrations; only the one holding the leader
lock (app.leader) sends transactions and indexes, so nonces never collide. The others keep
trying the lock and take over within `poll_seconds` when the leader dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from app.chain.indexer import Indexer
from app.chain.writer import TxWriter
from app.leader import LeaderLock

logger = logging.getLogger(__name__)


class Background:
    def __init__(
        self,
        *,
        lock: LeaderLock,
        make_writer: Callable[[], TxWriter] | None,
        make_indexer: Callable[[], Indexer] | None,
        poll_seconds: float,
    ) -> None:
        self.lock = lock
        self.make_writer = make_writer
        self.make_indexer = make_indexer
        self.poll_seconds = poll_seconds
        self.writer: TxWriter | None = None
        self.indexer: Indexer | None = None
        self.is_leader = False
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        """A registration was accepted: let the writer look now."""
        if self.writer is not None:
            self.writer.wake()

    async def run(self) -> None:
        try:
            while True:
                if self.is_leader:
                    if not await self.lock.still_held() or any(t.done() for t in self._tasks):
                        logger.warning("lost the leader lock: stopping the writer and indexer")
                        await self._stop_work()
                elif await self.lock.try_acquire():
                    logger.info("leader: this server writes transactions and indexes")
                    self._start_work()
                await asyncio.sleep(self.poll_seconds)
        finally:
            await self._stop_work()
            await self.lock.release()

    def _start_work(self) -> None:
        self.is_leader = True
        if self.make_writer is not None:
            self.writer = self.make_writer()
            self._tasks.append(asyncio.create_task(self.writer.run(), name="tx-writer"))
        if self.make_indexer is not None:
            self.indexer = self.make_indexer()
            self._tasks.append(asyncio.create_task(self.indexer.run(), name="indexer"))

    async def _stop_work(self) -> None:
        self.is_leader = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.writer = None
        self.indexer = None
