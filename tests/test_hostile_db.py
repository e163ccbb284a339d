"""A bad day for the database: a full connection pool and an unreachable server are
503 + Retry-After, with their own timeouts (not the chain's)."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from sqlalchemy import text

from app.db import make_async_engine, make_sessionmaker, session_scope
from app.errors import DatabaseUnavailable
from app.settings import Settings
from tests.pg import PostgresServer


def test_full_pool_is_database_unavailable(postgres: PostgresServer) -> None:
    url = postgres.create_database(f"jamins_{secrets.token_hex(4)}")
    settings = Settings(
        database_url=url, db_pool_size=1, db_pool_timeout=0.3, rpc_timeout=30, data_dir="/tmp"
    )

    async def go() -> float:
        engine = make_async_engine(settings)
        sessionmaker = make_sessionmaker(engine)
        try:
            # pool_size 1 and as many more at peaks: two connections fill it.
            async with engine.connect() as first, engine.connect() as second:
                await first.execute(text("SELECT 1"))
                await second.execute(text("SELECT 1"))
                started = time.monotonic()
                with pytest.raises(DatabaseUnavailable):
                    async with session_scope(sessionmaker) as session:
                        await session.execute(text("SELECT 1"))
                return time.monotonic() - started
        finally:
            await engine.dispose()

    waited = asyncio.run(go())
    assert 0.2 < waited < 5  # the pool's own timeout, not JAMINS_RPC_TIMEOUT


def test_database_timeouts_are_their_own_settings() -> None:
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/x",
        rpc_timeout=30,
        db_pool_timeout=2,
        db_connect_timeout=3,
    )
    engine = make_async_engine(settings)
    try:
        assert engine.pool.timeout() == 2  # type: ignore[attr-defined]
        assert engine.pool.size() == settings.db_pool_size  # type: ignore[attr-defined]
    finally:
        asyncio.run(engine.dispose())


def test_unreachable_database_is_database_unavailable_within_connect_timeout() -> None:
    # 10.255.255.1 drops packets: only the connect timeout ends the wait.
    settings = Settings(
        database_url="postgresql://nobody@10.255.255.1:5432/x", rpc_timeout=30, db_connect_timeout=2
    )

    async def go() -> float:
        engine = make_async_engine(settings)
        started = time.monotonic()
        try:
            with pytest.raises(DatabaseUnavailable):
                async with session_scope(make_sessionmaker(engine)) as session:
                    await session.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
        return time.monotonic() - started

    assert asyncio.run(go()) < 10
