"""Every in-memory answer cache of lookups, and the one generation counter that keeps them
coherent with SQL and the chain.

Ready-to-send bodies of recent hits (names by fold, addresses by Jami ID) and keys
recently found absent on chain (the negative caches). Every write this process makes or
sees (a registration accepted or settled, a record the indexer loaded, a rollback)
forgets the entries it touches and moves the generation on. A lookup notes the
generation before it reads SQL or the chain, and stores what it read only if the
generation has not moved since: a read that raced a write never puts back what the write
removed. Another server on the same database changes records this process does not hear
about, so entries also expire after their `ttl`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable


class _Expiring:
    """Bounded by entries and by bytes: a record registered on the contract directly may
    carry a public key far larger than any real one."""

    def __init__(self, ttl: float, max_entries: int, max_bytes: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        found = self.entries.get(key)
        if found is None:
            return None
        if found[0] < time.monotonic():
            self.pop(key)
            return None
        return found[1]

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def put(self, key: str, body: bytes) -> None:
        if self.ttl <= 0 or len(body) > self.max_bytes // 100:
            return
        self.pop(key)
        self.entries[key] = (time.monotonic() + self.ttl, body)
        self.size += len(key) + len(body)
        while len(self.entries) > self.max_entries or self.size > self.max_bytes:
            old_key, (_, old_body) = self.entries.popitem(last=False)
            self.size -= len(old_key) + len(old_body)

    def pop(self, key: str) -> None:
        found = self.entries.pop(key, None)
        if found is not None:
            self.size -= len(key) + len(found[1])

    def clear(self) -> None:
        self.entries.clear()
        self.size = 0


class HotCache:
    """Answer bodies of `GET /name/{name}` by folded name and `GET /addr/{addr}` by ID,
    and the names and IDs recently found absent on chain."""

    # About 2 KB an answer with an RSA-4096 key: 20,000 is ~40 MB, and the hot set of a
    # community's names; anything colder is one SQL read away.
    def __init__(
        self,
        ttl: float,
        max_entries: int = 20_000,
        max_bytes: int = 64 * 1024 * 1024,
        negative_ttl: float = 0,
        max_negative: int = 100_000,
    ) -> None:
        self.names = _Expiring(ttl, max_entries, max_bytes)
        self.addrs = _Expiring(ttl, max_entries, max_bytes // 8)
        # Keys only (at most 128 bytes each): the entry bound is the bound.
        self.missing_names = _Expiring(negative_ttl, max_negative, max_negative * 256)
        self.missing_addrs = _Expiring(negative_ttl, max_negative, max_negative * 256)
        self.generation = 0

    def put_name(self, folded: str, body: bytes, since: int | None) -> None:
        """Keep a name's answer read at generation `since` (None: not to be kept, e.g.
        a pending registration), unless anything changed since."""
        if since is not None and since == self.generation:
            self.names.put(folded, body)

    def put_addr(self, jami_id: str, body: bytes, since: int | None) -> None:
        if since is not None and since == self.generation:
            self.addrs.put(jami_id, body)

    def add_missing_name(self, folded: str, since: int) -> None:
        if since == self.generation:
            self.missing_names.put(folded, b"")

    def add_missing_addr(self, jami_id: str, since: int) -> None:
        if since == self.generation:
            self.missing_addrs.put(jami_id, b"")

    def forget_names(self, folded_names: Iterable[str]) -> None:
        self.generation += 1
        for folded in folded_names:
            self.names.pop(folded)
            self.missing_names.pop(folded)
        # The addresses those names pointed at are not known here: their reverse answers
        # may have changed too (setAddress, disown), and they are cheap to rebuild.
        self.addrs.clear()
        self.missing_addrs.clear()

    def forget_addrs(self, jami_ids: Iterable[str]) -> None:
        self.generation += 1
        for jami_id in jami_ids:
            self.addrs.pop(jami_id)
            self.missing_addrs.pop(jami_id)
