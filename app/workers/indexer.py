"""The event indexer: keeps the SQL names table a faithful mirror of the registrar.

It follows the registrar's `Changed` and `PrimaryChanged` events with eth_getLogs over
block ranges (the name is topic 1, raw bytes), reloads every touched record at the range's
head in JSON-RPC batches, and commits each range with the block it reached, so a crash
resumes from the last committed block. It remembers the hash of each block it indexed
within `reorg_window` blocks of the head; when the chain's hash for the last indexed block
differs, it finds the common ancestor, reloads every record written after it, puts this
server's registrations confirmed after it back in the writer's hands, and indexes again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import names
from app.chain.client import ChainClient, ChainRejected
from app.chain.registrar import ChainRecord, Registrar
from app.db import get_meta, session_scope, set_meta
from app.errors import ServiceUnavailable
from app.models import CONFIRMED, IndexedBlock, NameRecord, Registration
from app.services.records import apply_records
from app.workers.reconcile import reconcile_confirmed, reopen

logger = logging.getLogger(__name__)

META_INDEXED = "indexed_block"
MIN_RANGE = 1
MAX_RANGE = 50_000


@dataclass
class IndexerProgress:
    indexed_block: int
    head_block: int
    names_loaded: int


class Indexer:
    """Follows the chain into SQL; `run()` forever, or `catch_up()` once."""

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        client: ChainClient,
        registrar: Registrar,
        start_block: int,
        reorg_window: int = 256,
        poll_seconds: float = 1.0,
        names_per_batch: int = 250,
        parallel_batches: int = 4,
        initial_range: int = 2_000,
        on_progress: Callable[[IndexerProgress], None] | None = None,
        on_changed: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.client = client
        self.registrar = registrar
        self.start_block = start_block
        self.reorg_window = reorg_window
        self.poll_seconds = poll_seconds
        self.names_per_batch = names_per_batch
        self.parallel_batches = parallel_batches
        self.block_range = initial_range
        self.on_progress = on_progress
        self.on_changed = on_changed
        self.indexed_block: int | None = None
        self.head_block: int | None = None
        self.names_loaded = 0

    @property
    def lag(self) -> int:
        """Blocks the mirror is behind the node (0 before the first look at the head)."""
        if self.indexed_block is None or self.head_block is None:
            return 0
        return max(0, self.head_block - self.indexed_block)

    async def run(self) -> None:
        """Index until cancelled; node or database outages only pause it."""
        while True:
            try:
                while await self.step():
                    pass
            except asyncio.CancelledError:
                raise
            except ServiceUnavailable as exc:
                logger.warning("indexer paused: %s", exc.detail)
            except Exception:
                logger.exception("indexer step failed")
            await asyncio.sleep(self.poll_seconds)

    async def catch_up(self) -> int:
        """Index to the current head; returns the block reached."""
        while await self.step():
            pass
        assert self.indexed_block is not None
        return self.indexed_block

    async def step(self) -> bool:
        """Index one range of blocks. True when the head is not reached yet."""
        if self.indexed_block is None:
            self.indexed_block = await self._load_indexed()
        head = await self.client.block_number()
        self.head_block = head
        last = self.indexed_block
        if last >= self.start_block and (last > head or not await self._still_canonical(last)):
            last = await self._roll_back(head)
        if last >= head:
            self._report()
            return False
        to_block = min(head, last + self.block_range)
        try:
            touched = await self.registrar.touched_names(last + 1, to_block)
        except ChainRejected as exc:
            # Nodes cap eth_getLogs by range or by result size: ask for less.
            if self.block_range <= MIN_RANGE:
                raise
            self.block_range = max(MIN_RANGE, self.block_range // 4)
            logger.info("eth_getLogs refused (%s); range now %d", exc, self.block_range)
            return True
        records = await self._load(touched, head)
        hashes = await self._hashes(max(last + 1, head - self.reorg_window), to_block)
        await self._commit(records, hashes, to_block, head)
        # The writer may have confirmed a registration in a block that a reorg orphaned
        # before this indexer saw it: such a block leaves no hash here to disagree with.
        restored = await reconcile_confirmed(
            sessionmaker=self.sessionmaker,
            client=self.client,
            registrar=self.registrar,
            blocks=(last + 1, to_block),
        )
        if restored and self.on_changed:
            self.on_changed([names.fold(name) for name in restored])
        self.indexed_block = to_block
        self.names_loaded += len(records)
        if len(touched) < 1_000:
            self.block_range = min(MAX_RANGE, self.block_range * 2)
        self._report()
        if self.on_changed and records:
            self.on_changed(names.fold(record[0]) for record in records)
        return to_block < head

    def _report(self) -> None:
        if self.on_progress and self.indexed_block is not None and self.head_block is not None:
            self.on_progress(
                IndexerProgress(self.indexed_block, self.head_block, self.names_loaded)
            )

    # -- reading the chain ---------------------------------------------------------------

    async def _load(
        self, touched: dict[bytes, int], head: int
    ) -> list[tuple[str, ChainRecord | None, int]]:
        """(name, record or None when freed, block that touched it) for each touched name.

        Records are read in the current state ("latest", never a block number, not even
        the head's: a node restarted from a state file, or one that pruned while we read,
        may lack it); the current record is the truth the range leads to, and any later
        change is in a later range."""
        decoded: list[tuple[str, int]] = []
        for raw, block in touched.items():
            try:
                decoded.append((names.from_bytes32(raw), block))
            except names.BadName:
                logger.warning("skipping a name that is not UTF-8 on chain: 0x%s", raw.hex())
        chunks = [
            decoded[start : start + self.names_per_batch]
            for start in range(0, len(decoded), self.names_per_batch)
        ]
        limiter = asyncio.Semaphore(self.parallel_batches)

        async def load_chunk(chunk: list[tuple[str, int]]) -> list[ChainRecord | None]:
            async with limiter:
                return await self.registrar.records_at([name for name, _ in chunk])

        loaded = await asyncio.gather(*(load_chunk(chunk) for chunk in chunks))
        return [
            (name, record, block)
            for chunk, records in zip(chunks, loaded, strict=True)
            for (name, block), record in zip(chunk, records, strict=True)
        ]

    async def _hashes(self, from_block: int, to_block: int) -> dict[int, str]:
        """Block hashes to remember: the reorg window's, and always the range's last."""
        numbers = sorted({*range(max(from_block, 0), to_block + 1), to_block})
        blocks = await self.client.rpc_batch(
            [("eth_getBlockByNumber", [hex(number), False]) for number in numbers]
        )
        return {
            number: block["hash"]
            for number, block in zip(numbers, blocks, strict=True)
            if block is not None
        }

    async def _still_canonical(self, number: int) -> bool:
        async with session_scope(self.sessionmaker) as session:
            stored = await session.get(IndexedBlock, number)
        if stored is None:
            return True  # nothing remembered (backfill far below the head)
        block = await self.client.rpc("eth_getBlockByNumber", [hex(number), False])
        return block is not None and block["hash"] == stored.hash

    # -- writing SQL ---------------------------------------------------------------------

    async def _load_indexed(self) -> int:
        async with session_scope(self.sessionmaker) as session:
            value = await get_meta(session, META_INDEXED)
        return int(value) if value is not None else self.start_block - 1

    async def _commit(
        self,
        records: list[tuple[str, ChainRecord | None, int]],
        hashes: dict[int, str],
        to_block: int,
        head: int,
    ) -> None:
        async with session_scope(self.sessionmaker) as session, session.begin():
            await apply_records(session, records)
            for number, block_hash in hashes.items():
                await session.merge(IndexedBlock(number=number, hash=block_hash))
            await session.execute(
                delete(IndexedBlock).where(IndexedBlock.number < head - self.reorg_window)
            )
            await set_meta(session, META_INDEXED, str(to_block))

    async def _roll_back(self, head: int) -> int:
        """Return to the last block both SQL and the chain agree on; returns its number."""
        async with session_scope(self.sessionmaker) as session:
            stored = list(
                await session.scalars(select(IndexedBlock).order_by(IndexedBlock.number.desc()))
            )
        chain_hashes = await self._hashes(stored[-1].number, stored[0].number) if stored else {}
        ancestor = self.start_block - 1
        for block in stored:
            if chain_hashes.get(block.number) == block.hash:
                ancestor = block.number
                break
        logger.warning("reorg: the chain forked after block %d; rolling back", ancestor)
        async with session_scope(self.sessionmaker) as session, session.begin():
            # Our registrations confirmed in orphaned blocks go back to the writer, which
            # finds their transaction again (re-mined) or sends it anew.
            orphaned = list(
                await session.scalars(
                    select(Registration).where(
                        Registration.state == CONFIRMED, Registration.block > ancestor
                    )
                )
            )
            for registration in orphaned:
                await reopen(session, registration, resign=False)
            dirty = list(
                await session.scalars(
                    select(NameRecord.name).where(
                        NameRecord.block_number > ancestor, NameRecord.pending.is_(False)
                    )
                )
            )
        # Reload what the orphaned blocks wrote, as the new chain has it.
        records = await self._load({names.to_bytes32(name): ancestor for name in dirty}, head)
        async with session_scope(self.sessionmaker) as session, session.begin():
            await apply_records(session, records)
            await session.execute(delete(IndexedBlock).where(IndexedBlock.number > ancestor))
            await set_meta(session, META_INDEXED, str(ancestor))
        if orphaned:
            logger.warning("%d registrations were in orphaned blocks: resubmitting", len(orphaned))
        if self.on_changed:
            self.on_changed([names.fold(name) for name in dirty])
        self.indexed_block = ancestor
        return ancestor
