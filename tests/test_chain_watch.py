"""The chain watch (app/workers/chain_watch.py) over an in-process node: which head drops it
calls a lost chain. The real-node cases are in tests/test_hostile_chain.py."""

from __future__ import annotations

import asyncio

from app.workers.chain_watch import REORG_TOLERANCE_BLOCKS, ChainWatch
from tests.fake_chain import REGISTRAR, FakeNode


def heads_seen(heads: list[int]) -> list[str | None]:
    node = FakeNode()

    async def go() -> list[str | None]:
        client = node.client()
        watch = ChainWatch(client=client, registrar_address=REGISTRAR, interval=1, on_change=print)
        seen = []
        for head in heads:
            node.head = head
            seen.append(await watch.check())
        return seen

    return asyncio.run(go())


def test_chain_watch_lets_a_short_reorg_pass() -> None:
    """Clique's fork choice can swap in a sibling branch a block or two shorter: a normal
    reorg, which the writer and indexer handle, is not a lost chain (registrations 503)."""
    top = 20
    assert heads_seen([top, top - 2, top + 1]) == [None, None, None]


def test_chain_watch_calls_a_longer_drop_a_lost_chain() -> None:
    seen = heads_seen([20, 20 - REORG_TOLERANCE_BLOCKS - 1, 21])
    assert seen[0] is None
    assert seen[1] is not None and "went backwards from block 20" in seen[1]
    assert seen[2] is None  # back past where it was
