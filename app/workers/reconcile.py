"""Put back on chain what SQL holds as confirmed and the chain has lost.

A node that crashes (power loss, a state dump a few seconds old, a restore from backup)
can come back without its last blocks. A registration confirmed in one of them was
answered 200 and shown to clients, who cache it forever: it must be made true again. At
writer start, every confirmed registration is checked against the chain's head; those
the chain lacks go back to pending, with their name record kept (pending) so lookups keep
answering, and the writer sends them again.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.chain.client import ChainClient
from app.chain.registrar import Registrar
from app.db import session_scope
from app.models import CONFIRMED, PENDING, Registration
from app.services.records import Claim, pending_record

logger = logging.getLogger(__name__)

NAMES_PER_BATCH = 250


async def reopen(session: AsyncSession, registration: Registration, *, resign: bool) -> None:
    """Hand a confirmed registration the chain no longer has back to the writer. Its name
    stays taken (a pending record), as it was when this server answered 200."""
    registration.state = PENDING
    registration.block = None
    registration.reason = None
    if resign:
        # Its nonce may now belong to another transaction: sign it anew.
        registration.nonce = None
        registration.tx_hash = None
        registration.raw_tx = None
    await session.merge(pending_record(Claim.of(registration)))


async def reconcile_confirmed(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    client: ChainClient,
    registrar: Registrar,
    blocks: tuple[int, int] | None = None,
) -> list[str]:
    """Return the names of confirmed registrations the chain lacks, now pending again.

    Lost means: confirmed at a block above the chain's head, or not bound to its address
    on chain while its own transaction is not in any block of this chain. A name whose
    transaction is still on chain and which is bound elsewhere (or freed) was changed by
    its owner after confirmation, as the indexer mirrors: that is not a loss. `blocks`
    limits the check to registrations confirmed in that range (the indexer checks each
    range it reads: a reorg may orphan a block before the indexer ever saw its hash).
    """
    head = await client.block_number()
    async with session_scope(sessionmaker) as session:
        confirmed = list(
            await session.scalars(
                select(Registration)
                .where(
                    Registration.state == CONFIRMED,
                    *(
                        (Registration.block >= blocks[0], Registration.block <= blocks[1])
                        if blocks
                        else ()
                    ),
                )
                .order_by(Registration.id)
            )
        )
    lost: list[tuple[int, bool]] = []  # (registration id, its transaction is in the pool)
    for start in range(0, len(confirmed), NAMES_PER_BATCH):
        batch = confirmed[start : start + NAMES_PER_BATCH]
        # The current state, never one at a number: a pruned node may not have it.
        records = await registrar.records_at([row.name for row in batch])
        for registration, record in zip(batch, records, strict=True):
            if record is not None and record.addr == registration.addr:
                if registration.block is None or registration.block <= head:
                    continue
            elif registration.tx_hash is not None and (
                await client.receipt(registration.tx_hash) is not None
            ):
                continue  # our transaction is on this chain: the owner changed it since
            in_pool = registration.tx_hash is not None and await client.transaction_known(
                registration.tx_hash
            )
            lost.append((registration.id, in_pool))
    if not lost:
        return []
    restored: list[str] = []
    async with session_scope(sessionmaker) as session, session.begin():
        for registration_id, in_pool in lost:
            row = await session.get(Registration, registration_id)
            if row is None or row.state != CONFIRMED:
                continue  # the indexer's reorg rollback got there first
            await reopen(session, row, resign=not in_pool)
            restored.append(row.name)
    logger.warning(
        "%d confirmed registrations are missing from the chain (head %d): sending them again",
        len(restored),
        head,
    )
    return restored
