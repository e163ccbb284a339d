"""Notices a chain that is no longer the one the server was serving.

A node can lose blocks (a restore, a crash before its state was saved) or be reset by any
local process speaking to its JSON-RPC (`anvil_reset` on the embedded node): the head goes
backwards, or the registrar's code is gone. Registrations accepted then would stay pending
for ever, and lookups would be answered from a cache of a chain that no longer exists.
While that lasts, /readyz says not ready and registrations answer 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from app.chain.client import ChainClient, ChainRejected
from app.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

# Clique's fork choice can swap in a sibling branch a block or two shorter (a tie in total
# difficulty goes to the lower number): a normal reorg, which the writer and indexer
# handle. A longer drop is a node that lost blocks or was reset.
REORG_TOLERANCE_BLOCKS = 2


class ChainWatch:
    def __init__(
        self,
        *,
        client: ChainClient,
        registrar_address: str,
        interval: float,
        on_change: Callable[[str | None], None],
    ) -> None:
        self.client = client
        self.registrar_address = registrar_address
        self.interval = interval
        self.on_change = on_change
        self.highest_block: int | None = None
        self.problem: str | None = None

    async def check(self) -> str | None:
        """One look at the chain; returns (and records) what is wrong, or None."""
        head = await self.client.block_number()
        code = await self.client.rpc("eth_getCode", [self.registrar_address, "latest"])
        problem: str | None = None
        if not code or code in ("0x", "0x0"):
            problem = f"the registrar {self.registrar_address} is gone from the chain"
        elif self.highest_block is not None and head < self.highest_block - REORG_TOLERANCE_BLOCKS:
            problem = f"the chain went backwards from block {self.highest_block} to {head}"
        if problem is None:
            self.highest_block = max(head, self.highest_block or 0)
        self._set(problem)
        return problem

    def _set(self, problem: str | None) -> None:
        if problem != self.problem:
            if problem is not None:
                logger.error("%s: not ready, registrations answer 503", problem)
            else:
                logger.info("the chain is back: registrations resume")
            self.problem = problem
            self.on_change(problem)

    async def run(self) -> None:
        """Check until cancelled; a node that does not answer only skips a check."""
        while True:
            try:
                await self.check()
            except (ServiceUnavailable, ChainRejected) as exc:
                logger.debug("chain watch skipped: %s", exc)
            await asyncio.sleep(self.interval)
