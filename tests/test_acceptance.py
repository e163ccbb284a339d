"""Group commit of accepted registrations (app/services/acceptance.py), on a real SQLite file
and a real PostgreSQL server; the registry over the in-process fake chain."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.chain.registrar import Registrar
from app.db import make_async_engine, make_sessionmaker, migrate, session_scope
from app.errors import DatabaseUnavailable, NameTaken
from app.models import PENDING, NameRecord, Registration
from app.names import fold
from app.services import acceptance
from app.services.acceptance import GroupCommit
from app.services.registry import NameService, RegistrationRequest
from app.settings import Settings
from tests.fake_chain import REGISTRAR, FakeNode
from tests.faults import quick_accounts
from tests.pg import PostgresServer

DB = async_sessionmaker[AsyncSession]
OWNER = "5e" * 20


@pytest.fixture(params=["sqlite", "postgresql"])
def database_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'acceptance.sqlite3'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database(f"acceptance_{secrets.token_hex(4)}")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    migrate(settings)
    return settings


def run(settings: Settings, scenario: Callable[[AsyncEngine, DB], Awaitable[None]]) -> None:
    async def go() -> None:
        engine = make_async_engine(settings)
        try:
            await scenario(engine, make_sessionmaker(engine))
        finally:
            await engine.dispose()

    asyncio.run(go())


def acceptance_rows(name: str, jami_id: str) -> list[object]:
    """The two rows `NameService.register` stores for an accepted registration."""
    folded = fold(name)
    return [
        Registration(
            name=name,
            folded_name=folded,
            addr=jami_id,
            owner=OWNER,
            publickey="key",
            signature="signature",
            claim_name=folded,
            claim_addr=jami_id,
            state=PENDING,
        ),
        NameRecord(
            name=name,
            folded_name=folded,
            addr=jami_id,
            owner=OWNER,
            publickey="key",
            signature="signature",
            pending=True,
        ),
    ]


def fresh_name() -> str:
    return f"gc{secrets.token_hex(6)}"


async def stored_addrs(db: DB) -> dict[str, str]:
    async with session_scope(db) as session:
        return {record.name: record.addr for record in await session.scalars(select(NameRecord))}


async def registration_order(db: DB) -> list[str]:
    async with session_scope(db) as session:
        return list(await session.scalars(select(Registration.name).order_by(Registration.id)))


@pytest.fixture
def held_first_flush(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[asyncio.Event, ...]]:
    """(entered, release): the first transaction stops after opening until `release` is set,
    so that the acceptances made meanwhile wait for the next one."""
    entered, release = asyncio.Event(), asyncio.Event()
    real_take_write_lock = acceptance._take_write_lock

    async def take_write_lock_held(session: AsyncSession) -> None:
        await real_take_write_lock(session)
        if not entered.is_set():
            entered.set()
            await release.wait()

    monkeypatch.setattr(acceptance, "_take_write_lock", take_write_lock_held)
    yield entered, release


# -- batching --------------------------------------------------------------------------------


def test_store_at_once_shares_one_commit(database_settings: Settings) -> None:
    async def scenario(_engine: AsyncEngine, db: DB) -> None:
        group = GroupCommit(db)
        names = [fresh_name() for _ in range(10)]
        await asyncio.gather(
            *(group.store(acceptance_rows(name, secrets.token_hex(20))) for name in names)
        )
        assert (group.commits, group.committed_acceptances) == (1, 10)
        assert set(await stored_addrs(db)) == set(names)
        assert await registration_order(db) == names

    run(database_settings, scenario)


def test_store_while_a_commit_is_in_flight_waits_for_the_next_one(
    database_settings: Settings, held_first_flush: tuple[asyncio.Event, asyncio.Event]
) -> None:
    entered, release = held_first_flush

    async def scenario(_engine: AsyncEngine, db: DB) -> None:
        group = GroupCommit(db)
        first = asyncio.create_task(group.store(acceptance_rows("gcfirst", "a1" * 20)))
        await entered.wait()
        later_names = [f"gclater{index}" for index in range(5)]
        later = [
            asyncio.create_task(group.store(acceptance_rows(name, secrets.token_hex(20))))
            for name in later_names
        ]
        while group.queued < len(later):
            await asyncio.sleep(0)
        # The first transaction does not take in what arrived after it opened.
        assert not first.done()
        release.set()
        await first
        assert group.commits == 1
        await asyncio.gather(*later)
        assert (group.commits, group.committed_acceptances) == (2, 6)
        assert await registration_order(db) == ["gcfirst", *later_names]

    run(database_settings, scenario)


def test_store_conflict_in_a_batch_fails_that_caller_alone(database_settings: Settings) -> None:
    async def scenario(_engine: AsyncEngine, db: DB) -> None:
        group = GroupCommit(db)
        taken = fresh_name()
        await group.store(acceptance_rows(taken, "b1" * 20))
        before, after = fresh_name(), fresh_name()
        outcomes = await asyncio.gather(
            group.store(acceptance_rows(before, "b2" * 20)),
            group.store(acceptance_rows(taken, "b3" * 20)),  # the name is claimed
            group.store(acceptance_rows(after, "b1" * 20)),  # so is the address
            group.store(acceptance_rows(fresh_name(), "b4" * 20)),
            return_exceptions=True,
        )
        assert outcomes[0] is None and outcomes[3] is None
        assert isinstance(outcomes[1], sqlalchemy.exc.IntegrityError)
        assert isinstance(outcomes[2], sqlalchemy.exc.IntegrityError)
        assert group.commits == 2
        stored = await stored_addrs(db)
        assert stored[taken] == "b1" * 20
        assert before in stored and after not in stored
        assert len(await registration_order(db)) == 3

    run(database_settings, scenario)


def test_store_conflicts_in_one_batch_the_first_to_arrive_wins(
    database_settings: Settings,
) -> None:
    async def scenario(_engine: AsyncEngine, db: DB) -> None:
        group = GroupCommit(db)
        name = fresh_name()
        addrs = [secrets.token_hex(20) for _ in range(5)]
        outcomes = await asyncio.gather(
            *(group.store(acceptance_rows(name, addr)) for addr in addrs),
            return_exceptions=True,
        )
        assert outcomes[0] is None
        assert all(isinstance(outcome, sqlalchemy.exc.IntegrityError) for outcome in outcomes[1:])
        assert group.commits == 1
        assert (await stored_addrs(db))[name] == addrs[0]

    run(database_settings, scenario)


def test_store_failed_commit_fails_every_caller_with_503(database_settings: Settings) -> None:
    async def scenario(engine: AsyncEngine, db: DB) -> None:
        def refuse_commit(_connection: Any) -> None:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, OSError("disk I/O error"))

        group = GroupCommit(db)
        names = [fresh_name() for _ in range(4)]
        event.listen(engine.sync_engine, "commit", refuse_commit)
        try:
            outcomes = await asyncio.gather(
                *(group.store(acceptance_rows(name, secrets.token_hex(20))) for name in names),
                return_exceptions=True,
            )
        finally:
            event.remove(engine.sync_engine, "commit", refuse_commit)
        assert all(isinstance(outcome, DatabaseUnavailable) for outcome in outcomes), outcomes
        assert len({id(outcome) for outcome in outcomes}) == len(outcomes)
        assert await stored_addrs(db) == {}
        # The next batch is written as usual.
        await group.store(acceptance_rows(names[0], "c1" * 20))
        assert await stored_addrs(db) == {names[0]: "c1" * 20}

    run(database_settings, scenario)


def test_store_cancelled_before_its_batch_stores_nothing(
    database_settings: Settings, held_first_flush: tuple[asyncio.Event, asyncio.Event]
) -> None:
    entered, release = held_first_flush

    async def scenario(_engine: AsyncEngine, db: DB) -> None:
        group = GroupCommit(db)
        first = asyncio.create_task(group.store(acceptance_rows("gcheld", "d1" * 20)))
        await entered.wait()
        gone = asyncio.create_task(group.store(acceptance_rows("gcgone", "d2" * 20)))
        while group.queued < 1:
            await asyncio.sleep(0)
        gone.cancel()
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await gone
        await group.store(acceptance_rows("gckept", "d3" * 20))
        assert set(await stored_addrs(db)) == {"gcheld", "gckept"}

    run(database_settings, scenario)


# -- through the registry ----------------------------------------------------------------------


def service_over(db: DB) -> NameService:
    return NameService(
        sessionmaker=db,
        registrar=Registrar(FakeNode().client(), REGISTRAR),
        negative_cache_seconds=0,
        registrations_enabled=True,
        owner_address="0x" + OWNER,
    )


def request_of(account: Any, name: str) -> RegistrationRequest:
    return RegistrationRequest(
        addr=account.jami_id, publickey=account.publickey_b64, signature=account.sign(name)
    )


def test_register_burst_is_acknowledged_in_shared_commits(database_settings: Settings) -> None:
    async def scenario(_engine: AsyncEngine, db: DB) -> None:
        service = service_over(db)
        accounts = quick_accounts(12, offset=900)
        names = [fresh_name() for _ in accounts]
        await asyncio.gather(
            *(
                service.register(name, request_of(account, name))
                for name, account in zip(names, accounts, strict=True)
            )
        )
        stored = await stored_addrs(db)
        assert {name: stored[name] for name in names} == {
            name: account.jami_id for name, account in zip(names, accounts, strict=True)
        }
        assert service.acceptances.committed_acceptances == len(names)
        assert service.acceptances.commits < len(names)

    run(database_settings, scenario)


def test_register_one_name_from_many_ids_in_one_batch_one_wins(
    database_settings: Settings,
) -> None:
    """Every contender passes the checks before any row is stored; the batch then holds
    all of them: the first is accepted, every other is answered 409 as today."""

    async def scenario(_engine: AsyncEngine, db: DB) -> None:
        service = service_over(db)
        accounts = quick_accounts(6, offset=920)
        name = fresh_name()
        outcomes = await asyncio.gather(
            *(service.register(name, request_of(account, name)) for account in accounts),
            return_exceptions=True,
        )
        assert outcomes.count(None) == 1, outcomes
        refused = [outcome for outcome in outcomes if outcome is not None]
        assert all(isinstance(outcome, NameTaken) for outcome in refused), outcomes
        winner = accounts[outcomes.index(None)]
        assert (await stored_addrs(db))[name] == winner.jami_id

    run(database_settings, scenario)


def test_register_failed_commit_is_503_for_every_request(database_settings: Settings) -> None:
    async def scenario(engine: AsyncEngine, db: DB) -> None:
        def refuse_commit(_connection: Any) -> None:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, OSError("disk I/O error"))

        service = service_over(db)
        accounts = quick_accounts(3, offset=940)
        names = [fresh_name() for _ in accounts]
        event.listen(engine.sync_engine, "commit", refuse_commit)
        try:
            outcomes = await asyncio.gather(
                *(
                    service.register(name, request_of(account, name))
                    for name, account in zip(names, accounts, strict=True)
                ),
                return_exceptions=True,
            )
        finally:
            event.remove(engine.sync_engine, "commit", refuse_commit)
        assert all(isinstance(outcome, DatabaseUnavailable) for outcome in outcomes), outcomes
        assert all(outcome.status_code == 503 for outcome in outcomes)  # type: ignore[union-attr]
        assert await stored_addrs(db) == {}

    run(database_settings, scenario)


def test_store_flush_cancelled_fails_every_waiter_with_503(
    database_settings: Settings, held_first_flush: tuple[asyncio.Event, asyncio.Event]
) -> None:
    """The loop closing mid-flush: the batch in flight and the acceptances queued behind it
    are answered 503, none is left waiting."""
    entered, _release = held_first_flush

    async def scenario(_engine: AsyncEngine, db: DB) -> None:
        group = GroupCommit(db)
        in_flight = asyncio.create_task(group.store(acceptance_rows("gcinflight", "e1" * 20)))
        await entered.wait()
        queued = asyncio.create_task(group.store(acceptance_rows("gcqueued", "e2" * 20)))
        while group.queued < 1:
            await asyncio.sleep(0)
        assert group._flusher is not None
        group._flusher.cancel()
        outcomes = await asyncio.gather(in_flight, queued, return_exceptions=True)
        assert all(isinstance(outcome, DatabaseUnavailable) for outcome in outcomes), outcomes
        assert await stored_addrs(db) == {}

    run(database_settings, scenario)
