"""A bounded set of tasks that send, together, what callers asked while others were on
their way (the chain client's batches, PostgreSQL's name reads)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any


class Senders:
    """At most `limit` sending tasks at once.

    A task leaves the set in the turn its `send` returns, which is the turn it found
    nothing left to send. Forgetting it through a done callback, one turn later, lost
    callers: one that asked in between, with every sender finished, counted them as on
    their way and waited for ever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, send: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start `send()` unless `limit` senders are on their way (one of them will find
        what the caller queued before it returns)."""
        if len(self._tasks) < self.limit:
            # A context of its own: a send serves many requests (log lines carry the
            # request id of the context they run in).
            task = asyncio.create_task(self._run(send), context=contextvars.Context())
            self._tasks.add(task)

    async def _run(self, send: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await send()
        finally:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.discard(task)
