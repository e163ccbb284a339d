"""Rows built and written in one place (app/services/records.py), on a migrated SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.chain.registrar import ChainRecord
from app.db import make_async_engine, make_sessionmaker, migrate, session_scope
from app.models import CONFIRMED, PENDING, NameRecord, Registration
from app.services.records import (
    Claim,
    RegistrationStatus,
    apply_records,
    chain_record,
    new_registration,
    pending_record,
    skipped_chain_names,
)
from app.settings import Settings

DB = async_sessionmaker[AsyncSession]
ALICE_ID = "a" * 40
BOB_ID = "b" * 40
OWNER = "c" * 40

CLAIM = Claim(
    name="Alice",
    folded_name="alice",
    addr=ALICE_ID,
    owner=OWNER,
    publickey="cGs=",
    signature="c2ln",
)


def run(tmp_path: Path, scenario: Callable[[DB], Awaitable[None]]) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'r.sqlite3'}"
    )
    migrate(settings)

    async def go() -> None:
        engine = make_async_engine(settings)
        try:
            await scenario(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    asyncio.run(go())


async def rows(db: DB) -> dict[str, NameRecord]:
    async with session_scope(db) as session:
        return {row.name: row for row in await session.scalars(select(NameRecord))}


def test_claim_builds_a_pending_registration_and_its_record() -> None:
    registration = new_registration(CLAIM)
    assert (registration.name, registration.folded_name, registration.addr) == (
        "Alice",
        "alice",
        ALICE_ID,
    )
    assert (registration.claim_name, registration.claim_addr) == ("alice", ALICE_ID)
    assert registration.state == PENDING
    assert Claim.of(registration) == CLAIM
    record = pending_record(CLAIM)
    assert record.pending is True
    assert (record.publickey, record.signature, record.owner) == ("cGs=", "c2ln", OWNER)


def test_pending_record_of_an_import_without_keys_stores_none() -> None:
    record = pending_record(Claim("bob", "bob", BOB_ID, OWNER, "", ""))
    assert record.publickey is None
    assert record.signature is None


def test_chain_record_folds_and_is_not_pending() -> None:
    record = chain_record(ChainRecord("Bob", BOB_ID, OWNER, "", "sig"), block=9)
    assert (record.folded_name, record.pending, record.block_number) == ("bob", False, 9)
    assert (record.publickey, record.signature) == (None, "sig")


def test_apply_records_inserts_updates_and_deletes(tmp_path: Path) -> None:
    async def scenario(db: DB) -> None:
        async with session_scope(db) as session, session.begin():
            await apply_records(session, [("bob", ChainRecord("bob", BOB_ID, OWNER, "", ""), 3)])
        assert (await rows(db))["bob"].block_number == 3
        async with session_scope(db) as session, session.begin():
            await apply_records(
                session, [("bob", ChainRecord("bob", ALICE_ID, OWNER, "pk", ""), 4)]
            )
        bob = (await rows(db))["bob"]
        assert (bob.addr, bob.publickey, bob.block_number) == (ALICE_ID, "pk", 4)
        async with session_scope(db) as session, session.begin():
            await apply_records(session, [("bob", None, 5)])
        assert "bob" not in await rows(db)

    run(tmp_path, scenario)


def test_apply_records_leaves_pending_rows_to_the_writer(tmp_path: Path) -> None:
    async def scenario(db: DB) -> None:
        async with session_scope(db) as session, session.begin():
            session.add(pending_record(CLAIM))
        async with session_scope(db) as session, session.begin():
            await apply_records(
                session, [("Alice", ChainRecord("Alice", BOB_ID, OWNER, "", ""), 7)]
            )
        alice = (await rows(db))["Alice"]
        assert (alice.addr, alice.pending) == (ALICE_ID, True)

    run(tmp_path, scenario)


def test_apply_records_skips_unservable_and_fold_collisions(tmp_path: Path) -> None:
    async def scenario(db: DB) -> None:
        async with session_scope(db) as session, session.begin():
            await apply_records(
                session,
                [
                    ("carol", ChainRecord("carol", BOB_ID, OWNER, "", ""), 1),
                    ("Carol", ChainRecord("Carol", ALICE_ID, OWNER, "", ""), 1),
                    ("a b", ChainRecord("a b", ALICE_ID, OWNER, "", ""), 1),
                ],
            )
        assert set(await rows(db)) == {"carol"}
        async with session_scope(db) as session:
            skipped = dict(await skipped_chain_names(session))
        assert skipped["a b"] == "outside the name policy"
        assert "folds like 'carol'" in skipped["Carol"]
        # Freed on chain: no longer reported as skipped.
        async with session_scope(db) as session, session.begin():
            await apply_records(session, [("a b", None, 2)])
        async with session_scope(db) as session:
            assert "a b" not in dict(await skipped_chain_names(session))

    run(tmp_path, scenario)


def test_registration_status_of_a_row() -> None:
    registration = new_registration(CLAIM)
    registration.state = CONFIRMED
    registration.tx_hash = "0x" + "1" * 64
    registration.block = 12
    assert RegistrationStatus.of(registration).model_dump() == {
        "name": "Alice",
        "state": "confirmed",
        "tx": "0x" + "1" * 64,
        "block": 12,
        "reason": None,
    }


def test_registration_status_rows_read_back(tmp_path: Path) -> None:
    async def scenario(db: DB) -> None:
        async with session_scope(db) as session, session.begin():
            session.add(new_registration(CLAIM))
        async with session_scope(db) as session:
            stored = await session.scalar(select(Registration))
        assert stored is not None
        assert RegistrationStatus.of(stored).state == "pending"

    run(tmp_path, scenario)
