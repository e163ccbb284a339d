"""Group commit: registrations accepted at the same moment share one durable transaction.

Each acceptance must be durable before its 200 (a crash after the answer loses nothing),
and a durable commit costs an fsync: on SQLite a few milliseconds, during which no other
writer may commit. One transaction per acceptance made a burst queue on the database's
write lock (and on SQLite's busy handler, which sleeps between its retries). Here one task
writes: the acceptances that arrive while a commit is in flight are written together in the
next transaction, and each caller returns once the commit that holds its rows is done.

A batch goes in as one multi-row INSERT per table (Core, not the ORM's unit of work, which
cost milliseconds of the event loop per acceptance). Should that break a unique constraint
(the name or the address claimed meanwhile, a look-alike pending name), the transaction is
rolled back and the batch written again with each acceptance under its own SAVEPOINT, so
the conflict undoes only those rows and is answered to that caller alone, exactly as a
transaction of its own would have been. A failed commit fails every caller of the batch
with 503: nothing of it is stored.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Table, insert, inspect, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

# Acceptances written in one transaction at most: a bound on how long one commit holds the
# write lock (lookups never wait for it; the writer and the indexer do).
MAX_BATCH = 256


@dataclass
class _Acceptance:
    rows: tuple[object, ...]
    stored: asyncio.Future[None]


class GroupCommit:
    """Writes ORM rows in shared transactions, one acceptance per SAVEPOINT.

    Not shared between event loops: the flushing task belongs to the loop of the first
    caller that finds no flush running (a server has one loop per worker process)."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], *, max_batch: int = MAX_BATCH
    ) -> None:
        self.sessionmaker = sessionmaker
        self.max_batch = max_batch
        self._queue: list[_Acceptance] = []
        self._flusher: asyncio.Task[None] | None = None
        # Transactions committed and acceptances they held, for tests and the benchmark.
        self.commits = 0
        self.committed_acceptances = 0

    @property
    def queued(self) -> int:
        """Acceptances waiting for the next transaction (not the one in flight)."""
        return len(self._queue)

    async def store(self, rows: Sequence[object]) -> None:
        """Return once `rows` are committed (durably, as the engine commits).

        Raises sqlalchemy.exc.IntegrityError when they break a unique constraint (none of
        them is stored), DatabaseUnavailable when the transaction that held them failed."""
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Acceptance(tuple(rows), stored))
        if self._flusher is None or self._flusher.done():
            # A context of its own: the flush serves many requests, its log lines belong to
            # none of them (app.logs reads the request id from a context variable).
            self._flusher = asyncio.create_task(self._flush_queue(), context=contextvars.Context())
        # A cancelled caller (its client went away) cancels `stored`: rows not yet written
        # are then dropped; rows already in a transaction are committed with it.
        await stored

    async def _flush_queue(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: len(batch)]
                batch = [acceptance for acceptance in batch if not acceptance.stored.done()]
                if batch:
                    await self._flush(batch)
        finally:
            # Only when cancelled (the queue is empty otherwise): nothing left waiting.
            for acceptance in self._queue:
                _fail(acceptance, asyncio.CancelledError())
            self._queue.clear()

    async def _flush(self, batch: list[_Acceptance]) -> None:
        conflicts: list[sqlalchemy.exc.IntegrityError | None] = []
        try:
            try:
                await self._write_at_once(batch)
                conflicts = [None] * len(batch)
            except sqlalchemy.exc.IntegrityError:
                conflicts = await self._write_one_by_one(batch)
        except (DatabaseUnavailable, sqlalchemy.exc.SQLAlchemyError) as exc:
            logger.warning(
                "group commit of %d acceptance(s) failed: %s", len(batch), exc.__class__.__name__
            )
            for acceptance in batch:
                _fail(acceptance, exc)
            return
        except Exception as exc:
            # A defect, not the database: logged whole here, as no caller sees it; each
            # caller gets a 503 rather than waiting for ever.
            logger.exception("group commit of %d acceptance(s) failed", len(batch))
            for acceptance in batch:
                _fail(acceptance, exc)
            return
        except BaseException as exc:
            # Cancelled (the loop is closing): no caller may wait for ever.
            for acceptance in batch:
                _fail(acceptance, exc)
            raise
        self.commits += 1
        self.committed_acceptances += sum(conflict is None for conflict in conflicts)
        for acceptance, conflict in zip(batch, conflicts, strict=True):
            if acceptance.stored.done():
                continue
            if conflict is None:
                acceptance.stored.set_result(None)
            else:
                acceptance.stored.set_exception(conflict)

    async def _write_at_once(self, batch: list[_Acceptance]) -> None:
        """Every row of the batch in one transaction, one INSERT per table and set of
        columns; IntegrityError (nothing stored) when any row breaks a constraint."""
        groups: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = {}
        for acceptance in batch:
            for row in acceptance.rows:
                table, values = _table_values(row)
                groups.setdefault((table, tuple(values)), []).append(values)
        async with session_scope(self.sessionmaker) as session, session.begin():
            await _take_write_lock(session)
            for (table, _columns), rows in groups.items():
                await session.execute(insert(table), rows)

    async def _write_one_by_one(
        self, batch: list[_Acceptance]
    ) -> list[sqlalchemy.exc.IntegrityError | None]:
        """The batch again, each acceptance under a SAVEPOINT: its conflict, or None."""
        conflicts: list[sqlalchemy.exc.IntegrityError | None] = []
        async with session_scope(self.sessionmaker) as session, session.begin():
            await _take_write_lock(session)
            for acceptance in batch:
                try:
                    async with session.begin_nested():
                        session.add_all(acceptance.rows)
                except sqlalchemy.exc.IntegrityError as exc:
                    conflicts.append(exc)
                else:
                    conflicts.append(None)
                    # Out of the identity map: a later acceptance's row with the same
                    # key must reach the database (and its constraint), not the ORM's.
                    for row in acceptance.rows:
                        session.expunge(row)
        return conflicts


def _table_values(row: object) -> tuple[Table, dict[str, Any]]:
    """The table of an ORM row and the column values set on it (the columns left out get
    their defaults from the INSERT, as the ORM would give them)."""
    state = inspect(row)
    values = {
        attribute.columns[0].key: state.dict[attribute.key]
        for attribute in state.mapper.column_attrs
        if attribute.key in state.dict
    }
    table = state.mapper.local_table
    assert isinstance(table, Table)
    return table, values


def _fail(acceptance: _Acceptance, cause: BaseException) -> None:
    if acceptance.stored.done():
        return
    # One exception object per caller: each raises it with a traceback of its own.
    unavailable = DatabaseUnavailable()
    unavailable.__cause__ = cause
    acceptance.stored.set_exception(unavailable)


async def _take_write_lock(session: AsyncSession) -> None:
    """Open the transaction with a write on SQLite.

    Python's sqlite3 module begins a transaction only before a data-changing statement; a
    SAVEPOINT issued first would itself open the transaction, and releasing it would commit
    the first acceptance alone. A write that changes nothing makes the driver BEGIN, and
    takes the database's write lock before any row is added (no lock upgrade to fail on)."""
    connection = await session.connection()
    if connection.dialect.name == "sqlite":
        await session.execute(text("DELETE FROM meta WHERE 0"))
