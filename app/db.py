"""Engines, sessions and migrations for the SQL cache (SQLite file or PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import migrations
from app.errors import DatabaseUnavailable
from app.models import Meta
from app.settings import Settings

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets lookups read while a registration commits; FULL fsyncs every commit, so
    # an accepted registration survives a power loss, not only a crash.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _engine_options(url: str, settings: Settings) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {}
    return {
        "pool_pre_ping": True,
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_pool_size,
        "pool_timeout": settings.db_pool_timeout,
        "connect_args": {"connect_timeout": settings.db_connect_timeout},
    }


def _prepare_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite") and ":///" in url:
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_sync_engine(settings: Settings) -> Engine:
    """A blocking engine, for migrations and the CLI."""
    url = settings.sqlalchemy_url()
    _prepare_sqlite_dir(url)
    engine = create_engine(url, **_engine_options(url, settings))
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _tune_sqlite)
    return engine


def make_async_engine(settings: Settings) -> AsyncEngine:
    """The server's engine."""
    url = settings.async_sqlalchemy_url()
    _prepare_sqlite_dir(url)
    engine = create_async_engine(url, **_engine_options(url, settings))
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _tune_sqlite)
    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["settings"] = settings
    return config


# pg_advisory_lock key that serialises migrations of one PostgreSQL database; not the
# leader lock's key (app.workers.leader.ADVISORY_KEY), which a running server holds for good.
_MIGRATION_LOCK = 0x6A6D6967726174  # "jmigrat"


def migrate(settings: Settings) -> None:
    """Bring the schema to the newest migration (alembic upgrade head).

    On PostgreSQL, processes that migrate one database at once (workers, several servers)
    take turns: the first builds the schema, the others then find nothing to do."""
    url = settings.sqlalchemy_url()
    if not url.startswith("postgresql"):
        command.upgrade(alembic_config(settings), "head")
        return
    engine = make_sync_engine(settings)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            connection.commit()
            try:
                command.upgrade(alembic_config(settings), "head")
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK}
                )
                connection.commit()
    finally:
        engine.dispose()


@asynccontextmanager
async def session_scope(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A session whose connection failures surface as DatabaseUnavailable (503)."""
    try:
        async with sessionmaker() as session:
            yield session
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        logger.warning("database error: %s", exc.__class__.__name__)
        raise DatabaseUnavailable() from exc
    except sqlalchemy.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise DatabaseUnavailable() from exc
        raise
    except (TimeoutError, sqlalchemy.exc.TimeoutError) as exc:
        # sqlalchemy.exc.TimeoutError (the pool is full) is not the builtin TimeoutError.
        logger.warning("database error: %s", exc.__class__.__name__)
        raise DatabaseUnavailable() from exc


async def get_meta(session: AsyncSession, key: str) -> str | None:
    return await session.scalar(select(Meta.value).where(Meta.key == key))


async def set_meta(session: AsyncSession, key: str, value: str) -> None:
    row = await session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=value))
    else:
        row.value = value
