"""The lookups' read path (app/db.py LookupReader) on a real SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.chain.registrar import ChainRecord
from app.db import (
    _POINTING_AT_ANY,
    NAME_READS_IN_FLIGHT,
    CoalescedReads,
    LookupReader,
    NameRow,
    make_async_engine,
    make_sessionmaker,
    migrate,
    session_scope,
)
from app.errors import DatabaseUnavailable
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


def test_postgresql_reverse_reads_asked_together_go_in_few_statements(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """First reverse lookups many at a time: each ID gets its own rows, in the order and
    number one read of it alone gives, from a few statements, not one each."""
    url = postgres.create_database(f"reader_{secrets.token_hex(4)}")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    migrate(settings)
    other = "b" * 40
    asked = [(JAMI_ID, 4), (other, 4), ("e" * 40, 4), (JAMI_ID, 2)] * 10

    async def scenario(engine: AsyncEngine) -> None:
        await store(engine)
        async with session_scope(make_sessionmaker(engine)) as session, session.begin():
            session.add(chain_record(ChainRecord("amy", other, OWNER, "pk", "sig"), block=1))
        reader = LookupReader(engine, own_pool=True)
        statements: list[str] = []

        def count(*args: Any) -> None:
            statements.append(args[2])

        event.listen(reader._reads().sync_engine, "before_cursor_execute", count)
        try:
            rows = await asyncio.gather(*(reader.pointing_at(*ask) for ask in asked))
            reads = len(statements)
        finally:
            await reader.dispose()
        assert [[row.name for row in found] for found in rows] == [
            ["yan", "Bob", "zed"],
            ["amy"],
            [],
            ["yan", "Bob"],
        ] * 10
        assert rows[1] == [NameRow("amy", "amy", other, OWNER, "pk", "sig", False)]
        # Up to NAME_READS_IN_FLIGHT + 1 statements for each number of rows asked.
        assert reads <= 2 * (NAME_READS_IN_FLIGHT + 1)

    run(settings, scenario)


def test_postgresql_reverse_read_uses_the_index_before_any_statistics(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Right after a bulk load (a backfill, a restore) PostgreSQL has no statistics of the
    table yet: the reverse read of several IDs must still be an index read, not a scan of
    every row for each batch of first reverse lookups (13 ms at 100k names, measured)."""
    url = postgres.create_database(f"reader_{secrets.token_hex(4)}")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    migrate(settings)

    async def scenario(engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO names (name, folded_name, skeleton, addr, owner, pending,"
                    " block_number, updated_at) SELECT 'n' || i, 'n' || i, 'n' || i,"
                    " md5(i::text) || 'abcdefgh', :owner, false, 1, now()"
                    " FROM generate_series(1, 100000) AS i"
                ),
                {"owner": OWNER},
            )
        async with engine.connect() as connection:
            plan = await connection.execute(
                text("EXPLAIN " + _POINTING_AT_ANY.text),
                # As many IDs as 32 clients' first reverse lookups ask at once.
                {"ids": [f"{index:040x}" for index in range(32)], "limit": 4},
            )
            lines = [row[0] for row in plan]
        assert any("ix_names_addr" in line for line in lines), lines
        assert not any("Seq Scan on names" in line for line in lines), lines

    run(settings, scenario)


