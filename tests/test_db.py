"""The lookups' read path (app/db.py LookupReader) on a real SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.chain.registrar import ChainRecord
from app.db import (
    LookupReader,
    NameRow,
    make_async_engine,
    make_sessionmaker,
    migrate,
    session_scope,
)
from app.services.records import Claim, chain_record, pending_record
from app.settings import Settings
from tests.pg import PostgresServer

JAMI_ID = "a" * 40
OWNER = "c" * 40


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'reader.sqlite3'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database(f"reader_{secrets.token_hex(4)}")
    built = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    migrate(built)
    return built


def run(settings: Settings, scenario: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    async def go() -> None:
        engine = make_async_engine(settings)
        try:
            await scenario(engine)
        finally:
            await engine.dispose()

    asyncio.run(go())


async def store(engine: AsyncEngine) -> None:
    async with session_scope(make_sessionmaker(engine)) as session, session.begin():
        session.add(chain_record(ChainRecord("zed", JAMI_ID, OWNER, "pk", "sig"), block=1))
        session.add(chain_record(ChainRecord("Bob", JAMI_ID, OWNER, "", ""), block=1))
        session.add(pending_record(Claim("yan", "yan", JAMI_ID, OWNER, "pk2", "sig2")))


def test_reader_reads_what_another_connection_just_committed(settings: Settings) -> None:
    async def scenario(engine: AsyncEngine) -> None:
        reader = LookupReader(engine)
        assert await reader.name("zed") is None
        await store(engine)
        assert await reader.name("zed") == NameRow("zed", "zed", JAMI_ID, OWNER, "pk", "sig", False)
        assert await reader.name("bob") == NameRow("Bob", "bob", JAMI_ID, OWNER, None, None, False)
        assert (await reader.name("yan")) is not None
        await reader.dispose()

    run(settings, scenario)


def test_reader_lists_rows_pointing_at_an_id_pending_first(settings: Settings) -> None:
    async def scenario(engine: AsyncEngine) -> None:
        await store(engine)
        reader = LookupReader(engine)
        rows = await reader.pointing_at(JAMI_ID, 4)
        assert [(row.name, row.pending) for row in rows] == [
            ("yan", True),
            ("Bob", False),
            ("zed", False),
        ]
        assert [row.name for row in await reader.pointing_at(JAMI_ID, 1)] == ["yan"]
        assert await reader.pointing_at("b" * 40, 4) == []
        await reader.dispose()

    run(settings, scenario)


def test_sqlite_read_that_fails_on_the_loop_goes_through_the_engine(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'busy.sqlite3'}"
    )
    migrate(settings)

    async def scenario(engine: AsyncEngine) -> None:
        await store(engine)
        reader = LookupReader(engine)
        assert reader.sqlite_path is not None

        def busy() -> sqlite3.Connection:
            raise sqlite3.OperationalError("database is locked")

        reader._sqlite_connection = busy  # type: ignore[method-assign]
        assert (await reader.name("zed")) is not None
        assert len(await reader.pointing_at(JAMI_ID, 4)) == 3

    run(settings, scenario)


def test_postgresql_read_on_a_connection_the_server_dropped_is_read_again(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """The reads' pool skips the ping before each use: a connection PostgreSQL dropped (a
    restart, an administrator) is found on use, and the read goes again on a new one
    instead of answering 503."""
    url = postgres.create_database(f"reader_{secrets.token_hex(4)}")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    migrate(settings)

    async def scenario(engine: AsyncEngine) -> None:
        await store(engine)
        reader = LookupReader(engine, own_pool=True)
        try:
            assert (await reader.name("zed")) is not None  # a read connection now idles
            async with engine.connect() as connection:
                dropped = await connection.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            assert dropped
            assert (await reader.name("zed")) is not None
            assert len((await reader.claims("zed", JAMI_ID, "zed", 4)).pointing) == 3
        finally:
            await reader.dispose()

    run(settings, scenario)
