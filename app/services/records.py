"""The one place `NameRecord` and `Registration` rows are built and written.

A name reaches SQL in three ways: a registration this server accepts (or imports) for the
writer, a lookup that found it on chain (fill on read), and the indexer mirroring the
chain. Each used to set the row's fields itself; a field added to one was forgotten in
another. The registration status a client or an operator reads is defined here too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import names
from app.chain.registrar import ChainRecord, servable
from app.db import set_meta
from app.models import PENDING, Meta, NameRecord, Registration

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """A binding this server takes on to write on chain: a registration it accepted, an
    imported record, a confirmed registration the chain lost. Addresses are 40 lowercase
    hex; key fields as received ("" when an import has none)."""

    name: str
    folded_name: str
    addr: str
    owner: str
    publickey: str
    signature: str

    @classmethod
    def of(cls, registration: Registration) -> Claim:
        return cls(
            name=registration.name,
            folded_name=registration.folded_name,
            addr=registration.addr,
            owner=registration.owner,
            publickey=registration.publickey,
            signature=registration.signature,
        )


def new_registration(claim: Claim) -> Registration:
    """The writer's queue entry for `claim`: pending, holding its name and its address."""
    return Registration(
        name=claim.name,
        folded_name=claim.folded_name,
        addr=claim.addr,
        owner=claim.owner,
        publickey=claim.publickey,
        signature=claim.signature,
        claim_name=claim.folded_name,
        claim_addr=claim.addr,
        state=PENDING,
    )


def pending_record(claim: Claim) -> NameRecord:
    """The name as lookups see it while the writer has not confirmed `claim` on chain."""
    return NameRecord(
        name=claim.name,
        folded_name=claim.folded_name,
        addr=claim.addr,
        owner=claim.owner,
        publickey=claim.publickey or None,
        signature=claim.signature or None,
        pending=True,
    )


def chain_record(found: ChainRecord, *, block: int | None = None) -> NameRecord:
    """A name as the chain holds it, read at `block` (None: by a lookup, not an event)."""
    row = NameRecord(name=found.name, folded_name=names.fold(found.name), pending=False)
    _write_chain_fields(row, found, block)
    return row


def _write_chain_fields(row: NameRecord, found: ChainRecord, block: int | None) -> None:
    row.addr = found.addr
    row.owner = found.owner
    row.publickey = found.publickey or None
    row.signature = found.signature or None
    row.block_number = block


# -- the indexer's mirror -----------------------------------------------------------------

SKIPPED_PREFIX = "skipped_chain_name:"


async def apply_records(
    session: AsyncSession, records: Sequence[tuple[str, ChainRecord | None, int]]
) -> None:
    """Write chain records (name, record or None when freed, block) into the names table
    (records of pending registrations are the writer's to settle; a name folded like
    another name already stored is skipped)."""
    if not records:
        return
    wanted = [name for name, _, _ in records]
    existing = {
        row.name: row
        for row in await session.scalars(select(NameRecord).where(NameRecord.name.in_(wanted)))
    }
    folds = {names.fold(name) for name in wanted}
    fold_rows = await session.execute(
        select(NameRecord.folded_name, NameRecord.name).where(NameRecord.folded_name.in_(folds))
    )
    fold_owner = {folded: name for folded, name in fold_rows}
    for name, record, block in records:
        row = existing.get(name)
        if row is not None and row.pending:
            continue
        skip_key = SKIPPED_PREFIX + name
        if record is None:
            if row is not None:
                await session.delete(row)
                fold_owner.pop(row.folded_name, None)
            await session.execute(delete(Meta).where(Meta.key == skip_key))
            continue
        if not servable(name):
            # Anyone can write any bytes32 on the contract: not a name, never served.
            await _skip(session, name, "outside the name policy")
            if row is not None:
                await session.delete(row)
                fold_owner.pop(row.folded_name, None)
            continue
        if row is not None:
            _write_chain_fields(row, record, block)
            continue
        folded = names.fold(name)
        holder = fold_owner.get(folded)
        if holder is not None and holder != name:
            await _skip(session, name, f"folds like {holder!r}, which is served")
            continue
        await session.execute(delete(Meta).where(Meta.key == skip_key))
        row = chain_record(record, block=block)
        session.add(row)
        existing[name] = row
        fold_owner[folded] = name


async def _skip(session: AsyncSession, name: str, reason: str) -> None:
    """Remember a chain record the mirror does not serve, for `jamins export` to report."""
    logger.warning("chain record %r not served: %s", name, reason)
    await set_meta(session, SKIPPED_PREFIX + name, reason)


async def skipped_chain_names(session: AsyncSession) -> list[tuple[str, str]]:
    """(name, why) of every chain record the mirror holds on chain but does not serve."""
    rows = await session.execute(
        select(Meta.key, Meta.value).where(Meta.key.startswith(SKIPPED_PREFIX)).order_by(Meta.key)
    )
    return [(key.removeprefix(SKIPPED_PREFIX), value) for key, value in rows]


# -- what became of a registration ------------------------------------------------------


class RegistrationStatus(BaseModel):
    """What became of a registration this server accepted: `GET /registrations/{name}`
    and `jamins status` show it."""

    name: str
    state: Literal["pending", "confirmed", "failed"]
    tx: str | None = Field(description="Hash of the latest reserveFor transaction.")
    block: int | None = Field(description="Block that decided the outcome.")
    reason: str | None = Field(description="Why it failed.")

    @classmethod
    def of(cls, registration: Registration) -> RegistrationStatus:
        return cls(
            name=registration.name,
            state=registration.state,
            tx=registration.tx_hash,
            block=registration.block,
            reason=registration.reason,
        )
