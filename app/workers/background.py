"""The leader's background work: the transaction writer and the indexer.

Every server serves lookups and accepts registrations; only the one holding the leader
lock (app.workers.leader) sends transactions and indexes, so nonces never collide. The others keep
trying the lock and take over within `poll_seconds` when the leader dies.

The leader loop itself runs under the server's Supervisor (app.workers.supervisor); while leader,
the writer and the indexer run under a Supervisor of their own (`work`): one that fails is
restarted afresh after a back-off, and the lock is kept meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from app.workers.indexer import Indexer
from app.workers.leader import LeaderLock
from app.workers.supervisor import Supervisor
from app.workers.writer import TxWriter

logger = logging.getLogger(__name__)


class Background:
    def __init__(
        self,
        *,
        lock: LeaderLock,
        make_writer: Callable[[], TxWriter] | None,
        make_indexer: Callable[[], Indexer] | None,
        poll_seconds: float,
        work: Supervisor | None = None,
    ) -> None:
        self.lock = lock
        self.make_writer = make_writer
        self.make_indexer = make_indexer
        self.poll_seconds = poll_seconds
        self.work = work if work is not None else Supervisor()
        self.writer: TxWriter | None = None
        self.indexer: Indexer | None = None
        self.is_leader = False

    def wake(self) -> None:
        """A registration was accepted: let the writer look now."""
        if self.writer is not None:
            self.writer.wake()

    async def run(self) -> None:
        try:
            while True:
                if self.is_leader:
                    if not await self.lock.still_held():
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
            self.work.start("tx-writer", self._run_writer)
        if self.make_indexer is not None:
            self.work.start("indexer", self._run_indexer)

    async def _run_writer(self) -> None:
        assert self.make_writer is not None
        # A fresh writer on each (re)start: it reads its state back from SQL and the chain.
        self.writer = self.make_writer()
        await self.writer.run()

    async def _run_indexer(self) -> None:
        assert self.make_indexer is not None
        self.indexer = self.make_indexer()
        await self.indexer.run()

    async def _stop_work(self) -> None:
        self.is_leader = False
        await self.work.stop()
        self.writer = None
        self.indexer = None
