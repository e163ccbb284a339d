"""Admission control for registrations: a rate per client, and a bound on the queue.

Both refusals are 503 with Retry-After (PROTOCOL.md §1.1): a Jami app reads a 429 on a
registration as "taken" and on a lookup as "free". The chain fits about three
registrations per 5 s block, so a queue much longer than a few minutes of blocks only
makes every client wait; and one client should not fill it for everyone else.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from app.errors import RETRY_AFTER_SECONDS, RegistrationsThrottled


@dataclass
class _Bucket:
    tokens: float
    updated: float


class Admission:
    """Token buckets by client address, and the pending-queue bound.

    `rate_per_minute` 0 turns the per-client limit off, `max_pending` 0 the queue bound.
    At most `max_clients` buckets are kept: the least recently seen client is forgotten
    (it gets a full bucket back, which is what an idle client has anyway).
    """

    def __init__(
        self,
        *,
        rate_per_minute: float,
        burst: int,
        max_pending: int,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_second = rate_per_minute / 60
        self.burst = burst
        self.max_pending = max_pending
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check_queue(self, pending: int) -> None:
        """Raise RegistrationsThrottled when `pending` registrations already wait."""
        if self.max_pending and pending >= self.max_pending:
            raise RegistrationsThrottled(
                "too many registrations waiting for the chain", retry_after=RETRY_AFTER_SECONDS
            )

    def take(self, client: str) -> None:
        """Spend one of `client`'s tokens, or raise RegistrationsThrottled."""
        if self.rate_per_second <= 0:
            return
        client = _bucket_key(client)
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = _Bucket(tokens=float(self.burst), updated=now)
            self._buckets[client] = bucket
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_second)
            bucket.updated = now
            self._buckets.move_to_end(client)
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate_per_second
            raise RegistrationsThrottled(
                "too many registrations from this client", retry_after=max(1, math.ceil(wait))
            )
        bucket.tokens -= 1

    def give_back(self, client: str) -> None:
        """Return a token taken for a registration that turned out to be a copy of one
        already accepted (it joins no queue)."""
        bucket = self._buckets.get(_bucket_key(client))
        if bucket is not None:
            bucket.tokens = min(float(self.burst), bucket.tokens + 1)


def _bucket_key(client: str) -> str:
    """A client address is at most 45 characters (IPv6); anything longer came from a
    forwarded header and must not make a bucket key of any size."""
    return client[:64]
