"""Supervision of the server's background loops: log, back off, restart, and tell.

Every long-running task of the server (the leader loop, and under it the transaction
writer and the indexer; the balance watch) runs under a Supervisor. A loop that raises is
logged with its traceback and started again after a back-off that doubles from
`min_backoff` to `max_backoff` (and starts over once a run lasted `healthy_after`
seconds); a loop that returns is started again too: none of them is meant to end.
`problems()` names each loop that is not running at the moment, for /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class _Supervised:
    name: str
    make: LoopFactory
    task: asyncio.Task[None] | None = None
    running: bool = False
    failures: int = 0
    last_error: str | None = None


class Supervisor:
    def __init__(
        self,
        *,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        healthy_after: float = 60.0,
    ) -> None:
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self._loops: dict[str, _Supervised] = {}
        self._children: list[Supervisor] = []

    def start(self, name: str, make: LoopFactory) -> None:
        """Run `make()` under supervision as `name` until stop()."""
        if name in self._loops:
            raise ValueError(f"{name} is already supervised")
        loop = _Supervised(name=name, make=make, running=True)
        self._loops[name] = loop
        loop.task = asyncio.create_task(self._keep_running(loop), name=name)

    def adopt(self, child: Supervisor) -> None:
        """Report `child`'s problems as ours (a loop that supervises loops of its own)."""
        self._children.append(child)

    def disown(self, child: Supervisor) -> None:
        with contextlib.suppress(ValueError):
            self._children.remove(child)

    async def stop(self) -> None:
        """Cancel every loop and wait for them to end."""
        loops, self._loops = list(self._loops.values()), {}
        for loop in loops:
            if loop.task is not None:
                loop.task.cancel()
        for loop in loops:
            if loop.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await loop.task

    def problems(self) -> dict[str, str]:
        """Each supervised loop that is not running now, and why."""
        found: dict[str, str] = {}
        for loop in self._loops.values():
            if not loop.running:
                found[loop.name] = (
                    f"not running (failed {loop.failures} times; last: {loop.last_error})"
                    if loop.failures
                    else "not running"
                )
        for child in self._children:
            found.update(child.problems())
        return found

    async def _keep_running(self, loop: _Supervised) -> None:
        backoff = self.min_backoff
        while True:
            started = time.monotonic()
            loop.running = True
            try:
                await loop.make()
            except asyncio.CancelledError:
                loop.running = False
                raise
            except Exception as exc:
                loop.last_error = f"{type(exc).__name__}: {exc}"[:300]
                logger.exception("%s failed", loop.name)
            else:
                loop.last_error = "returned"
                logger.error("%s returned; it should run until stopped", loop.name)
            loop.running = False
            loop.failures += 1
            if time.monotonic() - started >= self.healthy_after:
                backoff = self.min_backoff
            logger.warning("restarting %s in %.1f s", loop.name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff, backoff * 2)
