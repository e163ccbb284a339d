"""Exactly one transaction writer (and indexer) among the servers sharing a database.

On PostgreSQL the leader holds a session-level advisory lock on a connection of its own:
when the process dies, its connection closes and the lock is free for another server at
once. On SQLite (one host) the leader holds an exclusive lock on a file beside the database.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger(__name__)

# An arbitrary constant naming this lock among the database's advisory locks ("jamins").
ADVISORY_KEY = 0x6A616D696E73
# What a lost or saturated database raises here (the pool's TimeoutError is none of the
# others); anything else ends the leader loop, which its supervisor restarts.
_DATABASE_DOWN = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    OSError,
)


class LeaderLock:
    """Try to become the leader; check that we still are; let go."""

    async def try_acquire(self) -> bool:
        raise NotImplementedError

    async def still_held(self) -> bool:
        raise NotImplementedError

    async def release(self) -> None:
        raise NotImplementedError


class AdvisoryLock(LeaderLock):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.connection: AsyncConnection | None = None

    async def try_acquire(self) -> bool:
        try:
            connection = await self.engine.connect()
            got = await connection.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}
            )
            await connection.commit()
        except _DATABASE_DOWN:
            return False
        if not got:
            await connection.close()
            return False
        self.connection = connection
        return True

    async def still_held(self) -> bool:
        if self.connection is None:
            return False
        try:
            await self.connection.scalar(text("SELECT 1"))
            await self.connection.commit()
        except _DATABASE_DOWN:
            # The session that held the lock is gone, and the lock with it.
            await self._drop()
            return False
        return True

    async def release(self) -> None:
        if self.connection is not None:
            try:
                await self.connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY}
                )
                await self.connection.commit()
            except _DATABASE_DOWN:
                pass
            await self._drop()

    async def _drop(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                await connection.invalidate()
            except Exception:  # the connection is already broken; nothing to keep
                logger.debug("closing a broken leader connection failed", exc_info=True)


class FileLock(LeaderLock):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[str] | None = None

    async def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")  # noqa: SIM115 (held while leader)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return True

    async def still_held(self) -> bool:
        return self.handle is not None

    async def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def leader_lock(engine: AsyncEngine, sqlite_path: Path | None) -> LeaderLock:
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine)
    assert sqlite_path is not None
    return FileLock(sqlite_path.with_name(sqlite_path.name + ".leader"))


class DataDirInUse(RuntimeError):
    """Another process runs the embedded node of this data directory."""


class DataDirLock:
    """Exclusive use of a data directory's embedded node, held from before the node starts
    until after it stopped: two nodes on one state file would fork the chain."""

    def __init__(self, data_dir: Path) -> None:
        # Inside chain/, with the state it guards (and ignored by git like it).
        self.path = data_dir / "chain" / "node.lock"
        self.handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise DataDirInUse naming the directory and the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise DataDirInUse(
                f"data directory {self.path.parent.parent} is already in use by process {holder} "
                "(another `jamins serve` or command): stop it first, or use another --data-dir"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
