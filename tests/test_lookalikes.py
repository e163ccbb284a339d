"""No two names alike (app/services/lookalikes.py, LookupReader.claims and the names.skeleton
column), on a real
SQLite file and a real PostgreSQL server; the registry over an in-process fake chain."""

# The look-alikes are the point.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.chain.registrar import ChainRecord, Registrar
from app.db import (
    Claims,
    LookupReader,
    make_async_engine,
    make_sessionmaker,
    migrate,
    session_scope,
)
from app.errors import NameTaken
from app.models import NameRecord
from app.names import fold, name_skeleton
from app.services.records import apply_records
from app.services.registry import NameService, RegistrationRequest
from app.settings import Settings
from tests.fake_chain import REGISTRAR, FakeNode
from tests.jami_keys import account_pool
from tests.pg import PostgresServer

DB = async_sessionmaker[AsyncSession]
ZERO = "0" * 40


def lookalike_pair() -> tuple[str, str]:
    """A fresh ASCII name and its all-Cyrillic look-alike (the same digits on both)."""
    digits = f"{secrets.randbelow(10**8):08d}"
    return "paypal" + digits, "раураӏ" + digits


@pytest.fixture(params=["sqlite", "postgresql"])
def database_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'lookalikes.sqlite3'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database(f"lookalikes_{secrets.token_hex(4)}")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    migrate(settings)
    return settings


def run(settings: Settings, scenario: Callable[[DB], Awaitable[None]]) -> None:
    async def go() -> None:
        engine = make_async_engine(settings)
        try:
            await scenario(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    asyncio.run(go())


async def store(db: DB, name: str, *, pending: bool = False) -> None:
    """A name record as the registry (pending) or the chain (confirmed) leaves it."""
    async with session_scope(db) as session, session.begin():
        session.add(
            NameRecord(
                name=name,
                folded_name=fold(name),
                addr=secrets.token_hex(20),
                owner=ZERO,
                pending=pending,
            )
        )


async def lookalike_taken(db: DB, name: str) -> str | None:
    """The taken look-alike of `name` the registry's one read finds (LookupReader.claims)."""
    reader = LookupReader(db.kw["bind"])
    try:
        claims = await reader.claims(fold(name), secrets.token_hex(20), name_skeleton(name), 4)
    finally:
        await reader.dispose()
    return claims.lookalike


async def stored_skeleton(db: DB, name: str) -> str | None:
    async with session_scope(db) as session:
        return await session.scalar(select(NameRecord.skeleton).where(NameRecord.name == name))


def test_lookalike_taken_finds_a_name_with_the_same_skeleton(database_settings: Settings) -> None:
    async def scenario(db: DB) -> None:
        latin, cyrillic = lookalike_pair()
        await store(db, latin)
        assert await stored_skeleton(db, latin) == name_skeleton(latin)
        assert await lookalike_taken(db, cyrillic) == latin
        assert await lookalike_taken(db, latin.replace("l", "1")) == latin
        # The name itself (any case) is not its own look-alike: the exact checks answer it.
        assert await lookalike_taken(db, latin) is None
        assert await lookalike_taken(db, latin.upper()) is None
        assert await lookalike_taken(db, latin + "x") is None

    run(database_settings, scenario)


def test_lookalike_taken_sees_chain_names_the_indexer_stored(database_settings: Settings) -> None:
    async def scenario(db: DB) -> None:
        latin, cyrillic = lookalike_pair()
        record = ChainRecord(
            name=latin, addr=secrets.token_hex(20), owner=ZERO, publickey="", signature=""
        )
        async with session_scope(db) as session, session.begin():
            await apply_records(session, [(latin, record, 7)])
        assert await stored_skeleton(db, latin) == name_skeleton(latin)
        assert await lookalike_taken(db, cyrillic) == latin

    run(database_settings, scenario)


def test_store_colliding_confirmed_names_keeps_both(database_settings: Settings) -> None:
    """Names already on the chain may collide: both rows stay and both resolve."""

    async def scenario(db: DB) -> None:
        latin, cyrillic = lookalike_pair()
        await store(db, latin)
        await store(db, cyrillic)
        await store(db, cyrillic + "x", pending=True)  # not alike: another skeleton
        assert await stored_skeleton(db, latin) == await stored_skeleton(db, cyrillic)

    run(database_settings, scenario)


def test_store_second_pending_lookalike_is_refused(database_settings: Settings) -> None:
    """Two registrations that passed the look-alike check at the same instant: the database
    keeps only the first pending one."""

    async def scenario(db: DB) -> None:
        latin, cyrillic = lookalike_pair()
        await store(db, latin, pending=True)
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            await store(db, cyrillic, pending=True)
        await store(db, cyrillic, pending=False)  # as the chain would hold it: allowed

    run(database_settings, scenario)


def test_register_lookalikes_racing_one_is_409(
    database_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both registrations pass the look-alike check before either is stored (a barrier holds
    them there): one is accepted, the other is 409, whichever wins."""
    barrier = asyncio.Barrier(2)
    first_reads: list[str] = []
    read_claims = LookupReader.claims

    async def read_then_wait(
        reader: LookupReader, folded: str, jami_id: str, skeleton: str, limit: int
    ) -> Claims:
        claims = await read_claims(reader, folded, jami_id, skeleton, limit)
        if len(first_reads) < 2:  # each attempt's first read, not the loser's re-read
            first_reads.append(folded)
            await barrier.wait()
        return claims

    monkeypatch.setattr(LookupReader, "claims", read_then_wait)

    async def scenario(db: DB) -> None:
        node = FakeNode()
        service = NameService(
            sessionmaker=db,
            registrar=Registrar(node.client(), REGISTRAR),
            negative_cache_seconds=0,
            registrations_enabled=True,
            owner_address="0x" + "5e" * 20,
        )
        names = lookalike_pair()
        accounts = account_pool(2)

        async def attempt(name: str, index: int) -> Any:
            account = accounts[index]
            request = RegistrationRequest(
                addr=account.jami_id, publickey=account.publickey_b64, signature=account.sign(name)
            )
            try:
                await service.register(name, request)
            except NameTaken as exc:
                return exc
            return "accepted"

        results = await asyncio.gather(attempt(names[0], 0), attempt(names[1], 1))
        assert results.count("accepted") == 1, results
        assert sum(isinstance(result, NameTaken) for result in results) == 1, results

    run(database_settings, scenario)