def test_postgresql_name_reads_asked_together_go_in_few_statements(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """First lookups many at a time: each gets its own row (or none), from a few
    statements, not one each."""
    url = postgres.create_database(f"reader_{secrets.token_hex(4)}")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    migrate(settings)
    asked = ["zed", "bob", "yan", "nobody"] * 10

    async def scenario(engine: AsyncEngine) -> None:
        await store(engine)
        reader = LookupReader(engine, own_pool=True)
        try:
            rows = await asyncio.gather(*(reader.name(folded) for folded in asked))
            assert reader._names is not None
            reads = reader._names.reads
        finally:
            await reader.dispose()
        assert [row.folded_name if row else None for row in rows] == [
            "zed",
            "bob",
            "yan",
            None,
        ] * 10
        assert rows[0] == NameRow("zed", "zed", JAMI_ID, OWNER, "pk", "sig", False)
        assert rows[2] is not None and rows[2].pending
        assert reads <= NAME_READS_IN_FLIGHT + 1

    run(settings, scenario)


class GatedReads:
    """CoalescedReads' read at the adapter boundary: each read waits for `gate`, then
    answers every key that is in `rows`, or fails with `error`."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.reads: list[list[str]] = []
        self.error: Exception | None = None

    async def read(self, keys: list[str]) -> dict[str, NameRow]:
        self.reads.append(keys)
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return {key: NameRow(key, key, JAMI_ID, OWNER, None, None, False) for key in keys}


# The reads at the adapter boundary below run with two on their way at once, the case
# where reads overlap (the server's NAME_READS_IN_FLIGHT may be fewer).
IN_FLIGHT = 2


async def two_on_their_way(
    reads: GatedReads, coalesced: CoalescedReads[NameRow]
) -> list[asyncio.Task[NameRow | None]]:
    """Two reads sent one after the other (asked in one turn, they would share one)."""
    first = []
    for key in ("a", "b"):
        first.append(asyncio.create_task(coalesced.get(key)))
        while len(reads.reads) < len(first):
            await asyncio.sleep(0)
    return first


def test_coalesced_reads_asked_meanwhile_share_the_next_read() -> None:
    async def main() -> None:
        reads = GatedReads()
        coalesced = CoalescedReads(reads.read, in_flight=IN_FLIGHT)
        first = await two_on_their_way(reads, coalesced)
        later = [asyncio.create_task(coalesced.get(key)) for key in ("c", "d", "c")]
        gone = asyncio.create_task(coalesced.get("e"))
        await asyncio.sleep(0)
        gone.cancel()  # its client went away: the others still get their answers
        reads.gate.set()
        async with asyncio.timeout(2):
            rows = await asyncio.gather(*first, *later)
        assert [row.name if row else None for row in rows] == ["a", "b", "c", "d", "c"]
        assert reads.reads == [["a"], ["b"], ["c", "d"]]  # not "e": no one waits for it

    asyncio.run(main())


def test_coalesced_read_asked_as_the_last_senders_finish_is_sent() -> None:
    """Both reads on their way answered in one turn: a read asked before the loop forgets
    the finished senders still leaves (ChainClient.rpc_batch hung on exactly this)."""

    async def main() -> None:
        reads = GatedReads()
        coalesced = CoalescedReads(reads.read, in_flight=IN_FLIGHT)

        async def again() -> list[NameRow | None]:
            return [await coalesced.get("a"), await coalesced.get("a2")]

        caller = asyncio.create_task(again())
        while not reads.reads:
            await asyncio.sleep(0)
        other = asyncio.create_task(coalesced.get("b"))
        while len(reads.reads) < IN_FLIGHT:
            await asyncio.sleep(0)
        reads.gate.set()
        async with asyncio.timeout(2):
            rows = await caller
        assert [row.name if row else None for row in rows] == ["a", "a2"]
        assert (await other) is not None

    asyncio.run(main())


def test_coalesced_read_that_fails_fails_each_caller_with_503() -> None:
    async def main() -> None:
        reads = GatedReads()
        reads.error = OSError("connection refused")
        coalesced = CoalescedReads(reads.read, in_flight=IN_FLIGHT)
        first = await two_on_their_way(reads, coalesced)
        later = [asyncio.create_task(coalesced.get(key)) for key in ("c", "d")]
        reads.gate.set()
        async with asyncio.timeout(2):
            outcomes = await asyncio.gather(*first, *later, return_exceptions=True)
        assert all(isinstance(outcome, DatabaseUnavailable) for outcome in outcomes), outcomes
        assert len({id(outcome) for outcome in outcomes}) == len(outcomes)
        # The next read is read afresh.
        reads.error = None
        assert (await coalesced.get("f")) is not None

    asyncio.run(main())
